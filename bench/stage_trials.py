"""Notebook 06's DPO or GRPO training with other settings, measured on the course's yardstick.

    .venv/bin/python bench/stage_trials.py dpo --name lr2e-4 --set '{"lr": 2e-4}'
    .venv/bin/python bench/stage_trials.py grpo --name rloo --set '{"advantage": "rloo"}'
    .venv/bin/python bench/stage_trials.py dpo --name t1 --max-temperature 1.0   # only pairs sampled at T <= 1

`--set` replaces fields of the preset's DPOConfig or GRPOConfig (`preset.final`); `--max-temperature`
trains DPO only on the annotator's pairs whose two answers were both sampled at that temperature or
below. Each trial trains a fresh copy of the SFT policy (artifacts/sft) as notebook 06 does, against
the reward model of notebook 03 for GRPO (both trained first when missing), then measures it with
the yardstick (`rlhf_edu.course.yardstick`): the gold difference to SFT with its paired z, the blind
win rate, the KL and the reward model's gain. Every trial is added, under its name, to
bench/results/stage_trials_<preset>.json with the whole configuration it ran; docs/results.md
renders the table from it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import re
import sys
import time
from pathlib import Path

import torch

from rlhf_edu.course import yardstick
from rlhf_edu.data import load_concepts, make_prompt
from rlhf_edu.devices import autocast, device_setup
from rlhf_edu.metrics import mean_and_se, paired_difference
from rlhf_edu.preferences import load_pairs, reward_training_rows, to_preference_rows
from rlhf_edu.presets import get_preset
from rlhf_edu.reward_training import load_or_train_reward_model
from rlhf_edu.sft import load_or_train_sft

RESULTS = Path(__file__).resolve().parent / "results"


def dpo_rows(n_pairs: int, seed: int, max_temperature: float | None) -> list[dict]:
    """The pairs notebook 06 trains DPO on, or the annotator's pairs sampled at T <= max_temperature."""
    if max_temperature is None:
        return reward_training_rows(n_pairs, seed)[0]
    pairs = [p for p in load_pairs("train") if max(p["temperatures"]) <= max_temperature]
    rows = to_preference_rows(pairs)
    random.Random(seed).shuffle(rows)
    return rows[:n_pairs]


def train(stage: str, policy, sft, reward_model, tokenizer, config, setup, preset, max_temperature):
    """Train `policy` in place as notebook 06 does; returns the seconds it took (DPO: with the
    reference log-probs)."""
    start = time.perf_counter()
    if stage == "dpo":
        from rlhf_edu.dpo import precompute_reference_logps, train_dpo

        rows = dpo_rows(config.batch_size * config.max_steps, preset.seed, max_temperature)
        reference_logps = precompute_reference_logps(sft, tokenizer, rows, config, setup=setup)
        train_dpo(policy, reference_logps, tokenizer, rows, config, setup=setup, progress=False)
    else:
        from rlhf_edu.grpo_trainer import GRPOTrainer
        from rlhf_edu.reward_functions import reward_model_scorer

        prompts = [make_prompt(c) for c in load_concepts("train")["concept"]]
        reward_fn = reward_model_scorer(reward_model, tokenizer, autocast_ctx=autocast(setup))
        GRPOTrainer(policy, sft, reward_fn, tokenizer, prompts, config, setup=setup).train(progress=False)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["dpo", "grpo"])
    ap.add_argument("--name", required=True, help="the trial's name in the results file")
    ap.add_argument("--set", type=json.loads, default={}, help="config fields to replace, as JSON")
    ap.add_argument("--max-temperature", type=float, default=None, help="DPO: only pairs sampled at T <= this")
    ap.add_argument("--preset", default="cpu")
    args = ap.parse_args(argv)
    if args.max_temperature is not None and args.stage != "dpo":
        ap.error("--max-temperature filters DPO's pairs; GRPO samples its own")
    preset, setup = get_preset(args.preset), device_setup()
    base = preset.final.dpo if args.stage == "dpo" else preset.final.grpo
    config = dataclasses.replace(base, **args.set)
    torch.manual_seed(preset.seed)
    sft, tokenizer, how = load_or_train_sft(preset, setup)
    print(how, flush=True)
    sft.eval().requires_grad_(False)
    reward_model, how = load_or_train_reward_model(preset, sft, tokenizer, setup)
    print(how, flush=True)
    reward_model.requires_grad_(False)
    sft_rows, how = yardstick.evaluate("sft", sft, tokenizer, preset, setup, reference=sft, reward_model=reward_model)
    print(how, flush=True)

    policy = copy.deepcopy(sft).requires_grad_(True)
    seconds = train(args.stage, policy, sft, reward_model, tokenizer, config, setup, preset, args.max_temperature)
    policy.eval().requires_grad_(False)
    rows, _ = yardstick.evaluate(
        f"trial_{args.stage}_{re.sub(r'[^A-Za-z0-9.-]+', '_', args.name)}",  # a file name from the trial's name
        policy,
        tokenizer,
        preset,
        setup,
        reference=sft,
        reward_model=reward_model,
    )
    head = yardstick.headline(rows, sft_rows, seed=preset.seed)
    trial = {
        "name": args.name,
        "stage": args.stage,
        "config": dataclasses.asdict(config),
        "max_temperature": args.max_temperature,
        "train_seconds": round(seconds, 1),
        "gold_delta": head["gold_delta"],
        "gold_delta_z": head["gold_delta_z"],
        "win_rate_vs_sft": head["win_rate_vs_sft"],
        "kl_mean": mean_and_se([r["kl"] for r in rows])[0],
        "rm_delta": paired_difference([r["rm"] for r in rows], [r["rm"] for r in sft_rows])["delta"],
        "components": head["components"],
    }
    print(
        f"{args.stage} {args.name}: gold {head['gold_delta']:+.3f} (z = {head['gold_delta_z']:.1f}), win rate "
        f"{head['win_rate_vs_sft']:.0%}, KL {trial['kl_mean']:.2f}, {seconds:.0f} s",
        flush=True,
    )
    out = RESULTS / f"stage_trials_{args.preset}.json"
    saved = json.loads(out.read_text()) if out.exists() else {"trials": []}
    trials = [t for t in saved["trials"] if (t["stage"], t["name"]) != (args.stage, args.name)] + [trial]
    RESULTS.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"preset": args.preset, "dtype": setup.dtype_name, "n_eval": preset.n_eval, "trials": trials}, indent=2
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
