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
  uninterrupted run exactly on a CPU. The checkpoint helpers here serve reward.py too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlhf_edu.generation import encode_prompts
from rlhf_edu.logprobs import masked_mean, per_token_logps


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

    def __post_init__(self):
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError(f"max_steps and batch_size must be >= 1, got {self.max_steps}, {self.batch_size}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")


def build_sft_batch(
    tokenizer, prompts: list[str], responses: list[str], max_response_tokens: int = 96, eos: list[bool] | None = None
) -> dict:
    """Tokenize (prompt, response) pairs into the course layout.

    Returns input_ids, attention_mask (B, P + R), response_mask (B, R) and context_length P.
    Each response is followed by EOS, except where `eos[i]` is False: a sampled response that was
    cut off at the token budget is scored as it was sampled, without an EOS it never emitted.
    response_mask is 1 on the response tokens and the EOS.
    """
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)  # (B, P), left-padded
    eos_id, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ended = [True] * len(responses) if eos is None else [bool(e) for e in eos]
    if len(ended) != len(responses):
        raise ValueError(f"got {len(responses)} responses but {len(ended)} eos flags")
    encoded = [tokenizer(r, add_special_tokens=False).input_ids + ([eos_id] if e else []) for r, e in zip(responses, ended)]
    for i, ids in enumerate(encoded):
        if len(ids) > max_response_tokens:
            raise ValueError(f"response {i} is {len(ids)} tokens, more than max_response_tokens={max_response_tokens}")
    R = max(len(ids) for ids in encoded)
    response_ids = torch.full((len(encoded), R), pad, dtype=torch.long)  # (B, R) right-padded
    response_mask = torch.zeros((len(encoded), R), dtype=torch.long)  # (B, R)
    for i, ids in enumerate(encoded):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = 1
    return {
        "input_ids": torch.cat([prompt_ids, response_ids], dim=1),  # (B, P+R)
        "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),  # (B, P+R)
        "response_mask": response_mask,  # (B, R)
        "context_length": prompt_ids.shape[1],
    }


