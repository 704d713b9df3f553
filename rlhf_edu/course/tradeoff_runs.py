"""The runs behind notebook 05: a kl_coef sweep, a best-of-n pool, a weak proxy, an online refresh.

Notebook 05 asks one question in several ways: how much gold score does a policy buy per nat of KL
from the SFT policy, and where does optimizing the proxy (the learned reward model) stop helping
the gold (the rubric)? Gao, Schulman and Hilton (2022) answer it with best-of-n and RL runs plotted
against d = sqrt(KL); the math (KL bound, unbiased best-of-n estimator, fits) is in
`rlhf_edu.tradeoffs`. This module only orchestrates, and caches:

- `ppo_run`: train a copy of the SFT policy with PPO at one config, evaluate it every few steps on a
  fixed set of eval prompts (gold, proxy, KL, the rows themselves) and return that trajectory;
- `build_pool` / `score_pool`: N samples per eval prompt from the SFT policy, scored by the rubric
  and by any reward model on the sampled tokens, for every best-of-n curve;
- `sft_eval_rows`, `sft_pool`, `pool_scores`, `weak_proxy`: the notebook's other computations, each
  behind one call that loads its cached result or computes and caches it;
- `train_weak_proxy`: the notebook 03 recipe on a few dozen labels, the proxy that over-optimizes;
- `online_refresh`: label pairs sampled from the PPO policy, fine-tune the reward model on them,
  continue PPO with the stale and the refreshed model from the same checkpoint and seeds.

Every result is a JSON record in `artifacts/tradeoffs/`, keyed by a hash of everything it depends
on (preset, the weights' fingerprints, configs, eval prompts), so a second visit of the notebook
loads the runs instead of training them.

Deliberate choices:
- All sweep runs share one learning-rate schedule of `sweep_steps + refresh_steps` steps and stop
  after `sweep_steps`; the online refresh continues one of them on that same schedule, so the two
  arms of the comparison resume it exactly (`PPOTrainer.load_checkpoint`).
- The refreshed arm is loaded with the stale reward model (the checkpoint checks which model it was
  trained against) and then swapped to the refreshed one (`swap_reward_model`), on purpose.
- A refreshed reward model gets its gain and bias from the fresh responses (mean 0, std 1 on the
  current policy's samples), so the KL penalty weighs the same as before against its scores.

Notebook: 05_reward_kl_tradeoffs.ipynb
"""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlhf_edu.generation import SamplingConfig, encode_prompts, sample
from rlhf_edu.ppo_loop import PPOConfig
from rlhf_edu.ppo_trainer import PPOTrainer
from rlhf_edu.rubric import score_batch
from rlhf_edu.store import RunCache, cache_key, fingerprint

# ---------------------------------------------------------------------------------------- caching


def _get(model_or_factory):
    """A model, or the model a zero-argument function (e.g. a `Lazy`) builds."""
    return model_or_factory if isinstance(model_or_factory, torch.nn.Module) else model_or_factory()


# ---------------------------------------------------------------------------------------- PPO runs


@dataclass
class RunContext:
    """What every run of notebook 05 starts from. The SFT policy is the KL reference of every run
    (frozen, shared); each run trains its own copy. Notebook: 05_reward_kl_tradeoffs.ipynb"""

    sft: torch.nn.Module
    """The SFT policy: the starting point and the KL reference of every run."""
    reward_model: torch.nn.Module
    """The proxy of notebook 03, frozen."""
    tokenizer: object
    """The policy's tokenizer."""
    train_prompts: list[str]
    """PPO's prompts (train concepts); fresh pairs of the online refresh come from them too."""
    eval_prompts: list[str]
    """The fixed prompts every policy is evaluated on (eval concepts)."""
    eval_sampling: SamplingConfig
    """How evaluation answers are sampled (the same for every policy and for the best-of-n pool)."""
    setup: object
    """The `devices.DeviceSetup` (device and autocast dtype)."""
    preset: str
    """The preset's name, part of every cache key."""

    def __post_init__(self):
        from rlhf_edu.course.yardstick import (
            rubric_digest,  # cached rows hold gold scores: a new rubric, new runs
        )

        self.key = cache_key(
            self.preset,
            fingerprint(self.sft),
            self.eval_prompts,
            self.eval_sampling,
            self.setup.dtype_name,
            rubric_digest(),
        )
        self.reward_model_id = fingerprint(self.reward_model)

    def autocast(self):
        from rlhf_edu.devices import autocast

        return autocast(self.setup)


