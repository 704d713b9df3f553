"""The reward models of notebook 05 beside the main one: a weak proxy trained on few labels (the
over-optimization run games it), and the online refresh, which labels fresh pairs from the policy
being trained, fine-tunes the reward model on them and continues PPO against it (InstructGPT and
Bai et al. 2022 retrained their reward models on the current policy's samples for this reason).

Notebook: 05_reward_kl_tradeoffs.ipynb
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import random
import shutil
import time
from pathlib import Path

import torch

from rlhf_edu.budgets import TradeoffConfig
from rlhf_edu.course.tradeoff_runs import RunContext, make_trainer, swap_reward_model, train_and_evaluate
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.reward import RewardConfig, RewardModel, evaluate_reward_model, score_texts
from rlhf_edu.reward_training import train_reward_model
from rlhf_edu.store import RunCache, cache_key


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
    from rlhf_edu.devices import autocast

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
    from rlhf_edu.devices import autocast

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
