"""Checkpoints: final model folders and resumable training checkpoints, for every stage.

A final checkpoint is a `save_pretrained` folder plus `run_info.json` (written last: it marks a
finished save). A resumable checkpoint folder holds the weights (safetensors), `optimizer.pt`
(optimizer, scheduler and grad-scaler state, read back with weights_only=True) and
`trainer_state.json` (stage, config, data digest, step, history). SFT, the reward model, DPO and
GRPO resume through `resume_training` (PPO, which also carries a critic and a KL controller, through
`PPOTrainer.load_checkpoint`); a resumed run ends with the same weights and history as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


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


def checkpoint_due(checkpoint_dir, step: int, last_step: int, every: int | None) -> bool:
    """True when a loop that has just finished `step` (1-based) should write a checkpoint: with a
    `checkpoint_dir`, at the last step and every `every` steps."""
    return checkpoint_dir is not None and (step == last_step or bool(every and step % every == 0))


def checkpoint_if_due(
    checkpoint_dir, every: int | None, last_step: int, write_weights, optimizer, scheduler, scaler, state: dict
) -> None:
    """After the step `state["step"]` of SFT, the reward model or DPO: `save_training_checkpoint`
    when `checkpoint_due`."""
    if checkpoint_due(checkpoint_dir, state["step"], last_step, every):
        save_training_checkpoint(checkpoint_dir, write_weights, optimizer, scheduler, scaler, state)


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
        raise FileNotFoundError(
            f"the {run['stage']} checkpoint in {folder} has no {OPTIMIZER_FILE}; delete the folder to start over"
        )
    states = torch.load(folder / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    scaler.load_state_dict(states["scaler"])
    return state["step"], state["history"]


def resume_training(checkpoint_dir, run: dict, optimizer, scheduler, scaler, load_weights, on_step=None):
    """(start step, history) of a training loop: (0, []) without `checkpoint_dir` or before its first
    checkpoint; otherwise the checkpoint's, after checking it belongs to `run`, restoring the
    optimizer, scheduler and scaler and calling `load_weights(folder)`. A resumed run's past is
    replayed into `on_step(step, record)`."""
    found = None if checkpoint_dir is None else find_checkpoint(checkpoint_dir)
    if found is None:
        return 0, []
    start, history = load_training_checkpoint(found, run, optimizer, scheduler, scaler)
    load_weights(found)
    if on_step is not None:
        for record in history:
            on_step(record["step"], record)
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
