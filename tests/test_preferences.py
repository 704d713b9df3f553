import itertools
import json

import pytest
import torch

from rlhf_edu.annotator import SimulatedAnnotator
from rlhf_edu.data import DataError, data_dir
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.preferences import label_pair, load_pairs, sample_pairs, to_preference_rows

PAIR = {
    "pair_id": "x-1",
    "concept": "rain",
    "prompt": "Explain rain to a 10-year-old.",
    "responses": ["Rain is water from clouds. It falls down. Plants drink it.", "rain rain rain rain rain"],
    "eos": [True, False],
    "tokens": [14, 9],
    "gold": [0.9, 0.3],
    "label": "0",
}


def test_shipped_pairs_meet_the_spec():
    train, held = load_pairs("train"), load_pairs("heldout")
    assert len(train) >= 2000 and len(held) >= 300
    assert not {p["concept"] for p in held} & {p["concept"] for p in train}
    labels = [p["label"] for p in train]
    assert labels.count("0") > 0.3 * len(labels) and labels.count("1") > 0.3 * len(labels)
    # Every pair compares two of the build's temperatures, cooler first about half the time.
    meta = json.loads((data_dir() / "preferences_meta.json").read_text())
    temps = set(meta["sampling"]["temperatures"])
    assert all(len(set(p["temperatures"])) == 2 and set(p["temperatures"]) <= temps for p in train + held)
    cooler_first = sum(p["temperatures"][0] < p["temperatures"][1] for p in train) / len(train)
    assert 0.4 < cooler_first < 0.6


def test_labels_are_reproducible_from_the_text():
    ann = SimulatedAnnotator()
    for pair in load_pairs("heldout")[:40]:
        assert label_pair(pair, ann) == pair["label"]


def test_rows_carry_eos_and_drop_ties():
    rows = to_preference_rows(
        [PAIR, {**PAIR, "pair_id": "x-2", "label": "tie"}, {**PAIR, "pair_id": "x-3", "label": "1"}]
    )
    assert [r["pair_id"] for r in rows] == ["x-1", "x-3"]
    assert rows[0]["chosen_eos"] is True and rows[0]["rejected_eos"] is False
    assert rows[1]["chosen"] == PAIR["responses"][1] and rows[1]["chosen_eos"] is False


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"label": "A"}, "field 'label'"),
        ({"gold": [0.1]}, "field 'gold': expected 2 entries"),
        ({"responses": "x"}, "field 'responses': expected list"),
        ({"temperatures": 0.7}, "field 'temperatures': expected list"),
        ({"temperature": [0.7, 1.0]}, "unexpected field"),
    ],
)
def test_bad_pair_files(tmp_path, bad, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(PAIR) + "\n" + json.dumps({**PAIR, **bad}) + "\n")
    with pytest.raises(DataError, match=message):
        load_pairs("train", path=path)
    with pytest.raises(ValueError, match="split"):
        load_pairs("test")


def test_sample_pairs_on_a_tiny_model(tiny):
    model, tok = tiny
    pairs = sample_pairs(
        model,
        tok,
        ["Explain rain to a 10-year-old.", "Explain snow to a 10-year-old."],
        SamplingConfig(max_new_tokens=6, batch_size=4),
        seed=0,
    )
    assert len(pairs) == 2 and all(len(p["responses"]) == 2 and len(p["gold"]) == 2 for p in pairs)
    assert all(isinstance(e, bool) for p in pairs for e in p["eos"])
    assert torch.is_tensor(torch.tensor(pairs[0]["tokens"]))


def test_sample_pairs_with_a_temperature_mix(tiny):
    """k temperatures: one sample each, all k(k-1)/2 pairs per prompt, sides in a seeded order."""
    model, tok = tiny
    prompts = ["Explain rain to a 10-year-old.", "Explain snow to a 10-year-old."]
    temps = (0.3, 0.7, 1.0, 1.3)
    config = SamplingConfig(max_new_tokens=6, batch_size=4)
    pairs = sample_pairs(model, tok, prompts, config, seed=3, temperatures=temps)
    assert len(pairs) == 2 * 6
    assert [p["prompt"] for p in pairs] == [prompts[0]] * 6 + [prompts[1]] * 6
    for k in range(2):
        seen = {frozenset(p["temperatures"]) for p in pairs[6 * k : 6 * k + 6]}
        assert seen == {frozenset(c) for c in itertools.combinations(temps, 2)}
    # A response sampled once appears identically in every pair that uses its temperature.
    texts = {}
    for p in pairs[:6]:
        for t, text in zip(p["temperatures"], p["responses"]):
            assert texts.setdefault(t, text) == text
    # The cooler sample is first in some pairs and second in others.
    firsts = [p["temperatures"][0] < p["temperatures"][1] for p in pairs]
    assert 0 < sum(firsts) < len(firsts)
    again = sample_pairs(model, tok, prompts, config, seed=3, temperatures=temps)
    assert again == pairs
    with pytest.raises(ValueError, match="at least 2"):
        sample_pairs(model, tok, prompts, config, seed=3, temperatures=(0.7,))


def test_reward_training_rows_put_the_learners_labels_first_and_can_take_whole_prompts(artifacts):
    from rlhf_edu.preferences import reward_training_rows

    every = to_preference_rows(load_pairs("train"))
    shuffled, n_mine = reward_training_rows(100, seed=0)
    assert (len(shuffled), n_mine) == (100, 0)
    assert len({r["prompt"] for r in shuffled}) > 60  # a shuffle of pairs spreads over many prompts
    grouped, _ = reward_training_rows(100, seed=0, whole_prompts=True)
    prompts = {r["prompt"] for r in grouped}
    assert grouped == [r for p in dict.fromkeys(r["prompt"] for r in grouped) for r in every if r["prompt"] == p]
    assert 100 <= len(grouped) < 100 + 6 and len(prompts) < 25  # whole prompts, at most 6 pairs each
    mine = {"prompt": "Explain rain to a 10-year-old.", "chosen": "Rain falls.", "rejected": "rain rain"}
    (artifacts / "labels").mkdir(parents=True)
    (artifacts / "labels" / "you_pairs.jsonl").write_text(json.dumps(mine) + "\n")
    rows, n_mine = reward_training_rows(100, seed=0, whole_prompts=True)
    assert n_mine == 1 and rows[0] == mine and rows[1:] == grouped[: len(rows) - 1]
