"""Artifacts: checkpoints, runs and the headline metrics each notebook records.

`artifacts_dir()` is `$RLHF_EDU_ARTIFACTS`, else `artifacts/` in the repository (found from the
package's location), else `./artifacts`. Each notebook calls `record_metrics("01_sft", {...})`;
`make course` gathers those files into `artifacts/course_summary.json`. Cached results are named by
`cache_key` of what they were computed from; weights are named by `fingerprint`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import sys
import weakref
from dataclasses import asdict
from pathlib import Path

import torch

ARTIFACTS_ENV = "RLHF_EDU_ARTIFACTS"


def artifacts_dir() -> Path:
    env = os.environ.get(ARTIFACTS_ENV)
    if env:
        path = Path(env)
    else:
        repo = Path(__file__).resolve().parents[1]
        path = repo / "artifacts" if (repo / "notebooks").is_dir() else Path.cwd() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (a crash mid-write never leaves a half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # bytes on macOS, KiB on Linux


def record_metrics(notebook: str, metrics: dict) -> Path:
    """Save a notebook's headline metrics (plus its peak memory) for the course summary."""
    clean = {k: (float(v) if hasattr(v, "item") else v) for k, v in metrics.items()}
    clean["peak_rss_gb"] = round(peak_rss_gb(), 3)
    path = artifacts_dir() / "metrics" / f"{notebook}.json"
    write_json(path, clean)
    return path


def load_metrics(notebook: str) -> dict | None:
    path = artifacts_dir() / "metrics" / f"{notebook}.json"
    return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------- keys and fingerprints


def jsonable(obj):
    """`obj` as plain JSON values (dataclasses as dicts, tuples as lists), as it reads back from disk."""

    def default(o):
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return asdict(o)
        if isinstance(o, (tuple, set)):
            return list(o)
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot store {type(o).__name__} as JSON")

    return json.loads(json.dumps(obj, default=default))


def cache_key(*parts) -> str:
    """16 hex digits of the SHA-256 of `parts` as canonical JSON (dataclasses as dicts, sorted
    keys): the name of a cached result, which changes when anything it was computed from changes.

    Notebooks: 05_reward_kl_tradeoffs.ipynb, 07_evaluation.ipynb"""
    text = json.dumps(jsonable(list(parts)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_MEMO: dict[str, weakref.WeakKeyDictionary] = {
    "param_sum": weakref.WeakKeyDictionary(),
    "fingerprint": weakref.WeakKeyDictionary(),
}


def _memoized(kind: str, model: torch.nn.Module, compute):
    """compute(model), remembered while the model lives and none of its tensors is replaced or
    changed in place.

    A sum over 135M weights takes seconds on a busy laptop, and the same reference and reward model
    are fingerprinted for every policy. The memo holds the model weakly (a freed model's entry goes
    with it, so a new model at the same address is never mistaken for it) and checks each tensor's
    identity, storage and version counter, which every in-place update (an optimizer step,
    `load_state_dict`) increments.
    """
    state = (*model.parameters(), *model.buffers())
    signature = tuple((id(t), t.data_ptr(), t._version, tuple(t.shape)) for t in state)
    hit = _MEMO[kind].get(model)
    if hit is not None and hit[0] == signature:
        return hit[1]
    value = compute(model)
    _MEMO[kind][model] = (signature, value)
    return value


@torch.no_grad()
def param_sum(model: torch.nn.Module) -> float:
    """Sum of every parameter in float64 (shared weights once): a resumed PPO run checks its
    reference's and its reward model's."""
    return _memoized("param_sum", model, lambda m: float(sum(p.double().sum() for p in m.parameters())))


@torch.no_grad()
def fingerprint(model: torch.nn.Module) -> str:
    """The float64 sum of every parameter and buffer, to 12 significant digits: other weights, other
    string. Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb"""

    def compute(m):
        total = sum(t.double().sum() for t in m.state_dict().values() if t.is_floating_point())
        return f"{float(total):.11e}"

    return _memoized("fingerprint", model, compute)


def sft_run_id() -> str | None:
    """A digest of the saved SFT policy's run_info.json (config, data, base model, history): it
    changes whenever another SFT policy is saved, so what was built on the old one (the reward
    model) is known to be stale. None when there is none."""
    info = artifacts_dir() / "sft" / "run_info.json"
    return hashlib.sha1(info.read_bytes()).hexdigest()[:16] if info.exists() else None


class RunCache:
    """JSON records in one folder, `<name>-<key>.json`. Notebook: 05_reward_kl_tradeoffs.ipynb"""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}.json"

    def load(self, name: str, key: str) -> dict | None:
        path = self.path(name, key)
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, name: str, key: str, record: dict) -> dict:
        from rlhf_edu.store import write_json

        write_json(self.path(name, key), {**record, "key": key})
        return record


class Lazy:
    """A value built on first call: when every run that needs it is cached, it is never built.

    Notebook: 05_reward_kl_tradeoffs.ipynb"""

    def __init__(self, build):
        self.build, self.value = build, None

    def __call__(self):
        if self.value is None:
            self.value = self.build()
        return self.value
