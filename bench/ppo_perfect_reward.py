"""PPO paid by the gold rubric itself (a perfect reward), evaluated on the yardstick.

    .venv/bin/python bench/ppo_perfect_reward.py                     # the preset's PPO config
    .venv/bin/python bench/ppo_perfect_reward.py '{"steps": 28}'     # with fields replaced

Separates "the reward model does not learn what the gold prefers" from "PPO cannot move gold within
the preset's budget": notebook 04's PPO, the same config, prompts and evaluation, but paid
`reward_functions.rubric_reward` instead of the learned reward model. Prints the gold gain over SFT
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

from rlhf_edu import yardstick
from rlhf_edu.data import load_concepts, make_prompt
from rlhf_edu.devices import device_setup
from rlhf_edu.ppo_trainer import PPOTrainer
from rlhf_edu.presets import get_preset
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
    policy = copy.deepcopy(sft)
    start = time.perf_counter()
    trainer = PPOTrainer(policy, sft, rubric_reward, tokenizer, train_prompts, config, setup=setup)
    history = trainer.train(progress=False)
    seconds = time.perf_counter() - start
    sft_rows, _ = yardstick.evaluate("sft", sft, tokenizer, preset, setup, reference=sft)
    rows, _ = yardstick.evaluate("ppo_perfect_reward", policy, tokenizer, preset, setup, reference=sft, refresh=True)
    result = {
        "preset": preset.name,
        "dtype": setup.dtype_name,
        "config": dataclasses.asdict(config),
        "train_seconds": round(seconds, 1),
        "score_per_step": [round(h["objective/score"], 4) for h in history],
        "kl_per_step": [round(h["objective/kl"], 3) for h in history],
        "kl_mean": sum(r["kl"] for r in rows) / len(rows),
        **{k: v for k, v in yardstick.headline(rows, sft_rows).items() if not isinstance(v, (list, dict))},
    }
    path = Path(__file__).resolve().parent / "results" / f"ppo_perfect_reward_{preset.name}.json"
    write_json(path, result)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
