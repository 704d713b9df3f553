"""The course's pipeline on TRL's trainers: reward modeling, DPO, GRPO and RLOO, on any hub model.

    pip install "rlhf-edu[scale]"            # TRL, in an optional extra: the course never needs it
    python -m rlhf_edu.scale dpo --model HuggingFaceTB/SmolLM2-360M-Instruct \\
        --data exports/preferences --out runs/dpo --preset gpu
    accelerate launch --config_file "$(python -m rlhf_edu.scale accelerate-config zero2)" \\
        -m rlhf_edu.scale grpo --model ... --reward-model exports/reward_model --out runs/grpo

The notebooks build each algorithm by hand on a 135M model; at scale the same steps run on TRL's
trainers, which bring multi-GPU (`accelerate`), DeepSpeed ZeRO, LoRA (`peft_config`) and vLLM
generation. What moves over is what the course exported (`rlhf_edu.export`): the preference pairs
(a `datasets` folder with `prompt` / `chosen` / `rejected`), the reward model (an
`AutoModelForSequenceClassification` folder) and the prompts. The settings come from the course's own
configs (a preset's `RewardConfig`, `DPOConfig`, `GRPOConfig`), translated by `reward_args`,
`dpo_args`, `grpo_args` and `rloo_args`; `TRL_NAMES` gives, for every setting, TRL's name for it or
why it has none.

The pairs and prompts are handed to TRL in its conversational format (a list of messages), so TRL
applies the model's chat template exactly as the course's sampler does. TRL's PPO is not here: it left
TRL's stable API (docs/at_scale.md hands PPO to OpenRLHF).

Notebook: 08_at_scale.ipynb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "scale_configs"
"""accelerate configs: `multi_gpu.yaml` (data parallel on every GPU of one machine) and `zero2.yaml`
(DeepSpeed ZeRO stage 2, where DeepSpeed is installed)."""

STAGES = ("reward", "dpo", "grpo", "rloo")

# Every field of the course's config -> TRL's argument, or a sentence on why there is none.
_COMMON = {
    "lr": "learning_rate (lr_scheduler_type='linear', as the course decays it)",
    "max_grad_norm": "max_grad_norm",
    "seed": "seed",
    "trainable_layers": "none: TRL trains every layer; at scale pass a peft_config (LoRA) instead",
}
TRL_NAMES = {
    "reward": {
        **_COMMON,
        "batch_size": "per_device_train_batch_size",
        "epochs": "num_train_epochs",
        "max_steps": "max_steps (-1 for None)",
        "warmup_steps": "warmup_steps",
        "weight_decay": "weight_decay",
        "eval_every": "eval_steps (eval_strategy='steps' when an eval set is given)",
        "max_response_tokens": "max_length (prompt and response together: the prompt's allowance is added)",
        "group_by_prompt": "none: TRL's RewardTrainer scores both answers of every pair, pair by pair",
        "micro_batch_size": "none: it saves memory only; at scale choose per_device_train_batch_size and "
        "gradient_accumulation_steps for the GPU",
    },
    "dpo": {
        **_COMMON,
        "beta": "beta",
        "loss_type": "loss_type",
        "label_smoothing": "label_smoothing",
        "batch_size": "per_device_train_batch_size",
        "epochs": "num_train_epochs",
        "max_steps": "max_steps (-1 for None)",
        "warmup_steps": "warmup_steps",
        "max_response_tokens": "max_length (prompt and response together: the prompt's allowance is added)",
        "init_tolerance": "none: the course's check that the policy starts equal to the reference",
    },
    "grpo": {
        **_COMMON,
        "steps": "max_steps = steps x (prompts_per_step x group_size / mini_batch_size) x epochs optimizer steps",
        "prompts_per_step": "generation_batch_size = prompts_per_step x group_size",
        "group_size": "num_generations",
        "mini_batch_size": "gradient_accumulation_steps = mini_batch_size / micro_batch_size",
        "micro_batch_size": "per_device_train_batch_size",
        "epochs": "num_iterations",
        "adam_eps": "adam_epsilon",
        "sampling": "max_completion_length (max_new_tokens), temperature, top_k, top_p",
        "advantage": "scale_rewards: 'group' for grpo, 'none' for dr_grpo; rloo is RLOOTrainer",
        "loss_aggregation": "loss_type: sequence_mean 'grpo', token_mean 'dapo', token_sum 'dr_grpo'",
        "kl_coef": "beta",
        "kl_penalty": "none: TRL's GRPO adds k3 to the loss (the course's 'k3_loss'); the course's "
        "default 'k1_reward' subtracts the KL from the score",
        "clip_range": "epsilon",
        "missing_eos_penalty": "none: the nearest is mask_truncated_completions, which drops cut-off "
        "answers from the loss instead of lowering their score",
        "missing_eos_mode": "none (see missing_eos_penalty)",
        "ratio_tolerance": "none: the course's health check of the first minibatch's ratio",
    },
}
TRL_NAMES["rloo"] = {
    **TRL_NAMES["grpo"],
    "advantage": "RLOOTrainer: leave-one-out baseline (normalize_advantages=False, as the course)",
    "loss_aggregation": "none: TRL's RLOO averages over sequences, as the course's rloo default",
    "kl_penalty": "none: TRL's RLOO subtracts beta x KL from the reward, the course's 'k1_reward'",
}
PROMPT_ALLOWANCE = 64
"""Tokens allowed for the chat-formatted prompt when TRL's max_length covers prompt and response."""


