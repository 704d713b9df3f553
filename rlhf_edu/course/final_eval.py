"""Saved policies and the scoreboard of notebooks 06 and 07.

Notebook 06 trains DPO and GRPO (or RLOO) and compares them with SFT and PPO; notebook 07 ranks every
policy the course built. Both evaluate through `rlhf_edu.course.yardstick` (one evaluation, cached in
`rlhf_edu.eval_rows`). This module:

- saves and loads the policies (`save_policy`, `load_policy`): a checkpoint is used only when it was
  trained at the current preset with the current config, otherwise the caller is told why not;
- turns eval rows into one scoreboard line (`scoreboard_row`);
- names the file where the blind A/B widget of 07 keeps its judgments (`ab_store_path`).

A fingerprint (`store.fingerprint`) is the float64 sum of a model's parameters and buffers: any
training step changes it. It is not a cryptographic hash.

Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from rlhf_edu.budgets import FinalEvalBudget
from rlhf_edu.rubric import COMPONENTS
from rlhf_edu.store import fingerprint, jsonable, param_sum

# --------------------------------------------------------------------------- saving and loading policies


def policy_dir(name: str) -> Path:
    """Where a policy of the course lives: artifacts/<name> ("dpo", "grpo"; PPO's is ppo/policy)."""
    from rlhf_edu.store import artifacts_dir

    return artifacts_dir() / name


def save_policy(model, tokenizer, name: str, *, preset: str, config, reference=None, extra: dict | None = None) -> Path:
    """Save a trained policy to artifacts/<name>/ with `checkpoints.save_checkpoint` (safetensors) and a
    run_info.json holding the preset, the config, the reference's fingerprint and `extra` (history,
    seconds). `load_policy` checks the first three. Notebook: 06_dpo_grpo.ipynb"""
    from rlhf_edu.checkpoints import save_checkpoint

    info = {"preset": preset, "config": jsonable(config), **jsonable(extra or {})}
    if reference is not None:
        info["reference"] = fingerprint(reference)
    return save_checkpoint(model, tokenizer, policy_dir(name), info)


def load_policy(name: str, preset, budget: FinalEvalBudget, *, device="cpu", reference=None, reward_model=None):
    """Load one of the course's policies: -> (model, tokenizer, info, message), or (None, None,
    None, reason) when it is missing or belongs to another run.

    name: "base" (the preset's starting model), "ppo" (notebook 04: artifacts/ppo/policy, a
    finished run at this preset's PPOConfig, against this `reference` and `reward_model` when
    given), "dpo" or "grpo" (notebook 06: artifacts/<name>, trained at this preset with this
    budget's config, from this `reference` when given).

    Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb
    """
    from rlhf_edu.models import load_model

    if name == "base":
        model, tok = load_model(preset.model_name, device=device)
        return model, tok, {}, f"base: {preset.model_name}, before any fine-tuning"
    if name == "ppo":
        root = policy_dir("ppo")
        state_path = root / "trainer_state.json"
        if not state_path.exists():
            return None, None, None, f"ppo: missing ({state_path} not found; run notebook 04)"
        state = json.loads(state_path.read_text())
        if state.get("config") != jsonable(preset.ppo):
            return None, None, None, f"ppo: the run in {root} used another PPOConfig than the {preset.name} preset's"
        if state.get("step") != preset.ppo.steps:
            return None, None, None, f"ppo: the run in {root} stopped at step {state.get('step')} of {preset.ppo.steps}"
        for what, model in (("reference", reference), ("reward model", reward_model)):
            if model is None:
                continue
            saved = state["fingerprint"][0 if what == "reference" else 1]
            if abs(saved - param_sum(model)) > 1e-6 * max(1.0, abs(saved)):
                return None, None, None, f"ppo: the run in {root} was trained against another {what}"
        model, tok = load_model(str(root / "policy"), device=device)
        return model, tok, state, f"ppo: loaded from {root / 'policy'} ({state['step']} steps)"
    if name not in ("dpo", "grpo"):
        raise ValueError(f"unknown policy {name!r}; choose base, ppo, dpo or grpo")
    root = policy_dir(name)
    info_path = root / "run_info.json"
    if not info_path.exists():
        return None, None, None, f"{name}: missing ({info_path} not found; run notebook 06)"
    info = json.loads(info_path.read_text())
    config = budget.dpo if name == "dpo" else budget.grpo
    if info.get("preset") != preset.name or info.get("config") != jsonable(config):
        return (
            None,
            None,
            None,
            (
                f"{name}: the policy in {root} was trained at preset {info.get('preset')!r} "
                f"or with another config than this budget's"
            ),
        )
    if reference is not None and info.get("reference") not in (None, fingerprint(reference)):
        return None, None, None, f"{name}: the policy in {root} was trained from another SFT policy"
    model, tok = load_model(str(root), device=device)
    return model, tok, info, f"{name}: loaded from {root}"


# --------------------------------------------------------------------------- eval rows, cached


# --------------------------------------------------------------------------- the scoreboard


def scoreboard_row(name: str, rows: list[dict], sft_rows: list[dict] | None = None) -> dict:
    """One line of the scoreboard from a policy's eval rows:

    gold (mean, and gold_se), components (the mean of each rubric component; the rubric's "length"
    is a score in [0, 1], not a token count), rm (mean reward-model score), kl (mean nats
    per response to the SFT policy), length (mean response tokens), eos_rate, perplexity under the
    SFT policy (exp of the token-weighted mean ref_nll) and distinct2 (distinct word bigrams over
    all bigrams of all responses). With `sft_rows` (the same prompts, in order): gold_delta, the
    paired difference to SFT, its standard error gold_diff_se, and gold_z = gold_delta / gold_diff_se.

    Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb
    """
    from rlhf_edu.metrics import mean_and_se, paired_difference
    from rlhf_edu.tradeoffs import distinct_n

    if not rows:
        raise ValueError(f"no eval rows for {name!r}")
    mean = lambda key: sum(float(r[key]) for r in rows) / len(rows)
    gold, gold_se = mean_and_se([r["gold"] for r in rows])
    line = {
        "policy": name,
        "gold": gold,
        "gold_se": gold_se,
        "components": {c: mean(c) for c in COMPONENTS},
        "rm": mean("rm") if all("rm" in r for r in rows) else float("nan"),
        "kl": mean("kl") if all("kl" in r for r in rows) else float("nan"),
        "length": mean("tokens"),
        "eos_rate": mean("eos"),
        "distinct2": distinct_n([r["response"] for r in rows], 2),
    }
    if all("ref_nll" in r for r in rows):
        tokens = sum(r["ref_tokens"] for r in rows)
        line["perplexity"] = math.exp(sum(r["ref_nll"] for r in rows) / max(tokens, 1))
    else:
        line["perplexity"] = float("nan")
    if sft_rows is not None:
        if [r["prompt"] for r in rows] != [r["prompt"] for r in sft_rows]:
            raise ValueError(f"{name!r} and SFT answered different prompts; a paired difference needs the same")
        diff = paired_difference([r["gold"] for r in rows], [r["gold"] for r in sft_rows])
        line["gold_delta"], line["gold_diff_se"], line["gold_z"] = diff["delta"], diff["se"], diff["z"]
    return line


def ab_store_path(names: tuple[str, str], responses_x: list[str], responses_y: list[str]) -> Path:
    """A label file for one A/B comparison, named by the two policies and a digest of their
    responses: the same comparison resumes, a new one starts a new file. Notebook: 07_evaluation.ipynb"""
    from rlhf_edu.store import artifacts_dir

    digest = hashlib.sha256(json.dumps([list(names), responses_x, responses_y]).encode()).hexdigest()[:10]
    return artifacts_dir() / "labels" / f"ab-{names[0]}-vs-{names[1]}-{digest}.jsonl"


# --------------------------------------------------------------------------- the AI judge