def sft_loss(per_token_logps: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Completion-only negative log-likelihood: mean over response tokens. (B, R), (B, R) -> ()."""
    return -masked_mean(per_token_logps, response_mask)


def sft_batch_loss(model, batch: dict) -> torch.Tensor:
    logps = per_token_logps(model, batch["input_ids"], batch["attention_mask"], batch["context_length"])  # (B, R)
    return sft_loss(logps, batch["response_mask"])


def linear_schedule(step: int, warmup_steps: int, max_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up, then linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))


@torch.no_grad()
def heldout_loss(model, tokenizer, rows: list[dict], config: SFTConfig, autocast_ctx=None) -> float:
    """Token-weighted completion-only loss over held-out demonstrations."""
    import contextlib

    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(rows), config.batch_size):
        chunk = rows[start : start + config.batch_size]
        batch = build_sft_batch(tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk], config.max_response_tokens)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast_ctx or contextlib.nullcontext():
            loss = sft_batch_loss(model, batch)
        n = int(batch["response_mask"].sum())
        total, tokens = total + float(loss) * n, tokens + n
    return total / max(tokens, 1)


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
    live_plot=None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
) -> list[dict]:
    """Fine-tune `model` in place on demonstrations {prompt, response}; return one record per step.

    Records hold `train/loss`, `train/lr`, `train/grad_norm`, `train/tokens`, and `eval/loss` at
    evaluation steps. `live_plot` (a plots.LivePlot) is updated every step. With `out_dir`, the
    model and tokenizer are saved there at the end (safetensors), with the config and history.
    With `checkpoint_dir` (a new or empty folder, or a checkpoint of this run), the model, optimizer
    and run state are saved there every `checkpoint_every` steps and at the end; calling again with
    the same folder, config and rows (after an interrupt, or in a restarted kernel) resumes from
    the last checkpoint and ends with the same weights and history as an uninterrupted run.

    Notebook: 01_sft.ipynb
    """
    from rlhf_edu.models import autocast, device_setup

    setup = setup or device_setup()
    autocast_ctx = autocast(setup)
    base = model.config.name_or_path  # the starting weights, recorded with the saved policy
    train_rows, held_rows = split_heldout(rows, config.n_heldout, config.seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_schedule(s, config.warmup_steps, config.max_steps)
    )
    scaler = torch.amp.GradScaler(setup.device, enabled=setup.grad_scaler)
    optimizer.zero_grad(set_to_none=True)  # an interrupted earlier call may have left gradients
    run = {"stage": "SFT", "config": jsonable(config), "data": rows_fingerprint(rows)}
    start, history = resume_training(checkpoint_dir, run, optimizer, scheduler, scaler,
                                     partial(load_causal_lm_weights, model), live_plot)
    batches = itertools.islice(sft_batch_indices(len(train_rows), config.batch_size, config.seed), start, None)
    for step in tqdm(range(start, config.max_steps), desc="SFT", initial=start, total=config.max_steps,
                     disable=not progress):
        # 1. Next batch of demonstrations (reshuffled each epoch).
        chunk = [train_rows[i] for i in next(batches)]
        batch = build_sft_batch(tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk], config.max_response_tokens)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        # 2. Completion-only loss on the response tokens (and EOS).
        model.train()
        with autocast_ctx:
            loss = sft_batch_loss(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SFT loss (train/loss) is {loss.item()} at step {step}; lower the learning rate")
        # 3. Backward, clip, step (with fp16's grad scaler, a non-finite norm only skips the step).
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        if not scaler.is_enabled() and not torch.isfinite(grad_norm):
            raise FloatingPointError(
                f"SFT gradient norm (train/grad_norm) is {float(grad_norm)} at step {step}; lower the learning rate"
            )
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        record = {
            "step": step + 1,
            "train/loss": loss.item(),
            "train/lr": scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm),
            "train/tokens": int(batch["response_mask"].sum()),
        }
        scheduler.step()
        # 4. Held-out loss now and then.
        if held_rows and ((step + 1) % config.eval_every == 0 or step + 1 == config.max_steps):
            record["eval/loss"] = heldout_loss(model, tokenizer, held_rows, config, autocast_ctx)
        history.append(record)
        if live_plot is not None:
            live_plot.update(step + 1, record, force=step + 1 == config.max_steps)
        # 5. Checkpoint now and then, and at the end.
        if checkpoint_dir is not None and (
            step + 1 == config.max_steps or (checkpoint_every and (step + 1) % checkpoint_every == 0)
        ):
            save_training_checkpoint(
                checkpoint_dir, lambda folder: save_checkpoint(model, tokenizer, folder),
                optimizer, scheduler, scaler, {**run, "step": step + 1, "history": history},
            )
    model.eval()
    if out_dir is not None:
        save_checkpoint(model, tokenizer, out_dir, {"config": asdict(config), "history": history,
                                                    "data": rows_fingerprint(rows), "base": base})
    return history


def save_checkpoint(model, tokenizer, out_dir: str | Path, info: dict | None = None) -> Path:
    """`save_pretrained` (safetensors) plus a JSON file of run information."""
    from rlhf_edu.store import write_json

    out_dir = Path(out_dir)
    (out_dir / "run_info.json").unlink(missing_ok=True)  # written last: it marks a finished save
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if info is not None:
        write_json(out_dir / "run_info.json", info)
    return out_dir


# --------------------------------------------------------------------------- resumable checkpoints
# A checkpoint folder holds the weights (safetensors), `optimizer.pt` (optimizer, scheduler and
# grad-scaler state, read back with weights_only=True) and `trainer_state.json` (stage, config,
# data digest, step, history), as PPOTrainer.save_checkpoint writes. reward.py uses these too.

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


def jsonable(config) -> dict:
    """A config dataclass as the plain dict it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(asdict(config)))


def rows_fingerprint(rows: list[dict]) -> str:
    """A digest of the training rows: a checkpoint resumes only on the data it was trained on."""
    return hashlib.sha1(json.dumps(list(rows), sort_keys=True, default=str).encode()).hexdigest()


def save_training_checkpoint(
    out_dir: str | Path, write_weights: Callable[[Path], object], optimizer, scheduler, scaler, state: dict
) -> Path:
    """Write a resumable checkpoint: `write_weights(folder)` saves the model, then the optimizer
    state and `state` (JSON) follow.

    The folder is built as `<out_dir>.tmp` and swapped in with two renames, so a run killed at any
    moment leaves one complete checkpoint: the new one, or the previous one (in `<out_dir>.old`
    when the kill fell between the renames; `find_checkpoint` moves it back).
    """
    from rlhf_edu.store import write_json

    out_dir = Path(out_dir)
    tmp, old = out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_weights(tmp)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()},
        tmp / OPTIMIZER_FILE,
    )
    write_json(tmp / STATE_FILE, state)
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def find_checkpoint(out_dir: str | Path) -> Path | None:
    """The complete checkpoint in `out_dir`, None when there is none yet. A save killed between its
    two renames left the previous checkpoint in `<out_dir>.old`: it is moved back first. A folder
    holding other files is refused, since the first checkpoint would replace it."""
    out_dir = Path(out_dir)
    old = out_dir.with_name(out_dir.name + ".old")
    if not out_dir.exists() and (old / STATE_FILE).exists():
        old.rename(out_dir)
    if (out_dir / STATE_FILE).exists():
        return out_dir
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ValueError(
            f"checkpoint_dir {out_dir} holds files but no {STATE_FILE}, so it is not a training "
            f"checkpoint and the first checkpoint would replace it; pass a new or empty folder"
        )
    return None


