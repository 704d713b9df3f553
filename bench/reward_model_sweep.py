"""What the reward model learns: held-out accuracy split by what decides each pair.

    .venv/bin/python bench/reward_model_sweep.py                          # the preset's RewardConfig
    .venv/bin/python bench/reward_model_sweep.py '{"epochs": 2}' 768      # fields replaced, 768 pairs
    .venv/bin/python bench/reward_model_sweep.py '{}' 384 '[0.3, 0.7, 1.0]'  # pairs at these temperatures
    .venv/bin/python bench/reward_model_sweep.py '{}' 384 null mean       # another read-out (see below)
    .venv/bin/python bench/reward_model_sweep.py '{"group_by_prompt": true, "batch_size": 6}' 1600
                                            # whole prompts, all their pairs in one step (InstructGPT)

Trains notebook 03's reward model from the SFT checkpoint in artifacts/sft on the annotator's train
pairs (a seeded shuffle, as `preferences.reward_training_rows` without learner labels) and scores the
preset's held-out pairs. Besides the accuracy against the noise ceiling it splits the held-out pairs
by what decides them under the rubric: pairs of two answers good in form (finished, fitting length,
on topic, not repetitive) whose rubric difference comes mostly from the preference qualities
(`preference-decided`), and the rest, decided by form. A reward model that has learned only form is at
chance on the first kind. Appends one row to bench/results/reward_model_sweep_<preset>.json.

The read-out (4th argument) asks whether the score should see every token rather than the last one:
`last` (the course's: the hidden state of the last real token), `mean` (the mean over the real
tokens), `max` (the element-wise max over them: a quality shown anywhere in the answer), `mean+last`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from rlhf_edu import rubric
from rlhf_edu.annotator import SimulatedAnnotator, noise_ceiling
from rlhf_edu.devices import autocast, device_setup
from rlhf_edu.models import load_model
from rlhf_edu.preferences import load_pairs, to_preference_rows, whole_prompts_rows
from rlhf_edu.presets import get_preset
from rlhf_edu.reward import RewardModel, reward_accuracy, score_texts
from rlhf_edu.reward_training import train_reward_model
from rlhf_edu.store import artifacts_dir

RESULTS = Path(__file__).resolve().parent / "results"


def preference_decided(row: dict) -> bool:
    """Both answers good in form, and the preference qualities weigh more in their rubric difference
    than the form components do."""
    _, a = rubric.score(row["prompt"], row["chosen"], row["chosen_eos"])
    _, b = rubric.score(row["prompt"], row["rejected"], row["rejected_eos"])
    gate = lambda c: c["finished"] * c["length"] * c["on_topic"] * c["no_repetition"]
    form = sum(rubric.WEIGHTS[k] * (a[k] - b[k]) for k in rubric.FORMAT)
    preference = sum(rubric.WEIGHTS[k] * (a[k] - b[k]) for k in rubric.PREFERENCE)
    return gate(a) > 0.5 and gate(b) > 0.5 and abs(preference) > abs(form)


def pooled_features(readout: str):
    """A `RewardModel.features` that pools the last hidden layer over the real tokens instead of
    reading the last one: "mean", "max" or "mean+last"."""
    from rlhf_edu.logprobs import position_ids_from_mask

    def features(self, input_ids, attention_mask):
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state  # (B, T, H)
        real = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        last = hidden[torch.arange(hidden.shape[0]), self.readout_index(attention_mask)]  # (B, H)
        mean = (hidden * real).sum(1) / real.sum(1)  # (B, H)
        top = hidden.masked_fill(real == 0, float("-inf")).amax(1)  # (B, H)
        return {"mean": mean, "max": top, "mean+last": mean + last}[readout].float()

    return features


def main(argv: list[str]) -> None:
    preset = get_preset(os.environ.get("RLHF_EDU_PRESET", "cpu"))
    setup = device_setup()
    override = json.loads(argv[0]) if argv else {}
    n_pairs = int(argv[1]) if len(argv) > 1 else preset.reward_pairs
    temperatures = json.loads(argv[2]) if len(argv) > 2 else None
    readout = argv[3] if len(argv) > 3 else "last"
    if readout not in ("last", "mean", "max", "mean+last"):
        raise SystemExit(f"read-out must be last, mean, max or mean+last, got {readout!r}")
    config = dataclasses.replace(preset.reward, **override)
    pairs = load_pairs("train")
    if temperatures:
        pairs = [p for p in pairs if all(t in temperatures for t in p["temperatures"])]
    rows = to_preference_rows(pairs)
    if config.group_by_prompt:  # whole prompts, as notebook 03 takes them for such a config
        rows = whole_prompts_rows(rows, n_pairs, preset.seed)
    else:
        random.Random(preset.seed).shuffle(rows)
        rows = rows[:n_pairs]
    held_pairs = load_pairs("heldout")
    held = to_preference_rows(held_pairs)[: preset.reward_heldout]

    torch.manual_seed(preset.seed)
    backbone, tokenizer = load_model(str(artifacts_dir() / "sft"), device=setup.device)
    reward_model = RewardModel.from_causal_lm(backbone)
    if readout != "last":
        reward_model.features = pooled_features(readout).__get__(reward_model)
    start = time.perf_counter()
    history = train_reward_model(
        reward_model, tokenizer, rows, held[: preset.reward_probe], config, setup=setup, progress=False
    )
    seconds = time.perf_counter() - start
    reward_model.eval()
    prompts = [r["prompt"] for r in held]
    with autocast(setup):
        chosen = score_texts(reward_model, tokenizer, prompts, [r["chosen"] for r in held], raw=True,
                             eos=[r["chosen_eos"] for r in held])  # fmt: skip
        rejected = score_texts(reward_model, tokenizer, prompts, [r["rejected"] for r in held], raw=True,
                               eos=[r["rejected_eos"] for r in held])  # fmt: skip
    won = (chosen > rejected).float()  # (N,)
    decided = torch.tensor([preference_decided(r) for r in held])  # (N,)
    ceiling, _ = noise_ceiling(held, SimulatedAnnotator())
    row = {
        "config": override,
        "lr": config.lr,
        "n_pairs": len(rows),
        "temperatures": temperatures,
        "readout": readout,
        "steps": len(history),
        "seconds": round(seconds),
        "accuracy": round(reward_accuracy(chosen, rejected), 4),
        "noise_ceiling": round(ceiling, 4),
        "n_preference_decided": int(decided.sum()),
        "accuracy_preference_decided": round(float(won[decided].mean()), 4),
        "accuracy_form_decided": round(float(won[~decided].mean()), 4),
        "dtype": setup.dtype_name,
    }
    print(json.dumps(row))
    out = RESULTS / f"reward_model_sweep_{preset.name}.json"
    runs = json.loads(out.read_text())["runs"] if out.exists() else []
    out.write_text(json.dumps({"preset": preset.name, "runs": [*runs, row]}, indent=1) + "\n")
    print(f"appended to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
