"""Training the reward model (notebook 03): the Bradley-Terry loss over labeled pairs, one pass in a
seeded order, checkpoints that resume exactly, then saving, loading and the cached reward model of
the course (`load_or_train_reward_model`). What a reward model is and how it scores lives in
`rlhf_edu.reward`.
"""

from __future__ import annotations

import itertools
import random
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlhf_edu.batches import build_sft_batch
from rlhf_edu.checkpoints import checkpoint_if_due, resume_training, rows_fingerprint
from rlhf_edu.reward import (
    RewardConfig,
    RewardModel,
    evaluate_reward_model,
    reward_accuracy,
    reward_loss,
    score_samples,
)
from rlhf_edu.store import jsonable
from rlhf_edu.training import (
    adamw_with_schedule,
    clip_and_step,
    end_of_run,
    freeze_lower_layers,
    pair_batch_indices,
    prompt_batch_indices,
    prompt_groups,
    total_steps,
)

HEAD_FILE = "reward_head.safetensors"


def train_reward_model(
    reward_model: RewardModel,
    tokenizer,
    train_rows: list[dict],
    heldout_rows: list[dict],
    config: RewardConfig,
    *,
    setup=None,
    on_step=None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> list[dict]:
    """Fit `reward_model` in place to pairs {prompt, chosen, rejected}; return one record per step.

    Records hold `train/loss`, `train/accuracy`, `train/margin` (mean r_c - r_r), `train/lr`,
    `train/grad_norm`, and `eval/loss`, `eval/accuracy`, `eval/margin` at evaluation steps. The loss
    sees the scores with the current gain and bias: call `set_normalization` after training.
    With `checkpoint_dir` (a new or empty folder, or a checkpoint of this run), the reward model
    (`save_reward_model`), optimizer and run state are saved there every `checkpoint_every` steps
    and at the end; calling again with the same folder, config and training pairs resumes from the
    last checkpoint and ends with the same weights and history as an uninterrupted run.

    Notebook: 03_reward_model.ipynb
    """
    from rlhf_edu.devices import autocast, device_setup

    if not train_rows:
        raise ValueError("train_reward_model needs at least one training pair")
    setup = setup or device_setup()
    autocast_ctx = autocast(setup)
    device = next(reward_model.parameters()).device
    prompts = [r["prompt"] for r in train_rows]
    max_steps = total_steps(config, len(set(prompts)) if config.group_by_prompt else len(train_rows))
    freeze_lower_layers(reward_model, config.trainable_layers)
    trainable = [p for p in reward_model.parameters() if p.requires_grad]
    optimizer, scheduler, scaler = adamw_with_schedule(
        trainable,
        setup,
        lr=config.lr,
        max_steps=max_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
    )
    run = {"stage": "reward model", "config": jsonable(config), "data": rows_fingerprint(train_rows)}
    start, history = resume_training(
        checkpoint_dir, run, optimizer, scheduler, scaler, partial(load_reward_weights, reward_model), on_step
    )
    if config.group_by_prompt:
        order = prompt_batch_indices(prompts, config.batch_size, config.seed)
    else:
        order = pair_batch_indices(len(train_rows), config.batch_size, config.seed)
    batches = itertools.islice(order, start, None)
    for step in tqdm(
        range(start, max_steps), desc="reward model", initial=start, total=max_steps, disable=not progress
    ):
        # 1. Next batch of pairs (a fresh shuffle at each epoch; the last batch may be smaller), in
        #    micro-batches when `micro_batch_size` asks for them (gradients add up, memory is one part's).
        chunk = [train_rows[i] for i in next(batches)]
        reward_model.train()
        loss, chosen_parts, rejected_parts = 0.0, [], []
        for part in micro_batches(chunk, config.micro_batch_size, by_prompt=config.group_by_prompt):
            answers, chosen_rows, rejected_rows = batch_answers(part, distinct=config.group_by_prompt)
            batch = build_sft_batch(
                tokenizer,
                [prompt for prompt, _, _ in answers],
                [response for _, response, _ in answers],
                config.max_response_tokens,
                eos=[eos for _, _, eos in answers],
            )
            input_ids = batch["input_ids"].to(device)  # (N, P+R): 2b answers, or the distinct ones
            attention_mask = batch["attention_mask"].to(device)  # (N, P+R)
            # 2. Score every answer in one forward pass; Bradley-Terry loss over the pairs, equation (2),
            #    weighted by the part's share of the batch so that the parts add up to the batch's mean.
            with autocast_ctx:
                scores = reward_model(input_ids, attention_mask)  # (N,)
            chosen_scores = scores[torch.tensor(chosen_rows, device=device)]  # (b,)
            rejected_scores = scores[torch.tensor(rejected_rows, device=device)]  # (b,)
            part_loss = reward_loss(chosen_scores, rejected_scores) * (len(part) / len(chunk))
            if not torch.isfinite(part_loss):
                raise FloatingPointError(
                    f"reward-model loss (train/loss) is {part_loss.item()} at step {step}; lower the learning rate"
                )
            # 3. Backward (gradients accumulate over the parts), then clip and step (with fp16's grad
            #    scaler, a non-finite norm only skips the step).
            scaler.scale(part_loss).backward()
            loss += part_loss.item()
            chosen_parts.append(chosen_scores.detach())
            rejected_parts.append(rejected_scores.detach())
        chosen_scores, rejected_scores = torch.cat(chosen_parts), torch.cat(rejected_parts)  # (B,), (B,)
        grad_norm = clip_and_step(optimizer, scaler, trainable, config.max_grad_norm, step, "reward-model")
        record = {
            "step": step + 1,
            "train/loss": loss,
            "train/accuracy": reward_accuracy(chosen_scores, rejected_scores),
            "train/margin": float((chosen_scores - rejected_scores).mean()),
            "train/lr": scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm),
        }
        scheduler.step()
        # 4. Held-out loss and accuracy now and then.
        if heldout_rows and ((step + 1) % config.eval_every == 0 or step + 1 == max_steps):
            with autocast_ctx:
                record.update(evaluate_reward_model(reward_model, tokenizer, heldout_rows, config))
        history.append(record)
        if on_step is not None:
            on_step(step + 1, record)
        # 5. Checkpoint now and then, and at the end.
        checkpoint_if_due(
            checkpoint_dir,
            checkpoint_every,
            max_steps,
            lambda folder: save_reward_model(reward_model, tokenizer, folder),
            optimizer,
            scheduler,
            scaler,
            {**run, "step": step + 1, "history": history},
        )
    reward_model.eval()
    end_of_run(on_step)
    return history


