"""What a learner built, in the formats the rest of the ecosystem reads.

- Preference pairs (the learner's labels, the course's data) as a `datasets` dataset on disk in TRL's
  standard preference format, `prompt` / `chosen` / `rejected` strings (`export_preferences`), and
  pushed to the hub when the learner passes a repository and has a token.
- The reward model as an `AutoModelForSequenceClassification` folder (`export_reward_model`): the
  backbone, and the head with the course's normalization folded in. The classifier classes of
  transformers have a `score` layer without a bias, so the exported logit is the course's score minus
  a constant; the folder's config keeps that constant (`score_offset`), which `exported_scores`
  adds back. Pairwise differences, all that a Bradley-Terry loss, PPO's whitened advantages or a
  best-of-n choice use, are the course's exactly.
- A policy as a `save_pretrained` folder with its tokenizer and chat template (`export_policy`), which
  `AutoModelForCausalLM` and `pipeline("text-generation")` load.

Notebooks: 02_label_preferences.ipynb, 03_reward_model.ipynb, 07_evaluation.ipynb
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


def preference_dataset(rows: list[dict]):
    """Rows {prompt, chosen, rejected, ...} -> a `datasets.Dataset` with TRL's three string columns
    (other keys are left out: TRL's trainers read these three)."""
    import datasets

    if not rows:
        raise ValueError("no preference rows to export")
    for i, row in enumerate(rows):
        missing = [c for c in PREFERENCE_COLUMNS if not isinstance(row.get(c), str)]
        if missing:
            raise ValueError(f"row {i} has no string {', '.join(missing)}: {sorted(row)}")
    return datasets.Dataset.from_dict({c: [row[c] for row in rows] for c in PREFERENCE_COLUMNS})


def export_preferences(rows: list[dict], out_dir: str | Path, *, push_to: str | None = None, token: str | None = None):
    """Save preference rows as a dataset on disk (`datasets.load_from_disk` reads it back); with
    `push_to` ("user/name") and a hub token, also push it to the hub. Returns the folder."""
    dataset = preference_dataset(rows)
    out_dir = Path(out_dir)
    dataset.save_to_disk(str(out_dir))
    if push_to is not None:
        if not token:
            raise ValueError(f"pushing to {push_to} needs a hub token (token=...); the dataset is saved in {out_dir}")
        dataset.push_to_hub(push_to, token=token)
    return out_dir


def reward_model_to_classifier(reward_model) -> tuple[torch.nn.Module, float]:
    """A course `RewardModel` as an `AutoModelForSequenceClassification` (num_labels 1) in memory, and
    the offset the exported logit misses: score = logit + offset.

    The backbone is copied; `score.weight` = gain * w, offset = gain * b + bias (the course scores
    gain * (w.h + b) + bias). The reward model is not changed.
    """
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(reward_model.backbone.config)
    config.num_labels = 1
    config.pad_token_id = reward_model.backbone.config.pad_token_id
    with torch.device("meta"):  # no random init: every tensor is replaced below
        model = AutoModelForSequenceClassification.from_config(config)
    setattr(model, model.base_model_prefix, copy.deepcopy(reward_model.backbone))
    head, gain, bias = reward_model.head, reward_model.gain.float(), reward_model.bias.float()
    model.score = torch.nn.Linear(head.in_features, 1, bias=False, device=head.weight.device)
    with torch.no_grad():
        model.score.weight.copy_(gain * head.weight.float())  # (1, H)
    offset = float((gain * head.bias.float().squeeze() + bias).detach())
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"reward_model_to_classifier left tensors on the meta device: {left}")
    model.config.score_offset = offset
    return model.eval(), offset


def export_reward_model(reward_model, tokenizer, out_dir: str | Path) -> Path:
    """Save the reward model as an `AutoModelForSequenceClassification` folder (safetensors) with its
    tokenizer; its config holds `score_offset`. Returns the folder."""
    model, _ = reward_model_to_classifier(reward_model)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@torch.no_grad()
def exported_scores(classifier, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The course's scores from an exported classifier: its logit plus `config.score_offset`.
    input_ids, attention_mask (B, T) in the course layout (`batches.build_sft_batch`) -> (B,).
    Positions come from the mask, as in the course, so left padding does not shift them."""
    from rlhf_edu.logprobs import position_ids_from_mask

    position_ids = position_ids_from_mask(attention_mask)  # (B, T)
    logits = classifier(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits  # (B, 1)
    return logits.squeeze(-1).float() + getattr(classifier.config, "score_offset", 0.0)


def export_policy(model, tokenizer, out_dir: str | Path) -> Path:
    """Save a policy with `save_pretrained` (safetensors) and its tokenizer, chat template included, so
    `AutoModelForCausalLM.from_pretrained` and `pipeline("text-generation")` load it. Returns the folder."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: load it with rlhf_edu.models.load_model")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def export_prompts(prompts: list[str], path: str | Path) -> Path:
    """Write prompts as JSON lines {"prompt": ...}, the prompt data a distributed RLHF engine reads
    (`--prompt_data <path> --input_key prompt --apply_chat_template`). Returns the path."""
    import json

    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("export_prompts needs a non-empty list of non-empty strings")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    return path


