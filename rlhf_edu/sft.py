"""Supervised fine-tuning (SFT) with a completion-only loss.

The first stage of InstructGPT (Ouyang et al. 2022, section 3.5): maximize the log-likelihood of
demonstrations, counting only the response tokens (the prompt is given, not learned). Notebook 01
builds each piece and checks it against this module.

    loss = - sum_{b,t} response_mask[b,t] * log pi(y[b,t] | x[b], y[b,<t]) / sum_{b,t} response_mask[b,t]

Deliberate choices:
- The mean is over response tokens of the whole batch (token-level), as in TRL's SFTTrainer.
- Every response ends with the EOS token, which is in the loss (response_mask covers it), so the
  model learns to stop; the pad token differs from EOS (models.setup_tokenizer).
- The batch layout is the one every stage uses (logprobs.py), so SFT, sampling and PPO share
  `per_token_logps`.
- The data order is the only randomness, a stream of batches drawn from `seed` alone, so a run
  resumed from a checkpoint (`checkpoint_dir`) skips the batches it trained on and repeats the
  uninterrupted run exactly on a CPU (`rlhf_edu.checkpoints`).
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlhf_edu.batches import build_sft_batch
from rlhf_edu.checkpoints import (
    checkpoint_if_due,
    load_causal_lm_weights,
    resume_training,
    rows_fingerprint,
    save_checkpoint,
)
from rlhf_edu.logprobs import masked_mean, per_token_logps
from rlhf_edu.store import jsonable
from rlhf_edu.training import adamw_with_schedule, clip_and_step, end_of_run, sft_batch_indices


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning settings."""

    lr: float = 3e-5
    """Peak AdamW learning rate."""
    batch_size: int = 8
    """Demonstrations per optimizer step."""
    max_steps: int = 48
    """Optimizer steps (the data is reshuffled at each epoch boundary)."""
    warmup_steps: int = 4
    """Linear warm-up from 0 to `lr`, then linear decay to 0 at `max_steps`."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    eval_every: int = 16
    """Held-out loss every this many steps (and at the last step)."""
    n_heldout: int = 32
    """Demonstrations kept out of training to measure held-out loss."""
    max_response_tokens: int = 96
    """Longer demonstrations are an error (they would be cut before their EOS)."""
    seed: int = 0
    """Shuffling and held-out split."""
    micro_batch_size: int | None = None
    """Demonstrations per forward and backward pass; the parts' gradients add up to the whole batch's
    (each part weighted by its share of the batch's loss tokens). None: the whole batch in one pass.
    Smaller parts lower the peak memory (activations and the vocabulary-wide logits), not the update."""

    def __post_init__(self):
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError(f"max_steps and batch_size must be >= 1, got {self.max_steps}, {self.batch_size}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be None or >= 1, got {self.micro_batch_size}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")


def sft_loss(per_token_logps: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Completion-only negative log-likelihood: mean over response tokens. (B, R), (B, R) -> ()."""
    return -masked_mean(per_token_logps, response_mask)


def completion_mask(batch: dict) -> torch.Tensor:
    """The course's SFT loss mask over whole sequences, (B, P + R): 0 on the prompt block, the
    response mask (the answer and its EOS) on the response block. Pass a function like this one,
    changed, as `train_sft(..., loss_mask=...)` to train on other tokens (notebook 01's exercises)."""
    response_mask = batch["response_mask"]  # (B, R)
    prompt_zeros = response_mask.new_zeros(response_mask.shape[0], batch["context_length"])  # (B, P)
    return torch.cat([prompt_zeros, response_mask], dim=1)  # (B, P + R)


def sft_batch_loss(model, batch: dict, loss_mask=None) -> torch.Tensor:
    """The batch's SFT loss: completion-only by default; with `loss_mask(batch) -> (B, P + R)`, the
    mean negative log-likelihood of every token (after the first) where that mask is 1."""
    if loss_mask is None:
        logps = per_token_logps(model, batch["input_ids"], batch["attention_mask"], batch["context_length"])  # (B, R)
        return sft_loss(logps, batch["response_mask"])
    logps = per_token_logps(model, batch["input_ids"], batch["attention_mask"], 1)  # (B, P + R - 1) tokens 1..
    return sft_loss(logps, _predicted_mask(batch, loss_mask))


def _predicted_mask(batch: dict, loss_mask) -> torch.Tensor:
    """(B, P + R - 1): a token counts where the mask says so, it is real, and so is the token
    before it that predicts it."""
    attention = batch["attention_mask"]  # (B, P + R)
    return loss_mask(batch)[:, 1:] * attention[:, 1:] * attention[:, :-1]


def loss_tokens(batch: dict, loss_mask=None) -> int:
    """How many tokens `sft_batch_loss` averages over in this batch."""
    mask = batch["response_mask"] if loss_mask is None else _predicted_mask(batch, loss_mask)
    return int(mask.sum())


def batch_parts(batch: dict, size: int | None) -> list[dict]:
    """A batch in the course layout cut into parts of `size` rows (None: the whole batch), each
    keeping the batch's columns (a part may carry padding columns of its own: they count nowhere)."""
    n = batch["input_ids"].shape[0]
    if size is None or size >= n:
        return [batch]
    return [{k: v[i : i + size] if torch.is_tensor(v) else v for k, v in batch.items()} for i in range(0, n, size)]


@torch.no_grad()
def heldout_loss(model, tokenizer, rows: list[dict], config: SFTConfig, autocast_ctx=None) -> float:
    """Token-weighted completion-only loss over held-out demonstrations."""
    import contextlib

    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(rows), config.batch_size):
        chunk = rows[start : start + config.batch_size]
        batch = build_sft_batch(
            tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk], config.max_response_tokens
        )
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast_ctx or contextlib.nullcontext():
            loss = sft_batch_loss(model, batch)
        n = int(batch["response_mask"].sum())
        total, tokens = total + float(loss) * n, tokens + n
    return total / max(tokens, 1)


