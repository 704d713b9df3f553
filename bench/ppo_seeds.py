"""Notebook 04's gain over SFT, over several PPO seeds, on the course's yardstick.

    .venv/bin/python bench/ppo_seeds.py --preset cpu --seeds 0 1 2    # about 10 minutes a seed on 2 cores
    .venv/bin/python bench/ppo_seeds.py --seeds 0 --ppo '{"steps": 28}' --reward '{"lr": 2e-4}' --out trial

`--ppo` and `--reward` replace fields of the preset's PPOConfig and RewardConfig (a reward model with
other settings is trained anew and saved in place of artifacts/reward_model); `--out` names the
results file (bench/results/ppo_seeds_<preset>_<out>.json), so a trial never overwrites the
preset's own figures.

For each seed: a fresh copy of the SFT policy (artifacts/sft) trained with PPO against the reward
model of notebook 03 (artifacts/reward_model), both trained first when missing, with the preset's
PPOConfig and only its seed changed; then the yardstick (`rlhf_edu.course.yardstick`): gold difference to
SFT with its paired z, the blind win rate against SFT, the KL. Seed 0 is notebook 04's own run.
Writes bench/results/ppo_seeds_<preset>.json with every seed and the mean and spread (sample
standard deviation) of each headline number; README's results table is rendered from it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from rlhf_edu.course import yardstick
from rlhf_edu.data import load_concepts, make_prompt
from rlhf_edu.devices import device_setup
from rlhf_edu.metrics import mean_and_se
from rlhf_edu.ppo_trainer import PPOTrainer
from rlhf_edu.presets import get_preset
from rlhf_edu.reward_training import load_or_train_reward_model
from rlhf_edu.sft import load_or_train_sft
from rlhf_edu.store import peak_rss_gb

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = ("gold_delta", "gold_delta_z", "win_rate_vs_sft", "kl_mean", "gold_mean")


def run_seed(seed: int, preset, setup, sft, tokenizer, reward_model, sft_rows) -> dict:
    cfg = dataclasses.replace(preset.ppo, seed=seed)
    torch.manual_seed(seed)
    policy = copy.deepcopy(sft).train()
    train_prompts = [make_prompt(c) for c in load_concepts("train")["concept"]]
    trainer = PPOTrainer(policy, sft, reward_model, tokenizer, train_prompts, cfg, setup=setup)
    start = time.perf_counter()
    history = trainer.train(progress=False)
    train_s = time.perf_counter() - start
    rows, _ = yardstick.evaluate(
        f"ppo_seed{seed}", policy, tokenizer, preset, setup, reference=sft, reward_model=reward_model
    )
    head = yardstick.headline(rows, sft_rows, seed=preset.seed)
    kl_mean, _ = mean_and_se([r["kl"] for r in rows])
    return {
        "seed": seed,
        "steps": len(history),
        "train_seconds": round(train_s, 1),
        "kl_mean": kl_mean,
        **{
            k: head[k]
            for k in (
                "gold_mean",
                "gold_sft_mean",
                "gold_delta",
                "gold_delta_z",
                "win_rate_vs_sft",
                "win_rate_low",
                "win_rate_high",
            )
        },
        "components": head["components"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ppo", type=json.loads, default={}, help="PPOConfig fields to replace, as JSON")
    ap.add_argument("--reward", type=json.loads, default={}, help="RewardConfig fields to replace, as JSON")
    ap.add_argument("--out", default="", help="suffix of the results file")
    args = ap.parse_args(argv)
    preset, setup = get_preset(args.preset), device_setup()
    preset = dataclasses.replace(
        preset,
        ppo=dataclasses.replace(preset.ppo, **args.ppo),
        reward=dataclasses.replace(preset.reward, **args.reward),
    )
    sft, tokenizer, how = load_or_train_sft(preset, setup)
    print(how, flush=True)
    sft.eval().requires_grad_(False)
    reward_model, how = load_or_train_reward_model(preset, sft, tokenizer, setup)
    print(how, flush=True)
    sft_rows, how = yardstick.evaluate("sft", sft, tokenizer, preset, setup, reference=sft, reward_model=reward_model)
    print(how, flush=True)
    out = RESULTS / f"ppo_seeds_{args.preset}{'_' + args.out if args.out else ''}.json"
    done = {r["seed"]: r for r in json.loads(out.read_text())["runs"]} if out.exists() else {}
    for seed in args.seeds:
        done[seed] = run_seed(seed, preset, setup, sft, tokenizer, reward_model, sft_rows)
        r = done[seed]
        print(
            f"seed {seed}: gold {r['gold_sft_mean']:.3f} -> {r['gold_mean']:.3f} ({r['gold_delta']:+.3f}, "
            f"z = {r['gold_delta_z']:.1f}), win rate {r['win_rate_vs_sft']:.0%}, KL {r['kl_mean']:.2f}, "
            f"{r['train_seconds']:.0f} s",
            flush=True,
        )
        runs = [done[s] for s in sorted(done)]
        summary = {
            k: {
                "mean": statistics.mean(r[k] for r in runs),
                "sd": statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0,
            }
            for k in KEYS
        }
        RESULTS.mkdir(exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "preset": args.preset,
                    "dtype": setup.dtype_name,
                    "n_eval": preset.n_eval,
                    "peak_rss_gb": peak_rss_gb(),
                    "ppo_overrides": args.ppo,
                    "reward_overrides": args.reward,
                    "runs": runs,
                    "summary": summary,
                },
                indent=2,
            )
            + "\n"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