def micro_batches(rows: list[dict], size: int | None, by_prompt: bool = False) -> list[list[dict]]:
    """A batch of pairs cut into parts of `size` pairs (None: one part, the whole batch); `by_prompt`
    cuts between prompts instead, `size` prompts a part, so that a prompt's answers stay together."""
    if size is None:
        return [rows]
    if not by_prompt:
        return [rows[i : i + size] for i in range(0, len(rows), size)]
    groups = prompt_groups([r["prompt"] for r in rows])
    return [[rows[j] for g in groups[i : i + size] for j in g] for i in range(0, len(groups), size)]


def batch_answers(rows: list[dict], distinct: bool = False) -> tuple[list[tuple], list[int], list[int]]:
    """The answers one forward pass scores for a batch of pairs: ((prompt, response, eos) per row of
    the forward batch, each pair's chosen row, each pair's rejected row). The chosen answers come
    first, then the rejected ones (2B rows); with `distinct`, an answer that stands in several pairs
    (a prompt's K answers make K(K-1)/2 pairs) is scored once.
    Notebook: 03_reward_model.ipynb"""
    answers: dict[tuple, int] = {}
    sides = []
    for side in ("chosen", "rejected"):
        keys = [(r["prompt"], r[side], r.get(f"{side}_eos", True)) for r in rows]
        if distinct:
            sides.append([answers.setdefault(key, len(answers)) for key in keys])
        else:  # every side of every pair its own row, even when the text repeats
            sides.append([answers.setdefault((*key, side, i), len(answers)) for i, key in enumerate(keys)])
    return [key[:3] for key in answers], sides[0], sides[1]


