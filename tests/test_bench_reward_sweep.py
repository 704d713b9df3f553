"""bench/reward_model_sweep.py's split of held-out pairs into preference-decided and form-decided."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import reward_model_sweep as sweep

from rlhf_edu.preferences import load_pairs, to_preference_rows

PROMPT = "Explain rain to a 10-year-old."
PLAIN = (
    "Rain is water that falls from clouds. Clouds are made of tiny drops of water. When the drops join "
    "together they get heavy and fall to the ground as rain."
)
TALKS = (
    "Rain is water that falls from clouds. When you see dark clouds, they are full of tiny drops of water. "
    "When the drops join together they get heavy and fall to the ground as rain."
)


def row(chosen, rejected, chosen_eos=True, rejected_eos=True):
    return {
        "prompt": PROMPT,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_eos": chosen_eos,
        "rejected_eos": rejected_eos,
    }


def test_two_good_answers_that_differ_in_a_quality_are_preference_decided():
    assert sweep.preference_decided(row(TALKS, PLAIN))
    assert sweep.preference_decided(row(PLAIN, TALKS))  # which side won does not matter


def test_a_pair_that_form_decides_is_not():
    assert not sweep.preference_decided(row(TALKS, TALKS))  # no difference at all
    assert not sweep.preference_decided(row(TALKS, PLAIN, rejected_eos=False))  # one never finished


def test_the_held_out_split_of_the_results_page():
    """docs/results.md's 111 of the cpu preset's 400 held-out pairs."""
    held = to_preference_rows(load_pairs("heldout"))[:400]
    assert sum(sweep.preference_decided(r) for r in held) == 111
