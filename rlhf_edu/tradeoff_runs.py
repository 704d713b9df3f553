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
import dataclasses
import gc
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlhf_edu.generation import SamplingConfig, encode_prompts, sample
from rlhf_edu.ppo_loop import PPOConfig
from rlhf_edu.ppo_trainer import PPOTrainer
from rlhf_edu.reward import (
    RewardConfig,
    RewardModel,
    evaluate_reward_model,
    score_texts,
    train_reward_model,
)
from rlhf_edu.rubric import COMPONENTS, score_batch
from rlhf_edu.store import cache_key, fingerprint
from rlhf_edu.tradeoffs import best_of_n, bon_curve


@dataclass(frozen=True)
class TradeoffConfig:
    """The budgets of notebook 05 (one per preset in `TRADEOFFS`)."""

    kl_coefs: tuple[float, ...]
    """kl_coef (beta) of each PPO run of the sweep."""
    ppo: PPOConfig
    """Every PPO run's settings except kl_coef; its `steps` must be sweep_steps + refresh_steps (the
    learning rate decays over both, so the refresh continues a sweep run on its own schedule)."""
    sweep_steps: int
    """PPO steps of each sweep run."""
    eval_every: int
    """Evaluate the policy every this many steps (and at step 0 and the last step)."""
    n_eval: int
    """The fixed eval prompts (the first n eval concepts) every policy and best-of-n answers."""
    pool_size: int
    """Samples per eval prompt in the best-of-n pool (N >= every n)."""
    bon_ns: tuple[int, ...]
    """The n of the best-of-n curve."""
    weak_pairs: int
    """Labeled pairs the weak proxy trains on (notebook 03's reward model used preset.reward_pairs)."""
    weak_reward: RewardConfig
    """Training of the weak proxy."""
    heldout_pairs: int
    """Held-out pairs (eval concepts) on which the weak and the main proxy's accuracy is measured."""
    overopt_kl_coef: float
    """kl_coef of the PPO run against the weak proxy (0: nothing holds the policy back)."""
    overopt_steps: int
    """PPO steps against the weak proxy."""
    overopt_lr: float
    """Learning rate of that run."""
    overopt_eval_every: int
    """Evaluate that run every this many steps (finer than the sweep: its peak is the point)."""
    refresh_kl_coef: float
    """Which sweep run (its kl_coef) the online refresh continues."""
    refresh_pairs: int
    """Fresh pairs sampled from that run's policy (train prompts) and labeled by the annotator."""
    refresh_old_pairs: int
    """Pairs of notebook 03's training data mixed into the fine-tuning (against forgetting)."""
    refresh_reward: RewardConfig
    """Fine-tuning of the refreshed reward model."""
    refresh_steps: int
    """PPO steps each arm (stale, refreshed) continues for."""
    mix_weights: tuple[float, ...]
    """w of the scalarized reward w * brevity + (1 - w) * completeness (section 5)."""
    mix_n: int
    """n of the best-of-n selection with that scalarized reward."""
    seed: int = 0
    """Pool sampling, pair sampling, weak-proxy initialization."""

    def __post_init__(self):
        if self.ppo.steps != self.sweep_steps + self.refresh_steps:
            raise ValueError(
                f"ppo.steps ({self.ppo.steps}) must be sweep_steps + refresh_steps "
                f"({self.sweep_steps} + {self.refresh_steps})"
            )
        if self.refresh_kl_coef not in self.kl_coefs:
            raise ValueError(f"refresh_kl_coef {self.refresh_kl_coef} is not one of the sweep's {self.kl_coefs}")
        if max(self.bon_ns) > self.pool_size or self.mix_n > self.pool_size or min(self.bon_ns) < 1:
            raise ValueError(
                f"every n (bon_ns {self.bon_ns}, mix_n {self.mix_n}) must be in 1..pool_size ({self.pool_size})"
            )
        if min(self.eval_every, self.overopt_eval_every, self.sweep_steps, self.overopt_steps) < 1 or self.n_eval < 2:
            raise ValueError("eval_every, overopt_eval_every, sweep_steps and overopt_steps must be >= 1, n_eval >= 2")

    def sweep_config(self, kl_coef: float) -> PPOConfig:
        """The PPO config of the sweep run at `kl_coef`."""
        return dataclasses.replace(self.ppo, kl_coef=kl_coef)

    def overopt_config(self) -> PPOConfig:
        """The PPO config of the run against the weak proxy."""
        return dataclasses.replace(self.ppo, kl_coef=self.overopt_kl_coef, lr=self.overopt_lr, steps=self.overopt_steps)