def split_heldout(rows: list[dict], n_heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded train / held-out split of the demonstrations."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = [rows[i] for i in order[:n_heldout]]
    train = [rows[i] for i in order[n_heldout:]]
    if not train:
        raise ValueError(f"n_heldout={n_heldout} leaves no training demonstrations out of {len(rows)}")
    return train, held


def train_sft(
    model,
    tokenizer,
    rows: list[dict],
    config: SFTConfig,
    *,
    setup=None,
    on_step=None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    loss_mask=None,
) -> list[dict]:
    """Fine-tune `model` in place on demonstrations {prompt, response}; return one record per step.

    Records hold `train/loss`, `train/lr`, `train/grad_norm`, `train/tokens`, and `eval/loss` at
    evaluation steps. `on_step(step, record)` (a plots.LivePlot, say) is called after every step. With `out_dir`, the
    model and tokenizer are saved there at the end (safetensors), with the config and history.
    With `checkpoint_dir` (a new or empty folder, or a checkpoint of this run), the model, optimizer
    and run state are saved there every `checkpoint_every` steps and at the end; calling again with
    the same folder, config and rows (after an interrupt, or in a restarted kernel) resumes from
    the last checkpoint and ends with the same weights and history as an uninterrupted run.
    `loss_mask(batch) -> (B, P + R)` chooses the tokens in the training loss (default
    `completion_mask`); the held-out loss stays completion-only, so runs remain comparable.

    Notebook: 01_sft.ipynb
    """
    from rlhf_edu.devices import autocast, device_setup

    setup = setup or device_setup()
    autocast_ctx = autocast(setup)
    base = model.config.name_or_path  # the starting weights, recorded with the saved policy
    train_rows, held_rows = split_heldout(rows, config.n_heldout, config.seed)
    device = next(model.parameters()).device
    optimizer, scheduler, scaler = adamw_with_schedule(
        model.parameters(),
        setup,
        lr=config.lr,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
    )
    run = {"stage": "SFT", "config": jsonable(config), "data": rows_fingerprint(rows)}
    start, history = resume_training(
        checkpoint_dir, run, optimizer, scheduler, scaler, partial(load_causal_lm_weights, model), on_step
    )
    batches = itertools.islice(sft_batch_indices(len(train_rows), config.batch_size, config.seed), start, None)
    for step in tqdm(
        range(start, config.max_steps), desc="SFT", initial=start, total=config.max_steps, disable=not progress
    ):
        # 1. Next batch of demonstrations (reshuffled each epoch).
        chunk = [train_rows[i] for i in next(batches)]
        batch = build_sft_batch(
            tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk], config.max_response_tokens
        )
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        # 2. Completion-only loss on the response tokens (and EOS), in parts when `micro_batch_size`
        #    asks for them: each part's mean weighted by its share of the batch's tokens.
        model.train()
        loss, tokens = 0.0, loss_tokens(batch, loss_mask)
        for part in batch_parts(batch, config.micro_batch_size):
            with autocast_ctx:
                part_loss = sft_batch_loss(model, part, loss_mask) * (loss_tokens(part, loss_mask) / tokens)
            if not torch.isfinite(part_loss):
                raise FloatingPointError(
                    f"SFT loss (train/loss) is {part_loss.item()} at step {step}; lower the learning rate"
                )
            # 3. Backward (gradients add up over the parts), clip, step (with fp16's grad scaler, a
            #    non-finite norm only skips the step).
            scaler.scale(part_loss).backward()
            loss += part_loss.item()
        grad_norm = clip_and_step(optimizer, scaler, model.parameters(), config.max_grad_norm, step, "SFT")
        record = {
            "step": step + 1,
            "train/loss": loss,
            "train/lr": scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm),
            "train/tokens": int(batch["response_mask"].sum()),
        }
        scheduler.step()
        # 4. Held-out loss now and then.
        if held_rows and ((step + 1) % config.eval_every == 0 or step + 1 == config.max_steps):
            record["eval/loss"] = heldout_loss(model, tokenizer, held_rows, config, autocast_ctx)
        history.append(record)
        if on_step is not None:
            on_step(step + 1, record)
        # 5. Checkpoint now and then, and at the end.
        checkpoint_if_due(
            checkpoint_dir,
            checkpoint_every,
            config.max_steps,
            lambda folder: save_checkpoint(model, tokenizer, folder),
            optimizer,
            scheduler,
            scaler,
            {**run, "step": step + 1, "history": history},
        )
    model.eval()
    end_of_run(on_step)
    if out_dir is not None:
        save_checkpoint(
            model,
            tokenizer,
            out_dir,
            {"config": asdict(config), "history": history, "data": rows_fingerprint(rows), "base": base},
        )
    return history