def load_training_checkpoint(folder: Path, run: dict, optimizer, scheduler, scaler) -> tuple[int, list[dict]]:
    """Check that the checkpoint in `folder` belongs to this run (`run`: stage, config and data
    digest), restore the optimizer, scheduler and scaler, and return (step, history)."""
    state = json.loads((folder / STATE_FILE).read_text())
    if state.get("stage") != run["stage"]:
        raise ValueError(
            f"{folder} is not a {run['stage']} checkpoint (it was written by {state.get('stage') or 'another trainer'})"
        )
    if state.get("config") != run["config"]:
        saved = state.get("config") or {}
        fields = sorted(k for k in run["config"] if saved.get(k) != run["config"][k])
        raise ValueError(
            f"the {run['stage']} checkpoint in {folder} was written with another config ({', '.join(fields)} "
            f"differ: {[saved.get(k) for k in fields]} there, {[run['config'][k] for k in fields]} now); "
            f"pass the same config to resume it, or delete the folder to start over"
        )
    if state.get("data") != run["data"]:
        raise ValueError(
            f"the {run['stage']} checkpoint in {folder} was trained on other rows; pass the same rows "
            f"to resume it, or delete the folder to start over"
        )
    if not (folder / OPTIMIZER_FILE).exists():
        raise FileNotFoundError(f"the {run['stage']} checkpoint in {folder} has no {OPTIMIZER_FILE}; delete the folder to start over")
    states = torch.load(folder / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    scaler.load_state_dict(states["scaler"])
    return state["step"], state["history"]


def resume_training(checkpoint_dir, run: dict, optimizer, scheduler, scaler, load_weights, live_plot=None):
    """(start step, history) of a training loop: (0, []) without `checkpoint_dir` or before its first
    checkpoint; otherwise the checkpoint's, after checking it belongs to `run`, restoring the
    optimizer, scheduler and scaler and calling `load_weights(folder)`. A resumed run's past is
    replayed into `live_plot`."""
    found = None if checkpoint_dir is None else find_checkpoint(checkpoint_dir)
    if found is None:
        return 0, []
    start, history = load_training_checkpoint(found, run, optimizer, scheduler, scaler)
    load_weights(found)
    if live_plot is not None:
        for record in history:
            live_plot.update(record["step"], record)
    return start, history


def load_causal_lm_weights(model, folder: Path) -> None:
    """Copy the weights that `save_checkpoint` wrote in `folder` into `model` (same architecture)."""
    from transformers import AutoModelForCausalLM

    from rlhf_edu.models import check_checkpoint

    check_checkpoint(folder, fix="delete the checkpoint folder to start the run over")
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    try:
        model.load_state_dict(saved.state_dict())
    except RuntimeError as err:
        raise ValueError(f"the checkpoint in {folder} holds another model's weights: {err}") from None


def load_or_train_sft(preset, setup=None, *, progress: bool = True):
    """The SFT policy of notebook 01: its checkpoint in artifacts/sft when it was trained with this
    preset's SFTConfig, otherwise trained now with that config (and saved there).

    Returns (model, tokenizer, message); the message says which happened. Later notebooks call this
    so that each runs on its own in a fresh runtime.
    """
    from rlhf_edu.data import load_sft_demos
    from rlhf_edu.models import device_setup, load_model
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


def sft_run_id() -> str | None:
    """A digest of the saved SFT policy's run_info.json (config, data, base model, history): it
    changes whenever another SFT policy is saved, so what was built on the old one (the reward
    model) is known to be stale. None when there is none."""
    from rlhf_edu.store import artifacts_dir

    info = artifacts_dir() / "sft" / "run_info.json"
    return hashlib.sha1(info.read_bytes()).hexdigest()[:16] if info.exists() else None