def messages(prompt: str, response: str | None = None) -> list[dict]:
    """TRL's conversational turns: [the user's prompt], or with `response` [the assistant's answer]
    (TRL's preference format keeps the prompt in its own column)."""
    if response is None:
        return [{"role": "user", "content": prompt}]
    return [{"role": "assistant", "content": response}]


def conversational_pairs(dataset):
    """TRL's standard preference dataset (string `prompt`, `chosen`, `rejected`, as
    `export.export_preferences` writes it) -> its conversational form, so that TRL applies the chat
    template: prompt [user], chosen [assistant], rejected [assistant]."""
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the preference dataset has no column {', '.join(missing)}: {dataset.column_names}")
    return dataset.map(
        lambda row: {
            "prompt": messages(row["prompt"]),
            "chosen": messages(row["prompt"], row["chosen"]),
            "rejected": messages(row["prompt"], row["rejected"]),
        }
    )


def prompt_dataset(prompts: list[str]):
    """Prompts -> a dataset with a conversational `prompt` column, as TRL's GRPO and RLOO read it."""
    import datasets

    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("prompt_dataset needs a non-empty list of non-empty strings")
    return datasets.Dataset.from_dict({"prompt": [messages(p) for p in prompts]})


def _common(config, out_dir, overrides: dict) -> dict:
    import torch

    from rlhf_edu.devices import device_setup

    # TRL computes in the course's dtype (`device_setup`, `RLHF_EDU_DTYPE` included): bf16 autocast on
    # a CPU with native bf16 or an Ampere GPU, fp16 on a T4, fp32 elsewhere, so that a comparison with
    # the course's own runs (notebook 08) is at equal precision.
    setup = device_setup()
    return {
        "output_dir": str(out_dir),
        "learning_rate": config.lr,
        "lr_scheduler_type": "linear",
        "max_grad_norm": config.max_grad_norm,
        "seed": config.seed,
        "disable_dropout": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": setup.autocast_dtype == torch.bfloat16,
        "fp16": setup.autocast_dtype == torch.float16,
        "use_cpu": setup.device == "cpu",
        **overrides,
    }


def reward_args(config, out_dir, **overrides):
    """The course's `reward.RewardConfig` as `trl.RewardConfig` (`overrides` replace any argument)."""
    import trl

    return trl.RewardConfig(
        **_common(
            config,
            out_dir,
            {
                "per_device_train_batch_size": config.batch_size,
                "num_train_epochs": config.epochs,
                "max_steps": config.max_steps or -1,
                "warmup_steps": config.warmup_steps,
                "weight_decay": config.weight_decay,
                "max_length": config.max_response_tokens + PROMPT_ALLOWANCE,
                "center_rewards_coefficient": None,
                **overrides,
            },
        )
    )