def make_trainer(ctx: RunContext, config: PPOConfig, reward_model=None) -> PPOTrainer:
    """A PPOTrainer on a fresh copy of the SFT policy (reference: the SFT policy itself). It has no
    eval prompts of its own: `train_and_evaluate` evaluates on the context's.
    Notebook: 05_reward_kl_tradeoffs.ipynb"""
    return PPOTrainer(
        copy.deepcopy(ctx.sft),
        ctx.sft,
        reward_model or ctx.reward_model,
        ctx.tokenizer,
        ctx.train_prompts,
        config,
        eval_sampling=ctx.eval_sampling,
        setup=ctx.setup,
    )


def swap_reward_model(trainer: PPOTrainer, reward_model: torch.nn.Module) -> None:
    """Let `trainer` optimize another (frozen) reward model from its next rollout on. A checkpoint
    remembers the reward model it was trained against, so load it first, then swap.
    Notebook: 05_reward_kl_tradeoffs.ipynb"""
    from rlhf_edu.models import disable_dropout

    disable_dropout(reward_model)
    reward_model.eval().requires_grad_(False)
    trainer.reward_model = reward_model


def summarize(step: int, rows: list[dict]) -> dict:
    """One point of a trajectory: the means over the eval rows of KL (nats per response), gold,
    proxy (the reward model's score, `rm`) and length, plus the rows themselves.
    Notebook: 05_reward_kl_tradeoffs.ipynb"""
    mean = lambda key: float(np.mean([r[key] for r in rows]))
    return {
        "step": step,
        "kl": mean("kl"),
        "gold": mean("gold"),
        "proxy": mean("rm"),
        "length": mean("tokens"),
        "rows": rows,
    }


def train_and_evaluate(
    trainer: PPOTrainer,
    steps: int,
    prompts: list[str],
    eval_every: int,
    *,
    initial_rows: list[dict] | None = None,
    progress: bool = True,
    desc: str = "PPO",
) -> list[dict]:
    """Train `trainer` up to `steps` iterations in all, evaluating on `prompts` at its current step
    (or taking `initial_rows` for it), every `eval_every` steps and at the end. Returns the
    trajectory, a list of `summarize` points. Notebook: 05_reward_kl_tradeoffs.ipynb"""
    start_rows = initial_rows if initial_rows is not None else trainer.evaluate_rows(prompts=prompts)
    points = [summarize(trainer.step_count, start_rows)]
    bar = tqdm(total=steps, initial=trainer.step_count, desc=desc, disable=not progress)
    while trainer.step_count < steps:
        trainer.step()
        bar.update(1)
        if trainer.step_count % eval_every == 0 or trainer.step_count == steps:
            points.append(summarize(trainer.step_count, trainer.evaluate_rows(prompts=prompts)))
            bar.set_postfix({"gold": f"{points[-1]['gold']:.3f}", "kl": f"{points[-1]['kl']:.2f}"})
    bar.close()
    return points


