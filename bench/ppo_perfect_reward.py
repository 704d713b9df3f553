"""PPO paid by the gold rubric itself (a perfect reward), evaluated on the yardstick.

    .venv/bin/python bench/ppo_perfect_reward.py                     # the preset's PPO config
    .venv/bin/python bench/ppo_perfect_reward.py '{"steps": 28}'     # with fields replaced

Separates "the reward model does not learn what the gold prefers" from "PPO cannot move gold within
the preset's budget": notebook 04's PPO, the same config, prompts and evaluation, but paid
`reward_functions.rubric_reward` instead of the learned reward model, on the reward model's scale
(normalized to mean 0 and std 1 over the SFT policy's yardstick samples, as `fit_normalization` does
for the reward model, so that the KL penalty weighs the same against it). Prints the gold gain over SFT
with its paired z, the blind win rate and the KL, and writes them to
bench/results/ppo_perfect_reward_<preset>.json.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from rlhf_edu.course import yardstick
from rlhf_edu.data import load_concepts, make_prompt
from rlhf_edu.devices import device_setup
from rlhf_edu.ppo_trainer import PPOTrainer
from rlhf_edu.presets import get_preset
from rlhf_edu.reward import fit_normalization
from rlhf_edu.reward_functions import rubric_reward
from rlhf_edu.sft import load_or_train_sft
from rlhf_edu.store import write_json


def main() -> None:
    preset = get_preset(os.environ.get("RLHF_EDU_PRESET", "cpu"))
    setup = device_setup()
    sft, tokenizer, how = load_or_train_sft(preset, setup)
    print(how, flush=True)
    config = preset.ppo
    if len(sys.argv) > 1:
        config = dataclasses.replace(config, **json.loads(sys.argv[1]))
    train_prompts = [make_prompt(c) for c in load_concepts("train")["concept"]]
    sft_rows, _ = yardstick.evaluate("sft", sft, tokenizer, preset, setup, reference=sft)
    gain, bias = fit_normalization([r["gold"] for r in sft_rows])

    def normalized_rubric(prompts, texts, eos_flags):
        return gain * rubric_reward(prompts, texts, eos_flags) + bias

    policy = copy.deepcopy(sft)
    start = time.perf_counter()
    trainer = PPOTrainer(policy, sft, normalized_rubric, tokenizer, train_prompts, config, setup=setup)
    history = trainer.train(progress=False)
    seconds = time.perf_counter() - start
    rows, _ = yardstick.evaluate("ppo_perfect_reward", policy, tokenizer, preset, setup, reference=sft, refresh=True)
    result = {
        "preset": preset.name,
        "dtype": setup.dtype_name,
        "config": dataclasses.asdict(config),
        "reward_normalization": {"gain": round(gain, 4), "bias": round(bias, 4)},
        "train_seconds": round(seconds, 1),
        "score_per_step": [round(h["objective/score"], 4) for h in history],
        "kl_per_step": [round(h["objective/kl"], 3) for h in history],
        "seconds_per_step_by_part": {
            k.removeprefix("time/"): round(sum(h[k] for h in history) / len(history), 2)
            for k in history[0]
            if k.startswith("time/") and k.endswith("_s")
        },
        "kl_mean": sum(r["kl"] for r in rows) / len(rows),
        **{k: v for k, v in yardstick.headline(rows, sft_rows).items() if not isinstance(v, (list, dict))},
    }
    tag = os.environ.get("RLHF_EDU_BENCH_TAG", "")
    path = Path(__file__).resolve().parent / "results" / f"ppo_perfect_reward_{preset.name}{tag}.json"
    write_json(path, result)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
