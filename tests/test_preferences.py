import json

import pytest
import torch

from rlhf_edu.annotator import SimulatedAnnotator
from rlhf_edu.data import DataError
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.preferences import label_pair, load_pairs, sample_pairs, to_preference_rows

PAIR = {"pair_id": "x-1", "concept": "rain", "prompt": "Explain rain to a 10-year-old.",
        "responses": ["Rain is water from clouds. It falls down. Plants drink it.", "rain rain rain rain rain"],
        "eos": [True, False], "tokens": [14, 9], "gold": [0.9, 0.3], "label": "0"}


def test_shipped_pairs_meet_the_spec():
    train, held = load_pairs("train"), load_pairs("heldout")
    assert len(train) >= 2000 and len(held) >= 300
    assert not {p["concept"] for p in held} & {p["concept"] for p in train}
    labels = [p["label"] for p in train]
    assert labels.count("0") > 0.3 * len(labels) and labels.count("1") > 0.3 * len(labels)


def test_labels_are_reproducible_from_the_text():
    ann = SimulatedAnnotator()
    for pair in load_pairs("heldout")[:40]:
        assert label_pair(pair, ann) == pair["label"]


def test_rows_carry_eos_and_drop_ties():
    rows = to_preference_rows([PAIR, {**PAIR, "pair_id": "x-2", "label": "tie"}, {**PAIR, "pair_id": "x-3", "label": "1"}])
    assert [r["pair_id"] for r in rows] == ["x-1", "x-3"]
    assert rows[0]["chosen_eos"] is True and rows[0]["rejected_eos"] is False
    assert rows[1]["chosen"] == PAIR["responses"][1] and rows[1]["chosen_eos"] is False


@pytest.mark.parametrize("bad, message", [
    ({"label": "A"}, "field 'label'"),
    ({"gold": [0.1]}, "field 'gold': expected 2 entries"),
    ({"responses": "x"}, "field 'responses': expected list"),
])
def test_bad_pair_files(tmp_path, bad, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(PAIR) + "\n" + json.dumps({**PAIR, **bad}) + "\n")
    with pytest.raises(DataError, match=message):
        load_pairs("train", path=path)
    with pytest.raises(ValueError, match="split"):
        load_pairs("test")


def test_sample_pairs_on_a_tiny_model(tiny):
    model, tok = tiny
    pairs = sample_pairs(model, tok, ["Explain rain to a 10-year-old.", "Explain snow to a 10-year-old."],
                         SamplingConfig(max_new_tokens=6, batch_size=4), seed=0)
    assert len(pairs) == 2 and all(len(p["responses"]) == 2 and len(p["gold"]) == 2 for p in pairs)
    assert all(isinstance(e, bool) for p in pairs for e in p["eos"])
    assert torch.is_tensor(torch.tensor(pairs[0]["tokens"]))