# Budgets per preset. Seconds are estimates for a 2-core laptop (cpu preset) from measured unit
# costs: a PPO step at batch 16 with 2 epochs ~17 s (23 s with 4), sampling 64 tokens ~0.25 s per
# sample, scoring one sequence with a reward model ~0.08 s, a reward-model step of 8 pairs ~6 s.
TRADEOFFS: dict[str, TradeoffConfig] = {
    "smoke": TradeoffConfig(
        kl_coefs=(0.01, 0.1, 0.5),
        ppo=PPOConfig(
            steps=3,
            batch_size=4,
            mini_batch_size=2,
            micro_batch_size=2,
            ppo_epochs=1,
            lr=1e-4,
            sampling=SamplingConfig(16, 0.7, 4),
            trainable_layers=2,
        ),
        sweep_steps=2,
        eval_every=1,
        n_eval=4,
        pool_size=4,
        bon_ns=(1, 2, 4),
        weak_pairs=8,
        weak_reward=RewardConfig(lr=3e-5, batch_size=4, max_steps=2),
        heldout_pairs=4,
        overopt_kl_coef=0.0,
        overopt_steps=2,
        overopt_lr=5e-4,
        overopt_eval_every=1,
        refresh_kl_coef=0.1,
        refresh_pairs=8,
        refresh_old_pairs=4,
        refresh_reward=RewardConfig(lr=3e-5, batch_size=4, max_steps=2),
        refresh_steps=1,
        mix_weights=(0.0, 0.5, 1.0),
        mix_n=4,
    ),
    # cpu: a first visit measured 1,005 s on the course's 2-core machine (SFT evaluated 22 s, sweep
    # runs 121 / 125 / 129 s, pool 193 s, over-optimization run 137 s, refresh 162 s). The
    # estimates it was planned with (an evaluation on the 28 eval prompts is about
    # 7 s of sampling plus 7 s of policy, reference and RM forwards; a PPO step at batch 16 with 2
    # epochs about 14 s with the frozen trunk of rlhf_edu.trunk, 17 s without):
    #   load models and fingerprints 10 s; the SFT policy evaluated 14 s; notebook 04's run, if
    #   present, loaded and evaluated 17 s;                                                 41 s
    #   sweep: 3 runs x (6 steps x 14 s + 2 evaluations x 14 s), one checkpoint 5 s:       341 s
    #   best-of-n pool: 28 prompts x 16 samples = 448 x 0.25 s, scored by the RM 36 s:     148 s
    #   weak proxy: 6 RM steps x 6 s, normalization 8 s, held-out accuracy of both RMs
    #   on 32 pairs 10 s, scoring the pool 36 s:                                            90 s
    #   over-optimization run: SFT with the weak proxy 14 s + 6 x 14 s + 3 x 14 s:         140 s
    #   online refresh: load 3 s, 64 samples 16 s, stale accuracy 5 s, 6 RM steps 36 s,
    #   normalization 5 s, 2 arms x (load 3 s + 2 x 14 s + 14 s):                          152 s
    #   multi-objective, fits, plots, explorer:                                             10 s
    # A second visit loads every run from artifacts/tradeoffs/: about 15 s.
    "cpu": TradeoffConfig(
        kl_coefs=(0.01, 0.1, 0.5),
        ppo=PPOConfig(
            steps=8,
            batch_size=16,
            mini_batch_size=8,
            micro_batch_size=8,
            ppo_epochs=2,
            lr=1e-4,
            sampling=SamplingConfig(64, 0.7, 16),
            trainable_layers=8,
        ),
        sweep_steps=6,
        eval_every=3,
        n_eval=28,
        pool_size=16,
        bon_ns=(1, 2, 4, 8, 16),
        weak_pairs=48,
        weak_reward=RewardConfig(lr=1e-4, batch_size=8, warmup_steps=1),
        heldout_pairs=32,
        overopt_kl_coef=0.0,
        overopt_steps=6,
        overopt_lr=2e-4,
        overopt_eval_every=2,
        refresh_kl_coef=0.1,
        refresh_pairs=32,
        refresh_old_pairs=16,
        refresh_reward=RewardConfig(lr=5e-5, batch_size=8),
        refresh_steps=2,
        mix_weights=(0.0, 0.25, 0.5, 0.75, 1.0),
        mix_n=16,
    ),
    # gpu (Colab T4): not timed on a T4. On the H200 of bench/gpu.py a PPO step at batch 64 with 4
    # epochs takes 4 s; a T4 is several times slower: 4 runs x 16 steps plus 16 weak-proxy steps and
    # 2 x 4 refresh steps are 88 steps.
    "gpu": TradeoffConfig(
        kl_coefs=(0.01, 0.05, 0.2, 0.5),
        ppo=PPOConfig(
            steps=20,
            batch_size=64,
            mini_batch_size=16,
            micro_batch_size=16,
            ppo_epochs=2,
            lr=2e-5,
            sampling=SamplingConfig(64, 0.7, 64),
        ),
        sweep_steps=16,
        eval_every=4,
        n_eval=64,
        pool_size=32,
        bon_ns=(1, 2, 4, 8, 16, 32),
        weak_pairs=64,
        weak_reward=RewardConfig(lr=2e-5, batch_size=16),
        heldout_pairs=128,
        overopt_kl_coef=0.0,
        overopt_steps=16,
        overopt_lr=5e-5,
        overopt_eval_every=4,
        refresh_kl_coef=0.05,
        refresh_pairs=128,
        refresh_old_pairs=128,
        refresh_reward=RewardConfig(lr=1e-5, batch_size=16),
        refresh_steps=4,
        mix_weights=(0.0, 0.25, 0.5, 0.75, 1.0),
        mix_n=32,
    ),
}


