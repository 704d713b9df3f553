"""Training plumbing every stage shares: the learning-rate schedule, one optimizer step (clip,
finite check, step), freezing the lower blocks, trimming padding, the seeded order of prompts and
random generators, and the iteration loop of PPO and GRPO. Stage modules (sft, reward_training,
dpo, ppo_loop, ppo_trainer, grpo_loop, grpo_trainer) import it; it imports no stage.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm


class Stopwatch:
    """Seconds by part of one iteration: `lap(name)` adds the time since the previous lap (or since
    the watch started) to `laps[name]`."""

    def __init__(self):
        self.laps: dict[str, float] = defaultdict(float)
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] += now - self._last
        self._last = now


def release_memory() -> None:
    """Give freed memory back to the operating system after a stage: collect garbage, empty the CUDA
    cache, and on Linux ask glibc to return the heap pages a training run freed (`malloc_trim`).
    Without it the optimizer's state and the gradients of a finished run (three times the trained
    weights) stay in the process's resident memory, and the next stage's peak lands on top of them."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def step_timings(start: float, rollout_end: float, laps: dict[str, float]) -> dict[str, float]:
    """The `time/...` metrics of one PPO or GRPO iteration that began at `start` (perf_counter) and
    finished its rollout at `rollout_end`: rollout, update and step seconds, and the rollout's parts."""
    now = time.perf_counter()
    return {
        "time/rollout_s": rollout_end - start,
        "time/step_s": now - start,
        "time/update_s": now - rollout_end,
        **{f"time/{name}_s": seconds for name, seconds in laps.items()},
    }


def end_of_run(on_step) -> None:
    """After a loop's last step: a live plot (anything with `draw`) is redrawn once more, so the
    last points show even when it redraws only every few steps."""
    draw = getattr(on_step, "draw", None)
    if draw is not None:
        draw()
    release_memory()


def run_iterations(
    trainer, steps: int, *, desc: str, on_step=None, progress: bool = True, checkpoint_dir=None, checkpoint_every=None
) -> list[dict]:
    """The loop of PPO and GRPO: `trainer.step()` until `steps` iterations in all, with a progress
    bar showing the score and the KL, `on_step(step, metrics)` after each step, and
    `trainer.save_checkpoint(checkpoint_dir)` every `checkpoint_every` steps and at the end.
    Returns `trainer.history`."""
    from rlhf_edu.checkpoints import checkpoint_due

    bar = tqdm(total=steps, initial=trainer.step_count, desc=desc, disable=not progress)
    while trainer.step_count < steps:
        metrics = trainer.step()
        bar.update(1)
        bar.set_postfix({"score": f"{metrics['objective/score']:+.2f}", "kl": f"{metrics['objective/kl']:.2f}"})
        if on_step is not None:
            on_step(trainer.step_count, metrics)
        if checkpoint_due(checkpoint_dir, trainer.step_count, steps, checkpoint_every):
            trainer.save_checkpoint(checkpoint_dir)
    bar.close()
    end_of_run(on_step)
    return trainer.history


def step_seed(seed: int, step: int) -> int:
    """The seed of iteration (or pass) `step` of a run seeded with `seed`: distinct for every pair."""
    return seed * 1_000_003 + step


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random generator of iteration `step` (sampling, then minibatch shuffles)."""
    return torch.Generator().manual_seed(step_seed(seed, step))


def prompts_for_step(prompts: list[str], step: int, n: int, seed: int) -> list[str]:
    """The `n` prompts of iteration `step`: consecutive slices of a seeded shuffle per pass."""
    out, position = [], step * n
    while len(out) < n:
        epoch, offset = divmod(position, len(prompts))
        order = random.Random(step_seed(seed, epoch)).sample(range(len(prompts)), len(prompts))
        take = min(n - len(out), len(prompts) - offset)
        out += [prompts[i] for i in order[offset : offset + take]]
        position += take
    return out


def linear_schedule(step: int, warmup_steps: int, max_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up, then linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))


def adamw_with_schedule(params, setup, *, lr: float, max_steps: int, warmup_steps: int = 0, weight_decay: float = 0.0):
    """(optimizer, scheduler, scaler) of a supervised stage (SFT, reward model, DPO): AdamW at peak
    `lr`, the linear warm-up and decay of `linear_schedule` over `max_steps`, and the grad scaler
    `setup` asks for (fp16 only). Gradients start at zero: an interrupted earlier call may have left
    some."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, warmup_steps, max_steps))
    scaler = torch.amp.GradScaler(setup.device, enabled=setup.grad_scaler)
    optimizer.zero_grad(set_to_none=True)
    return optimizer, scheduler, scaler