def dpo_args(config, out_dir, **overrides):
    """The course's `dpo.DPOConfig` as `trl.DPOConfig`."""
    import trl

    return trl.DPOConfig(
        **_common(
            config,
            out_dir,
            {
                "beta": config.beta,
                "loss_type": [config.loss_type],
                "label_smoothing": config.label_smoothing,
                "per_device_train_batch_size": config.batch_size,
                "num_train_epochs": config.epochs,
                "max_steps": config.max_steps or -1,
                "warmup_steps": config.warmup_steps,
                "max_length": config.max_response_tokens + PROMPT_ALLOWANCE,
                **overrides,
            },
        )
    )


def grpo_batches(steps: int, prompts_per_step: int, group_size: int, mini_batch_size: int, epochs: int) -> tuple:
    """(TRL's generation_batch_size, its max_steps) for the course's GRPO budget. The course counts
    iterations (one batch of prompts_per_step x group_size answers each); TRL counts optimizer steps,
    of which each batch gives one per minibatch, in each of its epochs (TRL's num_iterations).
    grpo_batches(8, 4, 4, 4, 1) == (16, 32). Notebook: 08_at_scale.ipynb"""
    group = prompts_per_step * group_size
    return group, steps * (group // mini_batch_size) * epochs


def _group_args(config) -> dict:
    # GRPOConfig has checked that the minibatches divide a batch and the micro-batches a minibatch.
    group, max_steps = grpo_batches(
        config.steps, config.prompts_per_step, config.group_size, config.mini_batch_size, config.epochs
    )
    sampling = config.sampling
    return {
        "num_generations": config.group_size,
        "generation_batch_size": group,
        "per_device_train_batch_size": config.micro_batch_size,
        "gradient_accumulation_steps": config.mini_batch_size // config.micro_batch_size,
        "num_iterations": config.epochs,
        "max_steps": max_steps,
        "adam_epsilon": config.adam_eps,
        "max_completion_length": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k or 0,
        "top_p": sampling.top_p or 1.0,
        "beta": config.kl_coef,
        "epsilon": config.clip_range,
        "warmup_steps": 0,
    }


LOSS_TYPES = {"sequence_mean": "grpo", "token_mean": "dapo", "token_sum": "dr_grpo"}


def grpo_args(config, out_dir, **overrides):
    """The course's `grpo_loop.GRPOConfig` (advantage "grpo" or "dr_grpo") as `trl.GRPOConfig`."""
    import trl

    if config.advantage not in ("grpo", "dr_grpo"):
        raise ValueError(f"advantage {config.advantage!r} is not GRPO's: use rloo_args for 'rloo'")
    aggregation = config.loss_aggregation or ("sequence_mean" if config.advantage == "grpo" else "token_sum")
    extra = {
        "scale_rewards": "group" if config.advantage == "grpo" else "none",
        "loss_type": LOSS_TYPES[aggregation],
    }
    return trl.GRPOConfig(**_common(config, out_dir, {**_group_args(config), **extra, **overrides}))


def rloo_args(config, out_dir, **overrides):
    """The course's `grpo_loop.GRPOConfig` with advantage "rloo" as `trl.RLOOConfig`."""
    import trl

    if config.advantage != "rloo":
        raise ValueError(f"advantage {config.advantage!r} is not RLOO's: use grpo_args")
    extra = {"normalize_advantages": False}
    return trl.RLOOConfig(**_common(config, out_dir, {**_group_args(config), **extra, **overrides}))


def trainer(stage: str, model, tokenizer, args, *, pairs=None, prompts=None, reward=None):
    """TRL's trainer for `stage` ("reward", "dpo", "grpo", "rloo"), built but not run.

    `model` is a model or a hub id / folder; `pairs` a preference dataset (string or conversational
    columns) for reward and dpo; `prompts` a list of prompts for grpo and rloo, paid by `reward`: an
    exported reward model's folder or model (TRL reads it as an AutoModelForSequenceClassification), or
    a function of text (`text_reward`), or a list of them. Call `.train()` on the result, then `.save_model()`.
    """
    import trl

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage in ("reward", "dpo"):
        if pairs is None:
            raise ValueError(f"stage {stage!r} needs preference pairs (pairs=...)")
        if isinstance(pairs[0]["prompt"], str):
            pairs = conversational_pairs(pairs)
        cls = trl.RewardTrainer if stage == "reward" else trl.DPOTrainer
        return cls(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    if prompts is None or reward is None:
        raise ValueError(f"stage {stage!r} needs prompts (prompts=...) and a reward (reward=...)")
    cls = trl.GRPOTrainer if stage == "grpo" else trl.RLOOTrainer
    return cls(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=prompt_dataset(prompts),
        processing_class=tokenizer,
    )


def eos_flags(completion_ids: list[list[int]], eos_token_id: int) -> list[bool]:
    """Whether each answer ended by itself: its token ids (TRL's `completion_ids`, padding removed)
    end with EOS. An empty answer did not. Notebook: 08_at_scale.ipynb"""
    return [len(ids) > 0 and ids[-1] == eos_token_id for ids in completion_ids]


def text_reward(fn, eos_token_id: int):
    """A course reward function fn(prompts, texts, eos_flags) -> (B,) as TRL's reward function. TRL
    calls it with conversational prompts and completions and the completions' token ids; an answer
    whose ids do not end with `eos_token_id` was cut off at the token budget, as the course's sampler
    tells it (`Samples.has_eos`)."""

    def reward(prompts, completions, completion_ids, **_):
        users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(x) for x in fn(users, texts, eos_flags(completion_ids, eos_token_id))]

    reward.__name__ = getattr(fn, "__name__", "text_reward")
    return reward


def accelerate_config(name: str) -> Path:
    """The path of a shipped accelerate config: "multi_gpu" or "zero2"."""
    path = CONFIGS / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"no accelerate config {name!r}; there are {sorted(p.stem for p in CONFIGS.glob('*.yaml'))}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_edu.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=(*STAGES, "accelerate-config"))
    parser.add_argument("name", nargs="?", help="with accelerate-config: multi_gpu or zero2")
    parser.add_argument("--model", help="hub id or folder of the policy (reward: of the backbone)")
    parser.add_argument("--data", help="reward, dpo: the exported preference dataset's folder")
    parser.add_argument("--reward-model", help="grpo, rloo: the exported reward model's folder")
    parser.add_argument("--prompts", help="grpo, rloo: JSON lines {'prompt': ...} (export.export_prompts)")
    parser.add_argument("--out", help="where the trained model is saved")
    parser.add_argument("--preset", default="gpu", help="the course preset whose configs are used")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    args = parser.parse_args(argv)
    if args.stage == "accelerate-config":
        print(accelerate_config(args.name or "multi_gpu"))
        return 0
    return run(args)


def run(args) -> int:
    import dataclasses
    import json

    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_edu.presets import get_preset

    if not args.model or not args.out:
        raise SystemExit(f"{args.stage} needs --model and --out")
    preset = get_preset(args.preset)
    overrides = {} if args.max_steps is None else {"max_steps": args.max_steps}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.stage in ("reward", "dpo"):
        if not args.data:
            raise SystemExit(f"{args.stage} needs --data, the folder export_preferences wrote")
        pairs = datasets.load_from_disk(args.data)
        if args.stage == "reward":
            config = reward_args(preset.reward, args.out, **overrides)
            model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1)
            model.config.pad_token_id = tokenizer.pad_token_id
        else:
            config, model = dpo_args(preset.final.dpo, args.out, **overrides), args.model
        built = trainer(args.stage, model, tokenizer, config, pairs=pairs)
    else:
        if not (args.reward_model and args.prompts):
            raise SystemExit(f"{args.stage} needs --reward-model and --prompts (export_reward_model, export_prompts)")
        prompts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        grpo = preset.final.grpo
        if args.stage == "grpo":
            config = grpo_args(dataclasses.replace(grpo, advantage="grpo"), args.out, **overrides)
        else:
            config = rloo_args(dataclasses.replace(grpo, advantage="rloo"), args.out, **overrides)
        built = trainer(args.stage, args.model, tokenizer, config, prompts=prompts, reward=args.reward_model)
    built.train()
    built.save_model(args.out)
    print(f"saved the {args.stage} model in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