def ppo_run(
    ctx: RunContext,
    config: PPOConfig,
    steps: int,
    eval_every: int,
    cache: RunCache,
    *,
    label: str,
    reward_model=None,
    reward_model_id: str | None = None,
    initial_rows: list[dict] | None = None,
    keep_checkpoint: bool = False,
    progress: bool = True,
) -> dict:
    """One PPO run and its trajectory on the eval prompts, from the cache when it was run before.

    `reward_model` (default: the context's) may be a function that builds it, called only when the
    run is not cached; then `reward_model_id` names it in the cache key. `initial_rows` are the SFT
    policy's eval rows when they were computed already (with the same reward model): the step-0
    point. With `keep_checkpoint`, the trainer's state at the end is saved in the cache folder at
    record["checkpoint"] (for `online_refresh`; the path is there either way). The record holds
    `label`, `kl_coef`, `config`, `points` (see `train_and_evaluate`), the per-step `history`.
    Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    rm_id = reward_model_id or ctx.reward_model_id
    key = cache_key(ctx.key, "ppo", config, steps, eval_every, rm_id)
    checkpoint = cache.root / f"checkpoint-{key}"  # written only with keep_checkpoint
    record = cache.load("ppo", key)
    if record is not None:
        return {**record, "checkpoint": str(checkpoint), "cached": True}
    t0 = time.perf_counter()
    trainer = make_trainer(ctx, config, _get(reward_model) if reward_model is not None else None)
    points = train_and_evaluate(
        trainer, steps, ctx.eval_prompts, eval_every, initial_rows=initial_rows, progress=progress, desc=label
    )
    if keep_checkpoint:
        trainer.save_checkpoint(checkpoint)
    record = {
        "label": label,
        "kl_coef": config.kl_coef,
        "config": asdict(config),
        "steps": steps,
        "points": points,
        "history": trainer.history,
        "seconds": time.perf_counter() - t0,
        "checkpoint": str(checkpoint),
    }
    del trainer
    gc.collect()
    return {**cache.save("ppo", key, record), "key": key, "cached": False}


def evaluate_saved_policy(
    ctx: RunContext, checkpoint_dir: str | Path, config: PPOConfig, cache: RunCache
) -> dict | None:
    """Notebook 04's PPO policy (a `PPOTrainer` checkpoint) evaluated on the eval prompts, as a
    record with one point; None when there is no checkpoint, or when it was trained with another
    config, reference or reward model (a printed line says why). Notebook: 05_reward_kl_tradeoffs.ipynb"""
    state = Path(checkpoint_dir) / "trainer_state.json"
    if not state.exists():
        return None
    key = cache_key(ctx.key, "saved", state.read_text(), config, ctx.reward_model_id)
    record = cache.load("saved", key)
    if record is not None:
        return {**record, "cached": True}
    trainer = make_trainer(ctx, config)
    try:
        trainer.load_checkpoint(checkpoint_dir)
    except ValueError as err:
        print(f"not using {checkpoint_dir}: {err}")
        return None
    point = summarize(trainer.step_count, trainer.evaluate_rows(prompts=ctx.eval_prompts))
    record = {
        "label": f"notebook 04 (kl_coef {config.kl_coef}, T {config.sampling.temperature:g}, "
        f"{trainer.step_count} steps)",
        "kl_coef": config.kl_coef,
        "config": asdict(config),
        "points": [point],
    }
    del trainer
    gc.collect()
    return {**cache.save("saved", key, record), "cached": False}


# ---------------------------------------------------------------------------------------- best-of-n pool


def build_pool(
    model, tokenizer, prompts: list[str], sampling: SamplingConfig, pool_size: int, *, seed: int, autocast_ctx=None
) -> dict:
    """`pool_size` samples per prompt from `model`, scored by the rubric.

    Returns {"prompts": [P], "samples": [P][N] of {response, eos, tokens, ids, gold, <components>},
    "proxy": {}}; `ids` are the sampled response tokens (EOS included when it ended by itself), so
    any reward model can score exactly what was sampled (`score_pool`).
    Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    repeated = [p for p in prompts for _ in range(pool_size)]  # P * N, each prompt N times in a row
    samples = sample(
        model, tokenizer, repeated, sampling, generator=torch.Generator().manual_seed(seed), autocast_ctx=autocast_ctx
    )
    eos = samples.has_eos.tolist()
    scored = score_batch(repeated, samples.texts, eos)
    flat = [
        {"response": text, "eos": bool(e), "tokens": int(n), "ids": samples.response_ids[i, : int(n)].tolist(), **s}
        for i, (text, e, n, s) in enumerate(zip(samples.texts, eos, samples.n_tokens, scored))
    ]
    return {
        "prompts": list(prompts),
        "samples": [flat[i : i + pool_size] for i in range(0, len(flat), pool_size)],
        "proxy": {},
    }