# Each setting of the course's PPOConfig (and its SamplingConfig, as "sampling.<name>") with the name
# OpenRLHF's `openrlhf.cli.train_ppo_ray` gives it, or None and why where it has none.
OPENRLHF_NAMES: dict[str, tuple[str | None, str]] = {
    "steps": ("--max_samples", "steps x batch_size prompts, one pass (--num_episodes 1)"),
    "batch_size": ("--rollout_batch_size", "prompts per rollout"),
    "mini_batch_size": ("--train_batch_size", "episodes per optimizer step"),
    "micro_batch_size": ("--micro_train_batch_size", "episodes per forward/backward, per GPU"),
    "ppo_epochs": ("--max_epochs", "passes over each rollout"),
    "lr": ("--actor_learning_rate", "also --critic_learning_rate: OpenRLHF trains a separate critic"),
    "adam_eps": (None, "OpenRLHF's Adam uses the optimizer's default epsilon"),
    "max_grad_norm": ("--max_norm", "gradient clipping"),
    "kl_coef": ("--init_kl_coef", "the per-token KL penalty's coefficient"),
    "kl_target": ("--kl_target", "adaptive controller target; absent keeps the coefficient fixed"),
    "kl_horizon": ("--kl_horizon", "episodes over which the controller moves the coefficient"),
    "gamma": ("--gamma", "GAE discount"),
    "lam": ("--lambd", "GAE lambda"),
    "clip_range": ("--eps_clip", "policy ratio clip"),
    "clip_range_value": ("--value_clip", "value clip"),
    "vf_coef": (None, "the critic is a separate model with its own optimizer: no value-loss weight"),
    "whiten_rewards": (None, "no equivalent; --normalize_reward keeps running reward statistics instead"),
    "missing_eos_penalty": (None, "no equivalent: answers cut off at --generate_max_len keep their score"),
    "missing_eos_mode": (None, "no equivalent (see missing_eos_penalty)"),
    "trainable_layers": (None, "no layer freezing; --lora_rank trains adapters instead"),
    "critic": ("--critic_pretrain", "OpenRLHF always trains a separate critic, here from the reward model"),
    "eval_every": ("--eval_steps", "with --eval_dataset"),
    "eval_subset": (None, "the whole --eval_dataset is evaluated"),
    "seed": ("--seed", "prompt order and sampling seed"),
    "ratio_tolerance": (None, "no first-minibatch ratio check"),
    "sampling.max_new_tokens": ("--generate_max_len", "token budget of a response"),
    "sampling.temperature": ("--temperature", "sampling temperature, also applied to the log-probs"),
    "sampling.batch_size": ("--micro_rollout_batch_size", "prompts per generation forward, per GPU"),
    "sampling.top_k": (None, "OpenRLHF samples without top-k"),
    "sampling.top_p": ("--top_p", "nucleus sampling; 1.0 keeps every token"),
}


def openrlhf_ppo_command(
    config, policy_dir, reward_dir, prompts_path, *, eval_prompts_path=None, gpus: int = 1
) -> list[str]:
    """The `openrlhf.cli.train_ppo_ray` command line that runs the course's PPO `config` at scale:
    the exported policy (`export_policy`) as actor and reference, the exported reward model
    (`export_reward_model`) as reward model and critic, the prompts of `export_prompts` (and
    evaluation prompts, evaluated every `eval_every` steps, when given). `OPENRLHF_NAMES` says which
    course setting each flag carries and which have no equivalent."""
    import dataclasses

    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "sampling"}
    values.update({f"sampling.{f.name}": getattr(config.sampling, f.name) for f in dataclasses.fields(config.sampling)})
    unknown = sorted(set(values) - set(OPENRLHF_NAMES))
    if unknown:
        raise ValueError(f"no OpenRLHF name for the PPO setting(s) {unknown}: add them to OPENRLHF_NAMES")
    values["steps"] = config.steps * config.batch_size  # --max_samples counts prompts
    values["critic"] = str(reward_dir)  # OpenRLHF's critic is always a separate model
    command = ["python", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", str(policy_dir)]
    command += ["--reward_pretrain", str(reward_dir)]
    command += ["--prompt_data", str(prompts_path), "--input_key", "prompt", "--apply_chat_template"]
    command += ["--num_episodes", "1", "--advantage_estimator", "gae", "--kl_estimator", "k1"]
    command += ["--lr_scheduler", "linear", "--lr_warmup_ratio", "0", "--critic_learning_rate", str(config.lr)]
    command += ["--actor_num_gpus_per_node", str(gpus), "--ref_num_gpus_per_node", str(gpus)]
    command += ["--critic_num_gpus_per_node", str(gpus), "--reward_num_gpus_per_node", str(gpus)]
    command += ["--colocate_all_models", "--zero_stage", "2", "--bf16", "--save_path", "openrlhf_ppo"]
    if eval_prompts_path is not None:
        command += ["--eval_dataset", str(eval_prompts_path), "--eval_temperature", str(config.sampling.temperature)]
    for name, value in values.items():
        flag, _ = OPENRLHF_NAMES[name]
        if flag is None or value is None or (name == "eval_every" and eval_prompts_path is None):
            continue
        command += [flag, str(value)]
    return command
