"""A policy's eval rows, computed once and cached: the rows the yardstick (`rlhf_edu.course.yardstick`)
and the scoreboard of notebooks 06 and 07 are built from.

`policy_eval_rows` samples one answer per eval prompt and scores it (`score_samples`): gold and its
components, the reward model's score, the KL to the reference and the reference's perplexity. Rows
are cached in `artifacts/eval_rows/<policy>.json`, keyed by the preset, the eval settings and the
fingerprints of every model involved, so notebook 07 reuses what notebook 06 sampled.

Deliberate choices:
- Rows are scored on the sampled tokens, by `score_samples`, the one scorer of the course
  (`metrics.evaluate_policy` uses it too); one reference forward pass gives both the KL (logits /
  temperature) and the perplexity (temperature 1).
- Best-of-n has no per-sample KL estimate: its rows carry the analytic bound log n - (n - 1)/n
  (Gao et al. 2022; `tradeoffs.bon_kl_bound`), an upper bound on KL(pi_bon || pi_sft).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf_edu.generation import Samples, SamplingConfig, sample
from rlhf_edu.logprobs import (
    masked_sum,
    per_token_logps,
    response_logits,
    selective_log_softmax,
)
from rlhf_edu.rubric import score_batch
from rlhf_edu.store import cache_key, fingerprint, jsonable

CACHE_VERSION = 3


EVAL_ROWS_DIR = "eval_rows"


def score_samples(
    samples: Samples,
    prompts: list[str],
    *,
    reference=None,
    reward_model=None,
    policy=None,
    temperature: float,
    batch_size: int = 16,
    autocast_ctx=None,
) -> list[dict]:
    """Rows {prompt, response, tokens, eos, gold, <components>, rm, kl, ref_nll, ref_tokens} for
    sampled responses, scored on the sampled tokens themselves.

    - gold and its components: the rubric (`rubric.score_batch`);
    - rm: the reward model's score (when `reward_model` is given);
    - kl: sum over the response of log pi(y_t) - log pi_ref(y_t), both from logits / temperature,
      the k1 estimate of KL(pi || ref) in nats per response (when `policy` is given);
    - ref_nll: - sum of log pi_ref(y_t) at temperature 1 over the response (and its EOS), and
      ref_tokens its token count: perplexity = exp(sum ref_nll / sum ref_tokens).

    `metrics.evaluate_policy` is `generation.sample` then this; the reference's one forward pass
    serves both the KL and the perplexity. Without a reference, no kl and no ref_nll.
    `batch_size` answers go through each forward pass: the reference's logits over the whole
    vocabulary (b x R x V floats, in several copies) bound the memory, so callers keep this batch
    small whatever batch the sampler used.
    Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb (through `rlhf_edu.course.yardstick`)
    """
    scored = score_batch(prompts, samples.texts, samples.has_eos.tolist())
    rows = [
        {"prompt": p, "response": r, "tokens": int(n), "eos": bool(e), **s}
        for p, r, n, e, s in zip(prompts, samples.texts, samples.n_tokens, samples.has_eos, scored)
    ]
    models = [m for m in (reference, reward_model) if m is not None]
    if not models:
        return rows
    device = next(models[0].parameters()).device
    ctx = autocast_ctx or contextlib.nullcontext()
    P = samples.context_length
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids = samples.input_ids[start : start + batch_size].to(device)  # (b, P+R)
        mask = samples.attention_mask[start : start + batch_size].to(device)  # (b, P+R)
        response_mask = samples.response_mask[start : start + batch_size].to(device).float()  # (b, R)
        labels = ids[:, P:]  # (b, R) the sampled response tokens
        with torch.no_grad(), ctx:
            if reference is not None:
                ref_logits = response_logits(reference, ids, mask, P).float()  # (b, R, V)
                ref_logps_t = selective_log_softmax(ref_logits / temperature, labels)  # (b, R) as sampled
                ref_logps_1 = selective_log_softmax(ref_logits, labels)  # (b, R) the reference itself
                del ref_logits
                nll = -masked_sum(ref_logps_1, response_mask, dim=1)  # (b,)
                for row, value, n in zip(chunk, nll.tolist(), response_mask.sum(dim=1).tolist()):
                    row["ref_nll"], row["ref_tokens"] = value, int(n)
                if policy is not None:
                    logps = per_token_logps(policy, ids, mask, P, temperature)  # (b, R)
                    kl = masked_sum(logps - ref_logps_t, response_mask, dim=1)  # (b,)
                    for row, value in zip(chunk, kl.tolist()):
                        row["kl"] = value
            if reward_model is not None:
                for row, value in zip(chunk, reward_model(ids, mask).float().tolist()):
                    row["rm"] = value
    return rows


def _prompts_digest(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


def eval_cache_path(name: str) -> Path:
    """artifacts/eval_rows/<name>.json"""
    from rlhf_edu.store import artifacts_dir

    return artifacts_dir() / EVAL_ROWS_DIR / f"{name}.json"


def cached_rows(name: str, settings: dict, compute, *, refresh: bool = False) -> tuple[list[dict], str]:
    """Rows from artifacts/eval_rows/<name>.json when its key equals `settings`' key, else
    `compute()` now and saved there. Returns (rows, message). Notebooks: 06, 07"""
    from rlhf_edu.store import write_json

    path, key = eval_cache_path(name), cache_key(settings)
    if path.exists() and not refresh:
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["rows"], f"{name}: {len(stored['rows'])} eval rows from {path}"
    t0 = time.perf_counter()
    rows = compute()
    seconds = time.perf_counter() - t0
    write_json(path, {"key": key, "settings": jsonable(settings), "seconds": round(seconds, 1), "rows": rows})
    return rows, f"{name}: sampled and scored {len(rows)} eval rows in {seconds:.0f} s (saved to {path})"


@dataclass(frozen=True)
class EvalSpec:
    """What an evaluation holds fixed for every policy it compares: the prompts, how one answer per
    prompt is sampled, the seed and the preset. `extra` joins the cache key (the yardstick puts the
    dtype and the rubric's digest there); `autocast_ctx` is how the models run, not part of the key."""

    prompts: list[str]
    sampling: SamplingConfig
    preset_name: str
    seed: int
    autocast_ctx: object = None
    extra: dict = field(default_factory=dict)


def eval_settings(name: str, spec: EvalSpec, models: dict[str, torch.nn.Module], **more) -> dict:
    """Everything the eval rows of policy `name` depend on, for `cached_rows`: the preset, the
    prompts, the sampling settings, the seed and the fingerprint of each model involved."""
    return {
        "version": CACHE_VERSION,
        "policy": name,
        "preset": spec.preset_name,
        "n_prompts": len(spec.prompts),
        "prompts": _prompts_digest(spec.prompts),
        "sampling": spec.sampling,
        "seed": spec.seed,
        "models": {k: fingerprint(m) for k, m in models.items() if m is not None},
        **spec.extra,
        **more,
    }


def policy_eval_rows(
    name: str, model, tokenizer, spec: EvalSpec, *, reference, reward_model, refresh: bool = False
) -> tuple[list[dict], str]:
    """One response per prompt from `model`, drawn as `metrics.evaluate_policy` draws it (the same
    seed for every policy), scored by `score_samples`; cached in artifacts/eval_rows/<name>.json.
    Returns (rows, message). Notebooks: 06_dpo_grpo.ipynb, 07_evaluation.ipynb
    """
    models = {"policy": model, "reference": reference, "reward_model": reward_model}

    def compute():
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(spec.seed)
        samples = sample(
            model, tokenizer, spec.prompts, spec.sampling, generator=generator, autocast_ctx=spec.autocast_ctx
        )
        rows = score_samples(
            samples,
            spec.prompts,
            reference=reference,
            reward_model=reward_model,
            policy=model,
            temperature=spec.sampling.temperature,
            autocast_ctx=spec.autocast_ctx,
        )
        model.train(was_training)
        return rows

    return cached_rows(name, eval_settings(name, spec, models), compute, refresh=refresh)


@torch.no_grad()
def best_of_n_rows(
    policy,
    tokenizer,
    prompts: list[str],
    sampling: SamplingConfig,
    n: int,
    reward_model,
    *,
    reference=None,
    seed: int,
    autocast_ctx=None,
) -> list[dict]:
    """Best-of-n: n samples of `policy` per prompt, the reward model keeps the highest-scoring one.

    Rows as `score_samples`' for the kept samples (ref_nll under `reference`, default `policy`),
    with `rm` the kept score, `pool_rm` all n scores, and `kl` the analytic bound
    log n - (n - 1)/n for every row. Notebook: 07_evaluation.ipynb
    """
    from rlhf_edu.tradeoffs import best_of_n, bon_kl_bound

    repeated = [p for p in prompts for _ in range(n)]  # prompt-major: rows i*n .. i*n+n-1 answer prompt i
    pool = sample(
        policy, tokenizer, repeated, sampling, generator=torch.Generator().manual_seed(seed), autocast_ctx=autocast_ctx
    )
    device = next(reward_model.parameters()).device
    scores = []
    for start in range(0, len(repeated), sampling.batch_size):
        ids = pool.input_ids[start : start + sampling.batch_size].to(device)  # (b, P+R)
        mask = pool.attention_mask[start : start + sampling.batch_size].to(device)  # (b, P+R)
        with autocast_ctx or contextlib.nullcontext():
            scores.append(reward_model(ids, mask).float().cpu())  # (b,) the sampled tokens, as in training
    pool_scores = torch.cat(scores).view(len(prompts), n)  # (G, n)
    keep = best_of_n(pool_scores.numpy(), n)  # (G,) index within each prompt's n
    picked = torch.tensor([i * n + int(k) for i, k in enumerate(keep)])  # (G,) rows of the pool
    kept = Samples(
        pool.prompt_ids[picked],
        pool.prompt_mask[picked],
        pool.response_ids[picked],
        pool.response_mask[picked],
        pool.logps[picked],
        pool.has_eos[picked],
        [pool.texts[int(j)] for j in picked],
    )
    rows = score_samples(
        kept,
        prompts,
        reference=reference if reference is not None else policy,
        temperature=sampling.temperature,
        autocast_ctx=autocast_ctx,
    )
    kl = float(bon_kl_bound(n))
    for i, row in enumerate(rows):
        row.update(rm=float(pool_scores[i, keep[i]]), pool_rm=pool_scores[i].tolist(), kl=kl)
    return rows


def best_of_n_eval_rows(
    policy, tokenizer, spec: EvalSpec, n: int, *, reference, reward_model, refresh: bool = False
) -> tuple[list[dict], str]:
    """`best_of_n_rows`, cached in artifacts/eval_rows/best_of_n.json (the key holds n).
    Notebook: 07_evaluation.ipynb"""
    models = {"policy": policy, "reference": reference, "reward_model": reward_model}

    def compute():
        return best_of_n_rows(
            policy,
            tokenizer,
            spec.prompts,
            spec.sampling,
            n,
            reward_model,
            reference=reference,
            seed=spec.seed,
            autocast_ctx=spec.autocast_ctx,
        )

    return cached_rows("best_of_n", eval_settings("best_of_n", spec, models, n=n), compute, refresh=refresh)
