"""rlhf_edu.ai_judge: the constitution judge, on a tiny model, against a naive recomputation."""

import pytest
import torch

from rlhf_edu.ai_judge import CONSTITUTION, constitution_preferences, guided_prompt, response_logps
from rlhf_edu.batches import build_sft_batch
from rlhf_edu.logprobs import per_token_logps
from rlhf_edu.models import tiny_model_and_tokenizer

ROWS = [
    {
        "prompt": "Explain rain to a 10-year-old.",
        "chosen": "Rain is water from clouds.",
        "rejected": "No.",
        "rejected_eos": False,
    },
    {
        "prompt": "Explain a volcano to a 10-year-old.",
        "chosen": "Hot rock comes out.",
        "rejected": "It is like your oven at home.",
    },
]


@pytest.fixture
def tiny():
    torch.set_num_threads(1)
    return tiny_model_and_tokenizer(seed=0)


def naive_logp(model, tok, prompt, response, eos=True):
    batch = build_sft_batch(tok, [prompt], [response], 1024, eos=[eos])
    with torch.no_grad():
        logps = per_token_logps(model, batch["input_ids"], batch["attention_mask"], batch["context_length"])
    return float((logps * batch["response_mask"]).sum())


def test_response_logps_match_one_at_a_time(tiny):
    model, tok = tiny
    chosen, rejected = response_logps(model, tok, ROWS, batch_size=2)
    for i, r in enumerate(ROWS):
        assert chosen[i].item() == pytest.approx(naive_logp(model, tok, r["prompt"], r["chosen"]), abs=1e-4)
        assert rejected[i].item() == pytest.approx(
            naive_logp(model, tok, r["prompt"], r["rejected"], r.get("rejected_eos", True)), abs=1e-4
        )


def test_preference_is_the_difference_of_gains_and_has_no_position(tiny):
    model, tok = tiny
    out = constitution_preferences(model, tok, ROWS, batch_size=1)
    r = ROWS[1]
    gain = lambda text: (
        naive_logp(model, tok, guided_prompt(r["prompt"]), text) - naive_logp(model, tok, r["prompt"], text)
    )
    assert out["chosen_gain"][1].item() == pytest.approx(gain(r["chosen"]), abs=1e-4)
    assert out["preference"][1].item() == pytest.approx(gain(r["chosen"]) - gain(r["rejected"]), abs=1e-4)
    swapped = [
        dict(
            x,
            chosen=x["rejected"],
            rejected=x["chosen"],
            chosen_eos=x.get("rejected_eos", True),
            rejected_eos=x.get("chosen_eos", True),
        )
        for x in ROWS
    ]
    torch.testing.assert_close(
        constitution_preferences(model, tok, swapped, batch_size=2)["preference"], -out["preference"], atol=1e-4, rtol=0
    )


def test_the_guided_prompt_appends_the_constitution():
    assert guided_prompt("Explain rain to a 10-year-old.") == f"Explain rain to a 10-year-old. {CONSTITUTION}"
    assert guided_prompt("x", "Be kind.") == "x Be kind."