def load_reward_weights(reward_model: RewardModel, folder: Path) -> None:
    """Copy the weights, head, gain and bias that `save_reward_model` wrote in `folder` into
    `reward_model` (same architecture), without building a second head."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    check_reward_model_dir(folder, fix="delete the checkpoint folder to start the run over")
    backbone = AutoModel.from_pretrained(folder, dtype=torch.float32)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    try:
        reward_model.load_state_dict({**state, **load_file(str(folder / HEAD_FILE))})
    except RuntimeError as err:
        raise ValueError(f"the checkpoint in {folder} holds another reward model's weights: {err}") from None


def save_reward_model(reward_model: RewardModel, tokenizer, out_dir: str | Path, info: dict | None = None) -> Path:
    """Save as safetensors only: the backbone (`save_pretrained`), the tokenizer, and
    `reward_head.safetensors` holding head.weight (1, H), head.bias (1,), gain () and bias ().

    `info` (e.g. the config and history) goes to `run_info.json`.

    Notebook: 03_reward_model.ipynb
    """
    from safetensors.torch import save_file

    from rlhf_edu.store import write_json

    out_dir = Path(out_dir)
    (out_dir / "run_info.json").unlink(missing_ok=True)  # written last: it marks a finished save
    reward_model.backbone.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    head_state = {
        k: v.detach().cpu().contiguous() for k, v in reward_model.state_dict().items() if not k.startswith("backbone.")
    }
    save_file(head_state, str(out_dir / HEAD_FILE))
    if info is not None:
        write_json(out_dir / "run_info.json", info)
    return out_dir


def check_reward_model_dir(out_dir: Path, fix: str | None = None) -> None:
    """FileNotFoundError naming the folder, the missing file and what to do (`fix`, by default
    the notebook that writes an artifacts folder), unless `out_dir` holds a complete
    `save_reward_model` output."""
    from rlhf_edu.models import check_checkpoint

    check_checkpoint(out_dir, extra=(HEAD_FILE,), fix=fix)


def load_reward_model(out_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, object]:
    """Load what `save_reward_model` wrote: -> (reward_model in eval mode, tokenizer).

    A missing folder or file is a FileNotFoundError naming it (and notebook 03, which writes
    artifacts/reward_model).

    Notebook: 03_reward_model.ipynb
    """
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from rlhf_edu.models import setup_tokenizer

    out_dir = Path(out_dir)
    check_reward_model_dir(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    setup_tokenizer(tokenizer)
    reward_model = RewardModel(AutoModel.from_pretrained(out_dir, dtype=torch.float32))
    missing, unexpected = reward_model.load_state_dict(load_file(str(out_dir / HEAD_FILE)), strict=False)
    if unexpected or any(not k.startswith("backbone.") for k in missing):
        raise RuntimeError(f"{out_dir / HEAD_FILE} does not fit: missing {missing}, unexpected {unexpected}")
    return reward_model.to(device).eval(), tokenizer


def reward_model_key(preset) -> dict:
    """What a saved reward model must have been built from to be reused: the preset, its
    RewardConfig, the preference data and learner labels (`training_data_fingerprint`), and the
    SFT policy it started from (`sft_run_id`). Saved in its run_info.json (notebook 03).
    Notebooks: 03_reward_model.ipynb and later"""
    from dataclasses import asdict

    from rlhf_edu.preferences import training_data_fingerprint
    from rlhf_edu.store import sft_run_id

    return {
        "preset": preset.name,
        "config": asdict(preset.reward),
        "data": training_data_fingerprint(),
        "sft": sft_run_id(),
    }


def load_or_train_reward_model(preset, policy, tokenizer, setup=None, *, progress: bool = True):
    """The reward model of notebook 03: its checkpoint in artifacts/reward_model when it was trained
    from what `reward_model_key` lists (preset, RewardConfig, pairs and labels, SFT policy),
    otherwise trained now the way notebook 03 trains it (the
    learner's exported labels first, then the annotator's pairs; gain and bias from the SFT
    policy's samples) and saved there.

    `policy` is the SFT policy (its samples set the normalization; a copy of it is the backbone).
    Returns (reward_model, message); the message says which happened.
    Notebooks: 04_ppo.ipynb and later
    """
    import copy
    import json

    from rlhf_edu.data import load_concepts, make_prompt
    from rlhf_edu.devices import autocast, device_setup
    from rlhf_edu.generation import sample
    from rlhf_edu.preferences import reward_training_rows
    from rlhf_edu.store import artifacts_dir

    setup = setup or device_setup()
    key = reward_model_key(preset)
    out_dir = artifacts_dir() / "reward_model"
    info_path = out_dir / "run_info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if all(info.get(k) == v for k, v in key.items()):
            reward_model, _ = load_reward_model(out_dir, next(policy.parameters()).device)
            return reward_model, f"loaded the reward model from {out_dir}"
    train_rows, n_mine = reward_training_rows(
        preset.reward_pairs, preset.seed, whole_prompts=preset.reward.group_by_prompt
    )
    torch.manual_seed(preset.seed)
    reward_model = RewardModel.from_causal_lm(copy.deepcopy(policy))
    history = train_reward_model(reward_model, tokenizer, train_rows, [], preset.reward, setup=setup, progress=progress)
    concepts = list(load_concepts("train")["concept"])
    norm_prompts = [make_prompt(c) for c in random.Random(1).sample(concepts, preset.reward_norm_samples)]
    norm = sample(
        policy,
        tokenizer,
        norm_prompts,
        preset.eval_sampling,
        generator=torch.Generator().manual_seed(preset.seed),
        autocast_ctx=autocast(setup),
    )
    with autocast(setup):  # the sampled tokens, as PPO and GRPO will score them
        raw = score_samples(reward_model, norm.input_ids, norm.attention_mask, raw=True)  # (N,)
    reward_model.set_normalization(raw)
    save_reward_model(
        reward_model,
        tokenizer,
        out_dir,
        info={
            **key,
            "n_train_pairs": len(train_rows),
            "history": history,
        },
    )
    return reward_model, (
        f"no reward model for the {preset.name} preset in {out_dir}: trained one now on "
        f"{len(train_rows)} pairs ({n_mine} yours) with {preset.reward}"
    )