def clip_and_step(optimizer, scaler, params, max_grad_norm: float, step: int, stage: str) -> torch.Tensor:
    """After `scaler.scale(loss).backward()`: unscale, clip the gradients' global norm to
    `max_grad_norm`, stop on a non-finite norm (with fp16's grad scaler, it only skips the step),
    step, update the scaler and zero the gradients. Returns the norm before clipping."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if not scaler.is_enabled():
        check_finite("the gradient norm (train/grad_norm)", grad_norm, step, stage)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def check_finite(name: str, tensor: torch.Tensor, step: int, stage: str = "PPO") -> None:
    """Stop the run with a message naming the stage, step and quantity when it holds NaN or inf."""
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise FloatingPointError(
            f"{stage} step {step}: {name} has {bad} non-finite value(s) (NaN or inf). Lower the "
            f"learning rate or the KL coefficient, or check the inputs (scores, reference log-probs)."
        )


def warn_if_first_ratio_off(first_ratio_dev: float, tolerance: float, step: int, stage: str = "PPO") -> None:
    """The health check of an update's first minibatch (docs/implementation_details.md#ratio-check):
    nothing has changed yet, so max |ratio - 1| must be 0 up to rounding; past `tolerance`, warn and
    name the usual causes."""
    if first_ratio_dev > tolerance:
        warnings.warn(
            f"{stage} step {step}: the first minibatch's ratio is off 1 by {first_ratio_dev:.2e} "
            f"(> {tolerance:g}); old and new log-probs do not come from the same forward "
            f"(dropout on? a different dtype or temperature?)",
            stacklevel=3,
        )


def trim_padding(rollout_ids: torch.Tensor, attention_mask: torch.Tensor, P: int, rows: torch.Tensor):
    """The rows `rows` of a (B, P+R) batch, without columns that are padding in all of them.

    Returns (input_ids, attention_mask, context_length, response slice): fewer columns, same
    numbers, since padding is masked out of attention and positions come from the mask.
    """
    ids, mask = rollout_ids[rows], attention_mask[rows]  # (b, P+R)
    first = int(mask[:, :P].any(dim=0).long().argmax())  # first prompt column with a real token
    n_response = int(mask[:, P:].sum(dim=1).max())  # longest response among these rows
    return ids[:, first : P + n_response], mask[:, first : P + n_response], P - first, n_response


def transformer_blocks(backbone: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer blocks: `layers` (Llama), `h` (GPT-2) or `layers` (GPT-NeoX)."""
    for name in ("layers", "h", "blocks"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            return blocks
    raise ValueError(f"cannot find the transformer blocks of {type(backbone).__name__}")


def freeze_lower_layers(model: torch.nn.Module, trainable_layers: int | None) -> None:
    """requires_grad False on the embeddings and all but the top `trainable_layers` blocks.

    `model` is a RewardModel or a critic (its `backbone`) or a causal LM (its `base_model`). None (or at least
    as many as there are blocks) leaves everything trainable. The final norm and the reward head
    always train; a causal LM's `lm_head` trains unless it is tied to the (frozen) embeddings.
    Notebooks: 03_reward_model.ipynb, 04_ppo.ipynb
    """
    for p in model.parameters():
        p.requires_grad_(True)
    backbone = model.backbone if hasattr(model, "backbone") else model.base_model
    blocks = transformer_blocks(backbone)
    if trainable_layers is None or trainable_layers >= len(blocks):
        return
    if trainable_layers < 0:
        raise ValueError(f"trainable_layers must be >= 0 or None, got {trainable_layers}")
    top = {id(p) for block in list(blocks)[len(blocks) - trainable_layers :] for p in block.parameters()}
    block_params = {id(p) for p in blocks.parameters()}
    for name, p in backbone.named_parameters():
        in_blocks = id(p) in block_params
        if (in_blocks and id(p) not in top) or (not in_blocks and "norm" not in name and "ln_f" not in name):
            p.requires_grad_(False)


def total_steps(config, n_train: int) -> int:
    """`config.max_steps`, or `config.epochs` passes of ceil(n_train / config.batch_size) steps
    (a RewardConfig or a DPOConfig). Notebooks: 03_reward_model.ipynb, 06_dpo_grpo.ipynb"""
    if config.max_steps is not None:
        return config.max_steps
    return config.epochs * math.ceil(n_train / config.batch_size)


def pair_batch_indices(n_train: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Pair indices of each step's batch, forever: a fresh seeded shuffle at each pass over the
    pairs, cut into batches of `batch_size` (the last of a pass may be smaller)."""
    rng = random.Random(seed)
    while True:
        order = rng.sample(range(n_train), n_train)
        for start in range(0, n_train, batch_size):
            yield order[start : start + batch_size]


def prompt_groups(prompts: list[str]) -> list[list[int]]:
    """The row indices of each distinct prompt, prompts in order of first appearance:
    ["a", "b", "a"] -> [[0, 2], [1]]."""
    rows_of: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        rows_of.setdefault(prompt, []).append(i)
    return list(rows_of.values())


def prompt_batch_indices(prompts: list[str], prompts_per_step: int, seed: int) -> Iterator[list[int]]:
    """Row indices of each step's batch, forever, rows grouped by prompt: a fresh seeded shuffle of
    the distinct prompts at each pass, cut into `prompts_per_step` prompts whose rows (all of them,
    in their order in `prompts`) make a batch; the last of a pass may have fewer prompts."""
    groups = prompt_groups(prompts)
    rng = random.Random(seed)
    while True:
        order = rng.sample(range(len(groups)), len(groups))
        for start in range(0, len(groups), prompts_per_step):
            yield [i for g in order[start : start + prompts_per_step] for i in groups[g]]


def sft_batch_indices(n_train: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Row indices of each step's batch, forever: a seeded reshuffle is appended whenever fewer than
    `batch_size` rows are left, so every batch is full (it may span two passes over the data)."""
    rng = random.Random(seed)
    order: list[int] = []
    size = min(batch_size, n_train)
    while True:
        if len(order) < batch_size:
            order += rng.sample(range(n_train), n_train)
        batch, order = order[:size], order[size:]
        yield batch