def tradeoff_config(preset: str) -> TradeoffConfig:
    """The notebook-05 budgets of a preset (`smoke`, `cpu` or `gpu`). Notebook: 05_reward_kl_tradeoffs.ipynb"""
    if preset not in TRADEOFFS:
        raise ValueError(f"no tradeoff budgets for preset {preset!r}; choose one of {sorted(TRADEOFFS)}")
    return TRADEOFFS[preset]


# ---------------------------------------------------------------------------------------- caching


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
    """The `models.DeviceSetup` (device and autocast dtype)."""
    preset: str
    """The preset's name, part of every cache key."""

    def __post_init__(self):
        from rlhf_edu.yardstick import (
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
        from rlhf_edu.models import autocast

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


def pool_array(pool: dict, key: str) -> np.ndarray:
    """(P, N) array of one field of the pool: "gold", a rubric component, "tokens", or a proxy name.

    Notebook: 05_reward_kl_tradeoffs.ipynb"""
    if key in pool["proxy"]:
        return np.array(pool["proxy"][key], dtype=float)
    return np.array([[float(s[key]) for s in row] for row in pool["samples"]])


# ---------------------------------------------------------------------------------------- explorer entries


def _sample_view(prompt: str, row: dict, proxy: float) -> dict:
    return {
        "prompt": prompt,
        "response": row["response"],
        "gold": row["gold"],
        "proxy": proxy,
        "components": {c: row[c] for c in COMPONENTS},
    }


def ppo_entries(
    record: dict, method: str, gold_units: tuple[float, float], proxy_units: tuple[float, float]
) -> list[dict]:
    """FrontierExplorer entries, one per evaluated checkpoint of a PPO run. Gold and proxy are given
    as (value - mean) / sd with the (mean, sd) of `gold_units` and `proxy_units` (e.g. of the SFT
    policy's samples); the sample table keeps the raw scores. Notebook: 05_reward_kl_tradeoffs.ipynb"""
    out = []
    for point in record["points"]:
        out.append(
            {
                "label": f"{record['label']}, step {point['step']}",
                "method": method,
                "kl_coef": record["kl_coef"],
                "kl": max(point["kl"], 0.0),
                "gold": (point["gold"] - gold_units[0]) / gold_units[1],
                "proxy": (point["proxy"] - proxy_units[0]) / proxy_units[1],
                "samples": [_sample_view(r["prompt"], r, r["rm"]) for r in point["rows"]],
            }
        )
    return out


def bon_entries(
    pool: dict, proxy: str, ns, method: str, gold_units: tuple[float, float], proxy_units: tuple[float, float]
) -> list[dict]:
    """FrontierExplorer entries, one per n: KL is the analytic bound, gold and proxy the unbiased
    best-of-n estimates (`bon_curve`, in the units as in `ppo_entries`), and the samples are the ones
    best-of-n picks among the first n of each prompt's pool. Notebook: 05_reward_kl_tradeoffs.ipynb"""
    scores = pool_array(pool, proxy)  # (P, N)
    curve = bon_curve(pool_array(pool, "gold"), scores, ns)
    out = []
    for i, n in enumerate(curve["n"]):
        picks = best_of_n(scores, int(n))  # (P,)
        out.append(
            {
                "label": f"best-of-{n} ({proxy} proxy)",
                "method": method,
                "n": int(n),
                "kl": float(curve["kl"][i]),
                "gold": (float(curve["gold"][i]) - gold_units[0]) / gold_units[1],
                "proxy": (float(curve["proxy"][i]) - proxy_units[0]) / proxy_units[1],
                "samples": [
                    _sample_view(p, pool["samples"][j][k], scores[j, k])
                    for j, (p, k) in enumerate(zip(pool["prompts"], picks.tolist()))
                ],
            }
        )
    return out


# ---------------------------------------------------------------------------------------- reward models


def _normalize_on(reward_model, tokenizer, rows: list[dict], autocast_ctx=None) -> None:
    """Gain and bias so that both responses of `rows` score mean 0, std 1 (rows: preference rows)."""
    import contextlib

    prompts = [r["prompt"] for r in rows] * 2
    texts = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    eos = [r.get("chosen_eos", True) for r in rows] + [r.get("rejected_eos", True) for r in rows]
    with autocast_ctx or contextlib.nullcontext():
        raw = score_texts(reward_model, tokenizer, prompts, texts, raw=True, eos=eos)  # (2B,)
    reward_model.set_normalization(raw)


def train_weak_proxy(
    sft, tokenizer, rows: list[dict], config: RewardConfig, *, seed: int, setup, progress: bool = True
) -> tuple[RewardModel, list[dict]]:
    """Notebook 03's recipe on only `rows`: a reward model on a copy of the SFT backbone, trained
    on the pairs, its gain and bias set so that the responses it trained on score mean 0, std 1.
    Returns (reward model, training history). Notebook: 05_reward_kl_tradeoffs.ipynb"""
    from rlhf_edu.models import autocast

    torch.manual_seed(seed)
    reward_model = RewardModel.from_causal_lm(copy.deepcopy(sft))
    history = train_reward_model(reward_model, tokenizer, rows, [], config, setup=setup, progress=progress)
    _normalize_on(reward_model, tokenizer, rows, autocast(setup))
    reward_model.eval().requires_grad_(False)
    return reward_model, history


def label_fresh_pairs(
    policy, tokenizer, prompts: list[str], sampling: SamplingConfig, annotator, *, seed: int, autocast_ctx=None
) -> list[dict]:
    """Two samples per prompt from `policy` (`preferences.sample_pairs`), each pair labeled by the
    annotator ("0", "1" or "tie"). Notebook: 05_reward_kl_tradeoffs.ipynb"""
    from rlhf_edu.preferences import label_pair, sample_pairs

    pairs = sample_pairs(policy, tokenizer, prompts, sampling, seed=seed, autocast_ctx=autocast_ctx, id_prefix="fresh")
    for pair in pairs:
        pair["label"] = label_pair(pair, annotator)
    return pairs


def refresh_reward_model(
    stale,
    tokenizer,
    fresh_rows: list[dict],
    old_rows: list[dict],
    config: RewardConfig,
    *,
    seed: int,
    setup,
    progress: bool = True,
) -> tuple[RewardModel, list[dict]]:
    """A copy of the `stale` reward model fine-tuned on fresh pairs plus some old ones, its gain and
    bias set on the fresh responses. Returns (refreshed model, history). The stale one is untouched.
    Notebook: 05_reward_kl_tradeoffs.ipynb"""
    from rlhf_edu.models import autocast

    refreshed = copy.deepcopy(stale)
    rows = list(fresh_rows) + list(old_rows)
    random.Random(seed).shuffle(rows)
    history = train_reward_model(
        refreshed, tokenizer, rows, [], dataclasses.replace(config, seed=seed), setup=setup, progress=progress
    )
    _normalize_on(refreshed, tokenizer, fresh_rows, autocast(setup))
    refreshed.eval().requires_grad_(False)
    return refreshed, history


def online_refresh(
    ctx: RunContext,
    tc: TradeoffConfig,
    base: dict,
    cache: RunCache,
    *,
    old_rows: list[dict],
    annotator,
    progress: bool = True,
) -> dict:
    """Continue the sweep run `base` (at tc.refresh_kl_coef) for tc.refresh_steps more steps twice,
    from the same checkpoint and seeds: against the stale reward model, and against a refreshed
    one fine-tuned on pairs sampled from the base policy and labeled by `annotator`.

    The base run's checkpoint (`ppo_run(..., keep_checkpoint=True)`) is re-made by training the
    base run again when it is missing (training is deterministic on a CPU) and deleted once the
    record is saved. Returns {pairs, reward_history,
    accuracy: {stale, refreshed} on the fresh pairs, arms: {stale, refreshed}: {points, history}}.
    Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    key = cache_key(
        base["key"],
        "refresh",
        tc.refresh_pairs,
        tc.refresh_reward,
        tc.refresh_steps,
        tc.seed,
        annotator.config,
        old_rows,
    )
    record = cache.load("refresh", key)
    if record is not None:
        return {**record, "cached": True}
    from rlhf_edu.preferences import to_preference_rows

    t0 = time.perf_counter()
    config = tc.sweep_config(tc.refresh_kl_coef)
    checkpoint_dir = Path(base["checkpoint"])
    trainer = make_trainer(ctx, config)
    if (checkpoint_dir / "trainer_state.json").exists():
        trainer.load_checkpoint(checkpoint_dir)
    else:
        trainer.train(steps=tc.sweep_steps, progress=progress)
        trainer.save_checkpoint(checkpoint_dir)
    # 1. Fresh pairs from the current policy, labeled by the annotator.
    prompts = random.Random(tc.seed).sample(ctx.train_prompts, tc.refresh_pairs)
    pairs = label_fresh_pairs(
        trainer.policy,
        ctx.tokenizer,
        prompts,
        config.sampling,
        annotator,
        seed=tc.seed + 1,
        autocast_ctx=ctx.autocast(),
    )
    fresh = to_preference_rows(pairs)
    if not fresh:
        raise ValueError(f"the annotator called all {len(pairs)} fresh pairs a tie; raise refresh_pairs")
    del trainer
    gc.collect()
    # 2. How well the stale model judges them; the refreshed model, fine-tuned on them.
    with ctx.autocast():
        stale_acc = evaluate_reward_model(ctx.reward_model, ctx.tokenizer, fresh, tc.refresh_reward)["eval/accuracy"]
    refreshed, history = refresh_reward_model(
        ctx.reward_model,
        ctx.tokenizer,
        fresh,
        old_rows,
        tc.refresh_reward,
        seed=tc.seed,
        setup=ctx.setup,
        progress=progress,
    )
    with ctx.autocast():
        fresh_acc = evaluate_reward_model(refreshed, ctx.tokenizer, fresh, tc.refresh_reward)["eval/accuracy"]
    # 3. Two arms from the same checkpoint, the same prompts and the same random draws.
    arms = {}
    for name in ("stale", "refreshed"):
        trainer = make_trainer(ctx, config)
        trainer.load_checkpoint(checkpoint_dir)  # checked against the stale model it was trained with
        if name == "refreshed":
            swap_reward_model(trainer, refreshed)
        points = train_and_evaluate(
            trainer,
            config.steps,
            ctx.eval_prompts,
            tc.refresh_steps,
            initial_rows=base["points"][-1]["rows"],
            progress=progress,
            desc=f"PPO, {name} RM",
        )
        arms[name] = {"points": points, "history": trainer.history[tc.sweep_steps :]}
        del trainer
        gc.collect()
    record = {
        "pairs": pairs,
        "n_fresh_rows": len(fresh),
        "n_old_rows": len(old_rows),
        "reward_history": history,
        "accuracy": {"stale": stale_acc, "refreshed": fresh_acc},
        "arms": arms,
        "seconds": time.perf_counter() - t0,
    }
    cache.save("refresh", key, record)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return {**record, "key": key, "cached": False}