def load_or_train_sft(preset, setup=None, *, progress: bool = True):
    """The SFT policy of notebook 01: its checkpoint in artifacts/sft when it was trained with this
    preset's SFTConfig, otherwise trained now with that config (and saved there).

    Returns (model, tokenizer, message); the message says which happened. Later notebooks call this
    so that each runs on its own in a fresh runtime.
    """
    from rlhf_edu.data import load_sft_demos
    from rlhf_edu.devices import device_setup
    from rlhf_edu.models import load_model
    from rlhf_edu.store import artifacts_dir

    setup = setup or device_setup()
    ckpt = artifacts_dir() / "sft"
    demos = list(load_sft_demos())
    model, tok = load_model(preset.model_name, device=setup.device)
    wanted = {"config": asdict(preset.sft), "data": rows_fingerprint(demos), "base": model.config.name_or_path}
    stale = sft_checkpoint_mismatch(ckpt, wanted)
    if stale is None:
        model, tok = load_model(str(ckpt), device=setup.device)
        return model, tok, f"loaded the SFT policy from {ckpt}"
    torch.manual_seed(preset.seed)
    train_sft(model, tok, demos, preset.sft, setup=setup, out_dir=ckpt, progress=progress)
    return model, tok, f"{stale}: trained one now for the {preset.name} preset ({preset.sft.max_steps} steps)"


def sft_checkpoint_mismatch(ckpt: Path, wanted: dict) -> str | None:
    """None when the SFT policy saved in `ckpt` was trained with `wanted`'s config, on its data,
    from its base model; otherwise why it cannot be used (so a smoke run's policy is never taken
    for the cpu preset's, nor one trained on other demonstrations or from another model)."""
    info_path = Path(ckpt) / "run_info.json"
    if not info_path.exists():
        return f"no SFT policy in {ckpt}"
    info = json.loads(info_path.read_text())
    differ = [key for key, value in wanted.items() if info.get(key) != value]
    if differ:
        return f"the SFT policy in {ckpt} was trained with another {' and '.join(differ)}"
    return None