@torch.no_grad()
def score_pool(reward_model, tokenizer, pool: dict, batch_size: int = 16, autocast_ctx=None) -> list[list[float]]:
    """The reward model's score of every pooled sample, read from its sampled tokens: [P][N].

    Each batch is rebuilt in the course layout: the chat-formatted prompt left-padded, the response
    ids right-padded, the attention mask 1 on real tokens. Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    import contextlib

    reward_model.eval()
    device = next(reward_model.parameters()).device
    N = len(pool["samples"][0])
    flat = [(p, s["ids"]) for p, row in zip(pool["prompts"], pool["samples"]) for s in row]
    scores = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        prompt_ids, prompt_mask = encode_prompts(tokenizer, [p for p, _ in chunk])  # (b, P) left-padded
        R = max(len(ids) for _, ids in chunk)
        response_ids = torch.full((len(chunk), R), tokenizer.pad_token_id, dtype=torch.long)  # (b, R)
        response_mask = torch.zeros(len(chunk), R, dtype=torch.long)  # (b, R)
        for i, (_, ids) in enumerate(chunk):
            response_ids[i, : len(ids)] = torch.tensor(ids)
            response_mask[i, : len(ids)] = 1
        input_ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)  # (b, P+R)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1).to(device)  # (b, P+R)
        with autocast_ctx or contextlib.nullcontext():
            scores += reward_model(input_ids, attention_mask).float().cpu().tolist()
    return [scores[i : i + N] for i in range(0, len(scores), N)]


# ---------------------------------------------------------------------------------------- cached pieces of notebook 05


def sft_eval_rows(ctx: RunContext, cache: RunCache, seed: int) -> list[dict]:
    """The SFT policy's rows on the eval prompts (gold, proxy, KL), sampled once at `seed`; cached.
    Notebook: 05_reward_kl_tradeoffs.ipynb"""
    from rlhf_edu.metrics import evaluate_policy

    key = cache_key(ctx.key, "sft_rows", seed, ctx.reward_model_id)
    rows = (cache.load("sft_rows", key) or {}).get("rows")
    if rows is None:
        rows = evaluate_policy(
            ctx.sft,
            ctx.tokenizer,
            ctx.eval_prompts,
            ctx.eval_sampling,
            seed=seed,
            autocast_ctx=ctx.autocast(),
            reference=ctx.sft,
            reward_model=ctx.reward_model,
        )
        cache.save("sft_rows", key, {"rows": rows})
    return rows


def sft_pool(ctx: RunContext, cache: RunCache, pool_size: int, seed: int) -> tuple[dict, str, bool]:
    """`build_pool` of the SFT policy on the eval prompts, scored by the main proxy ("main"); cached.
    Returns (pool, its cache key, whether it came from the cache). Notebook: 05_reward_kl_tradeoffs.ipynb"""
    key = cache_key(ctx.key, "pool", pool_size, seed, ctx.reward_model_id)
    pool = cache.load("pool", key)
    if pool is not None:
        return pool, key, True
    pool = build_pool(
        ctx.sft, ctx.tokenizer, ctx.eval_prompts, ctx.eval_sampling, pool_size, seed=seed, autocast_ctx=ctx.autocast()
    )
    pool["proxy"]["main"] = score_pool(
        ctx.reward_model, ctx.tokenizer, pool, ctx.eval_sampling.batch_size, ctx.autocast()
    )
    return cache.save("pool", key, pool), key, False


def pool_scores(ctx: RunContext, cache: RunCache, pool: dict, pool_key: str, reward_model, reward_model_id: str):
    """`score_pool` of another reward model (or a zero-argument function building it, called only
    when the scores are not cached) on a cached pool: [P][N]. Notebook: 05_reward_kl_tradeoffs.ipynb"""
    key = cache_key(pool_key, reward_model_id)
    cached = cache.load("pool_weak", key)
    if cached is None:
        scores = score_pool(_get(reward_model), ctx.tokenizer, pool, ctx.eval_sampling.batch_size, ctx.autocast())
        cached = cache.save("pool_weak", key, {"scores": scores})
    return cached["scores"]


def weak_proxy(ctx: RunContext, cache: RunCache, rows: list[dict], heldout: list[dict], config, seed: int):
    """Notebook 05's weak proxy (`proxies.train_weak_proxy` on `rows`), built only when something needs
    it, and its record {history, accuracy: {weak, main} on `heldout`, n_pairs}, cached.
    Returns (a `Lazy` that builds the model, the record, its cache id). Notebook: 05_reward_kl_tradeoffs.ipynb"""
    from rlhf_edu.course.proxies import train_weak_proxy
    from rlhf_edu.reward import evaluate_reward_model
    from rlhf_edu.store import Lazy

    weak_id = cache_key(ctx.key, "weak", config, seed, rows, heldout)  # the accuracies are on `heldout`
    history = []

    def build():
        model, steps = train_weak_proxy(ctx.sft, ctx.tokenizer, rows, config, seed=seed, setup=ctx.setup)
        history[:] = steps
        return model

    model = Lazy(build)
    record = cache.load("weak", weak_id)
    if record is None:
        with ctx.autocast():
            accuracy = {
                name: evaluate_reward_model(m, ctx.tokenizer, heldout, config)["eval/accuracy"]
                for name, m in (("weak", model()), ("main", ctx.reward_model))
            }
        record = cache.save("weak", weak_id, {"history": history, "accuracy": accuracy, "n_pairs": len(rows)})
    return model, record, weak_id
