"""PPO's first-minibatch |ratio - 1| in each compute dtype, at the cpu preset's PPO settings.

On the first minibatch of an update nothing has changed yet, so the ratio of new to old
log-probs must be 1; what it is off by is numerical noise between two computations of the same
tokens in different batch shapes. Under bf16 autocast that noise reached the size of PPO's clip
range, which is why the course computes the log-probs that enter the ratio and the KL in fp32
under bf16 (`DeviceSetup.fp32_logps`). This script measures both ways, in fp32 and in bf16
(emulated where the CPU has no native bf16: the same rounding, slower):

    .venv/bin/python bench/first_ratio.py   # writes bench/results/first_ratio[_native_bf16].json

One rollout of 16 prompts and the first epoch of the update, with the SFT checkpoint from
artifacts/sft when present (else the base model) and an untrained reward-model head (the ratio
does not depend on the scores).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from rlhf_edu.data import load_concepts, make_prompt
from rlhf_edu.devices import autocast, choose_device_setup, cpu_has_native_bf16
from rlhf_edu.models import load_model
from rlhf_edu.ppo_trainer import PPOTrainer
from rlhf_edu.presets import get_preset
from rlhf_edu.reward import RewardModel
from rlhf_edu.store import artifacts_dir

RESULTS = Path(__file__).resolve().parent / "results"


def out_path() -> Path:
    """first_ratio_native_bf16.json on a CPU with native bf16, first_ratio.json (bf16 emulated) elsewhere."""
    return RESULTS / ("first_ratio_native_bf16.json" if cpu_has_native_bf16() else "first_ratio.json")


def measure(dtype: str, fp32_logps: bool, policy, tokenizer, prompts) -> dict:
    cfg = dataclasses.replace(get_preset("cpu").ppo, ppo_epochs=1, steps=1)
    setup = choose_device_setup("cpu", dtype=dtype)
    torch.manual_seed(0)
    reward_model = RewardModel.from_causal_lm(copy.deepcopy(policy))
    trainer = PPOTrainer(
        copy.deepcopy(policy), copy.deepcopy(policy).eval(), reward_model, tokenizer, prompts, cfg, setup=setup
    )
    if not fp32_logps:  # the behaviour before: every log-prob under the autocast context
        trainer.logps_ctx = autocast(setup)
    start = time.perf_counter()
    generator = trainer.generator_for_step(0)
    rollout = trainer.rollout(trainer.prompts_for_step(0), generator)
    stats = trainer.update(rollout, generator)
    return {
        "dtype": dtype,
        "ratio_logps": "fp32" if fp32_logps or dtype == "fp32" else dtype,
        "first_ratio_dev_max": stats["health/first_ratio_dev"],
        "first_ratio_dev_mean": stats["health/first_ratio_dev_mean"],
        "clip_range": cfg.clip_range,
        "trunk": trainer.trunk.reason,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> int:
    sft = artifacts_dir() / "sft"
    policy, tokenizer = load_model(str(sft)) if (sft / "config.json").exists() else load_model()
    prompts = [make_prompt(c) for c in load_concepts("train")["concept"]]
    rows = []
    for dtype, fp32_logps in [("fp32", False), ("bf16", False), ("bf16", True)]:
        row = measure(dtype, fp32_logps, policy, tokenizer, prompts)
        print(json.dumps(row), flush=True)
        rows.append(row)
    from rlhf_edu.course.runner import machine_description

    out = out_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine_description(),
                "policy": "sft" if (sft / "config.json").exists() else "base",
                "preset": "cpu",
                "native_bf16": cpu_has_native_bf16(),
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
