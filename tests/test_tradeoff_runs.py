"""Notebook 05's orchestration (rlhf_edu.course.tradeoff_runs) on tiny random models: the per-preset
budgets, cache keys and records, PPO trajectories, the best-of-n pool scored on its own sampled
tokens, explorer entries, the weak proxy's normalization, and the online refresh's paired arms."""

import copy
import math

import numpy as np
import pytest
import torch

from rlhf_edu import explorer, store
from rlhf_edu.budgets import TradeoffConfig
from rlhf_edu.course import proxies
from rlhf_edu.course import tradeoff_runs as tr
from rlhf_edu.devices import device_setup
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.metrics import evaluate_policy
from rlhf_edu.models import tiny_model_and_tokenizer
from rlhf_edu.ppo_loop import PPOConfig
from rlhf_edu.presets import get_preset
from rlhf_edu.reward import RewardConfig, RewardModel, score_texts
from rlhf_edu.rubric import COMPONENTS
from rlhf_edu.tradeoffs import bon_curve, bon_kl_bound, pool_array

CPU = device_setup("cpu")  # this CPU's dtype rule, or RLHF_EDU_DTYPE


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny models have nothing to split between threads: one is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SAMPLING = SamplingConfig(10, 1.0, 4)
EVAL = [f"Explain {c} to a 10-year-old." for c in ("rain", "gravity", "a volcano", "money")]
TRAIN = [
    f"Explain {c} to a 10-year-old." for c in ("snow", "wind", "trees", "the sun", "bees", "clocks", "maps", "boats")
]


def context(seed: int = 0) -> tr.RunContext:
    sft, tok = tiny_model_and_tokenizer("llama", seed=seed)
    torch.manual_seed(seed)
    rm = RewardModel.from_causal_lm(tiny_model_and_tokenizer("llama", seed=seed + 1)[0])
    return tr.RunContext(
        sft=sft,
        reward_model=rm,
        tokenizer=tok,
        train_prompts=TRAIN,
        eval_prompts=EVAL,
        eval_sampling=SAMPLING,
        setup=CPU,
        preset="test",
    )


def tiny_ppo(**overrides) -> PPOConfig:
    base = {
        "steps": 3,
        "batch_size": 4,
        "mini_batch_size": 2,
        "micro_batch_size": 2,
        "ppo_epochs": 1,
        "lr": 3e-3,
        "sampling": SAMPLING,
        "kl_coef": 0.05,
    }
    return PPOConfig(**{**base, **overrides})


def tiny_tradeoffs(**overrides) -> TradeoffConfig:
    base = {
        "kl_coefs": (0.01, 0.1, 0.5),
        "ppo": tiny_ppo(steps=3),
        "sweep_steps": 2,
        "eval_every": 1,
        "n_eval": 4,
        "pool_size": 4,
        "bon_ns": (1, 2, 4),
        "weak_pairs": 4,
        "weak_reward": RewardConfig(lr=1e-3, batch_size=2, max_steps=2),
        "heldout_pairs": 2,
        "overopt_kl_coef": 0.0,
        "overopt_steps": 2,
        "overopt_lr": 3e-3,
        "overopt_eval_every": 1,
        "refresh_kl_coef": 0.1,
        "refresh_pairs": 4,
        "refresh_old_pairs": 2,
        "refresh_reward": RewardConfig(lr=1e-3, batch_size=2, max_steps=2),
        "refresh_steps": 1,
        "mix_weights": (0.0, 1.0),
        "mix_n": 2,
    }
    return TradeoffConfig(**{**base, **overrides})


ROWS = [  # preference rows short enough for the character-level tiny tokenizer
    {
        "prompt": EVAL[0],
        "chosen": "Rain is water. It falls.",
        "rejected": "no",
        "chosen_eos": True,
        "rejected_eos": False,
    },
    {
        "prompt": EVAL[1],
        "chosen": "Things fall down.",
        "rejected": "gravity gravity",
        "chosen_eos": True,
        "rejected_eos": True,
    },
    {"prompt": EVAL[2], "chosen": "A hill that erupts.", "rejected": "boom", "chosen_eos": True, "rejected_eos": False},
    {"prompt": EVAL[3], "chosen": "You trade it.", "rejected": "dumb", "chosen_eos": True, "rejected_eos": True},
]


# ---------------------------------------------------------------- budgets


def test_every_preset_has_consistent_budgets():
    from rlhf_edu.presets import PRESETS

    for name, preset in PRESETS.items():
        tc = get_preset(name).tradeoffs
        assert len(tc.kl_coefs) >= 3 and tc.refresh_kl_coef in tc.kl_coefs
        assert tc.ppo.steps == tc.sweep_steps + tc.refresh_steps
        assert max(tc.bon_ns) <= tc.pool_size and tc.mix_n <= tc.pool_size and tc.n_eval <= preset.n_eval
        # PPO's KL and best-of-n's are measured at the same sampling temperature and token budget
        assert tc.ppo.sampling.temperature == preset.eval_sampling.temperature
        assert tc.ppo.sampling.max_new_tokens == preset.eval_sampling.max_new_tokens
        assert tc.sweep_config(0.5).kl_coef == 0.5 and tc.sweep_config(0.5).steps == tc.ppo.steps
        overopt = tc.overopt_config()
        assert (overopt.kl_coef, overopt.lr, overopt.steps) == (tc.overopt_kl_coef, tc.overopt_lr, tc.overopt_steps)
    smoke, cpu = get_preset("smoke").tradeoffs, get_preset("cpu").tradeoffs
    assert smoke.ppo.steps <= 3 and smoke.n_eval <= 4 and max(smoke.bon_ns) <= 4
    assert (cpu.n_eval, cpu.pool_size, cpu.ppo.batch_size, cpu.ppo.ppo_epochs, cpu.weak_pairs) == (28, 16, 16, 2, 48)
    # the over-optimization run is evaluated at least 3 times after step 0, so a peak can come before its end
    for tc in (cpu, get_preset("gpu").tradeoffs):
        assert tc.overopt_steps // tc.overopt_eval_every >= 3 and tc.sweep_steps // tc.eval_every >= 2


def test_inconsistent_budgets_are_refused():
    with pytest.raises(ValueError, match="refresh_kl_coef"):
        tiny_tradeoffs(refresh_kl_coef=0.2)
    with pytest.raises(ValueError, match="sweep_steps \\+ refresh_steps"):
        tiny_tradeoffs(sweep_steps=5)
    with pytest.raises(ValueError, match="pool_size"):
        tiny_tradeoffs(bon_ns=(1, 8))


# ---------------------------------------------------------------- cache


def test_cache_keys_and_records(tmp_path):
    assert store.cache_key({"a": 1, "b": 2}, tiny_ppo()) == store.cache_key({"b": 2, "a": 1}, tiny_ppo())
    assert store.cache_key(tiny_ppo()) != store.cache_key(tiny_ppo(kl_coef=0.1))
    assert len(store.cache_key("x")) == 16
    cache = store.RunCache(tmp_path / "t")
    assert cache.load("ppo", "abc") is None
    cache.save("ppo", "abc", {"points": [1.5, 2.0]})
    assert cache.load("ppo", "abc") == {"points": [1.5, 2.0], "key": "abc"}

    model, _ = tiny_model_and_tokenizer()
    before = store.fingerprint(model)
    assert store.fingerprint(copy.deepcopy(model)) == before
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    assert store.fingerprint(model) != before


def test_lazy_builds_once_and_only_when_called():
    calls = []
    lazy = store.Lazy(lambda: calls.append(1) or "model")
    assert calls == []
    assert lazy() == "model" and lazy() == "model" and calls == [1]


# ---------------------------------------------------------------- PPO runs


def test_trajectory_starts_at_kl_zero_and_summarizes_its_rows():
    ctx = context()
    reference_before = store.fingerprint(ctx.sft)
    trainer = tr.make_trainer(ctx, tiny_ppo())
    points = tr.train_and_evaluate(trainer, 3, EVAL, 2, progress=False)
    assert [p["step"] for p in points] == [0, 2, 3] and trainer.step_count == 3
    assert all(abs(r["kl"]) < 1e-6 for r in points[0]["rows"])  # the copy is the reference
    for p in points:
        assert len(p["rows"]) == len(EVAL)
        assert p["gold"] == pytest.approx(np.mean([r["gold"] for r in p["rows"]]))
        assert p["proxy"] == pytest.approx(np.mean([r["rm"] for r in p["rows"]]))
        assert p["kl"] == pytest.approx(np.mean([r["kl"] for r in p["rows"]]))
    assert points[-1]["kl"] > 1e-4, "the policy did not move"
    assert store.fingerprint(ctx.sft) == reference_before, "training changed the shared reference"


def test_ppo_run_is_cached_and_never_rebuilds_the_reward_model(tmp_path):
    ctx, cache = context(), store.RunCache(tmp_path)
    built = []

    def build():
        built.append(1)
        torch.manual_seed(5)
        return RewardModel.from_causal_lm(tiny_model_and_tokenizer("llama", seed=7)[0])

    first = tr.ppo_run(
        ctx,
        tiny_ppo(steps=2),
        2,
        1,
        cache,
        label="run",
        reward_model=store.Lazy(build),
        reward_model_id="weak-7",
        keep_checkpoint=True,
        progress=False,
    )
    assert not first["cached"] and built == [1] and [p["step"] for p in first["points"]] == [0, 1, 2]
    assert (tmp_path / f"checkpoint-{first['key']}" / "trainer_state.json").exists()

    def refuse():
        raise AssertionError("a cached run must not build its reward model")

    again = tr.ppo_run(
        ctx, tiny_ppo(steps=2), 2, 1, cache, label="run", reward_model=refuse, reward_model_id="weak-7", progress=False
    )
    assert again["cached"] and again["points"] == first["points"] and again["checkpoint"] == first["checkpoint"]
    other = tr.ppo_run(ctx, tiny_ppo(steps=2), 2, 2, cache, label="run", progress=False)  # the main reward model
    assert not other["cached"] and other["key"] != first["key"]


def test_saved_policy_is_used_only_with_its_own_config(tmp_path):
    ctx, cache = context(), store.RunCache(tmp_path / "cache")
    assert tr.evaluate_saved_policy(ctx, tmp_path / "none", tiny_ppo(), cache) is None
    trainer = tr.make_trainer(ctx, tiny_ppo(steps=1))
    trainer.train(progress=False)
    trainer.save_checkpoint(tmp_path / "ppo")
    record = tr.evaluate_saved_policy(ctx, tmp_path / "ppo", tiny_ppo(steps=1), cache)
    assert record is not None and record["points"][0]["step"] == 1 and len(record["points"][0]["rows"]) == len(EVAL)
    assert tr.evaluate_saved_policy(ctx, tmp_path / "ppo", tiny_ppo(steps=1), cache)["cached"]
    assert tr.evaluate_saved_policy(ctx, tmp_path / "ppo", tiny_ppo(steps=2), cache) is None


# ---------------------------------------------------------------- best-of-n pool


def test_pool_scores_are_those_of_the_sampled_tokens():
    ctx = context()
    pool = tr.build_pool(ctx.sft, ctx.tokenizer, EVAL[:3], SAMPLING, 4, seed=3)
    assert [len(row) for row in pool["samples"]] == [4, 4, 4] and pool["prompts"] == EVAL[:3]
    repeated = [p for p in EVAL[:3] for _ in range(4)]
    rows = evaluate_policy(ctx.sft, ctx.tokenizer, repeated, SAMPLING, seed=3, reward_model=ctx.reward_model)
    assert [s["response"] for row in pool["samples"] for s in row] == [r["response"] for r in rows]
    assert pool_array(pool, "gold").ravel().tolist() == pytest.approx([r["gold"] for r in rows])
    assert any(not s["eos"] for row in pool["samples"] for s in row)  # cut-off responses are in the test
    for batch_size in (16, 5):  # padding differs, scores do not
        scores = tr.score_pool(ctx.reward_model, ctx.tokenizer, pool, batch_size)
        np.testing.assert_allclose(np.ravel(scores), [r["rm"] for r in rows], atol=1e-5)
    assert pool_array(pool, "tokens").shape == (3, 4)


def hand_pool():
    sample = lambda text, gold: {
        "response": text,
        "eos": True,
        "tokens": len(text),
        "ids": [],
        "gold": gold,
        **{c: gold for c in COMPONENTS},
    }
    return {
        "prompts": ["p0", "p1"],
        "samples": [
            [sample("a", 0.1), sample("b", 0.9), sample("c", 0.5)],
            [sample("d", 0.7), sample("e", 0.2), sample("f", 0.4)],
        ],
        "proxy": {"rm": [[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]]},
    }


def test_bon_entries_follow_the_proxy_and_the_unbiased_curve():
    pool = hand_pool()
    entries = explorer.bon_entries(pool, "rm", [1, 2, 3], "bon", (0.5, 0.25), (1.0, 2.0))
    curve = bon_curve(pool_array(pool, "gold"), pool_array(pool, "rm"), [1, 2, 3])
    assert [e["n"] for e in entries] == [1, 2, 3]
    assert [s["response"] for s in entries[0]["samples"]] == ["a", "d"]  # n = 1: the first sample
    assert [s["response"] for s in entries[1]["samples"]] == ["b", "d"]  # best of the first two by the proxy
    assert [s["response"] for s in entries[2]["samples"]] == ["c", "d"]  # a higher proxy, a lower gold
    for e, g, p, n in zip(entries, curve["gold"], curve["proxy"], [1, 2, 3]):
        assert e["gold"] == pytest.approx((g - 0.5) / 0.25) and e["proxy"] == pytest.approx((p - 1.0) / 2.0)
        assert e["kl"] == pytest.approx(bon_kl_bound(n))
    assert entries[2]["samples"][0]["components"]["length"] == 0.5


def test_ppo_entries_use_the_units_and_clip_negative_kl():
    rows = [
        {
            "prompt": "p",
            "response": "r",
            "gold": 0.8,
            "rm": 1.0,
            "tokens": 3,
            "kl": -0.01,
            **{c: 1.0 for c in COMPONENTS},
        }
    ]
    record = {"label": "PPO", "kl_coef": 0.1, "points": [tr.summarize(0, rows)]}
    (entry,) = explorer.ppo_entries(record, "ppo", (0.6, 0.1), (0.0, 2.0))
    assert entry["kl"] == 0.0 and entry["gold"] == pytest.approx(2.0) and entry["proxy"] == pytest.approx(0.5)
    assert entry["samples"][0]["proxy"] == 1.0 and entry["kl_coef"] == 0.1


# ---------------------------------------------------------------- reward models


def test_weak_proxy_is_normalized_on_its_own_pairs_and_leaves_the_sft_policy_alone():
    sft, tok = tiny_model_and_tokenizer()
    before = store.fingerprint(sft)
    rm, history = proxies.train_weak_proxy(
        sft, tok, ROWS, RewardConfig(lr=1e-3, batch_size=2, max_steps=2), seed=0, setup=CPU, progress=False
    )
    assert len(history) == 2 and all(math.isfinite(h["train/loss"]) for h in history)
    prompts = [r["prompt"] for r in ROWS] * 2
    texts = [r["chosen"] for r in ROWS] + [r["rejected"] for r in ROWS]
    eos = [r["chosen_eos"] for r in ROWS] + [r["rejected_eos"] for r in ROWS]
    scores = score_texts(rm, tok, prompts, texts, eos=eos)
    # The normalization was fit on scores computed in other batches: in fp32 they agree to 1e-6;
    # under bf16 autocast every product keeps 8 bits (0.4% relative), so a standardized score moves
    # by up to about 1e-2 with the batch's shape.
    tol = 1e-5 if CPU.autocast_dtype is None else 1e-2
    assert float(scores.mean()) == pytest.approx(0.0, abs=tol)
    assert float(scores.std(correction=0)) == pytest.approx(1.0, abs=max(tol, 1e-4))
    assert store.fingerprint(sft) == before and not any(p.requires_grad for p in rm.parameters())


class AlwaysFirst:
    """An annotator that always prefers the response shown first (no ties, whatever the text)."""

    config = "always-first"

    def label(self, prompt, response_a, response_b, eos_a=True, eos_b=True):
        return "A"


def test_online_refresh_runs_two_paired_arms_from_the_base_run(tmp_path):
    ctx, cache, tc = context(), store.RunCache(tmp_path), tiny_tradeoffs()
    stale_before = store.fingerprint(ctx.reward_model)
    config = tc.sweep_config(tc.refresh_kl_coef)
    # no checkpoint kept: online_refresh trains the base run again to make one
    base = tr.ppo_run(ctx, config, tc.sweep_steps, tc.sweep_steps, cache, label="base", progress=False)
    refresh = proxies.online_refresh(ctx, tc, base, cache, old_rows=ROWS[:2], annotator=AlwaysFirst(), progress=False)
    assert not refresh["cached"] and len(refresh["pairs"]) == tc.refresh_pairs == refresh["n_fresh_rows"]
    assert all(p["label"] == "0" for p in refresh["pairs"]) and 0 <= refresh["accuracy"]["refreshed"] <= 1
    stale, fresh = refresh["arms"]["stale"], refresh["arms"]["refreshed"]
    for arm in (stale, fresh):
        assert [p["step"] for p in arm["points"]] == [tc.sweep_steps, tc.ppo.steps]
        assert [h["step"] for h in arm["history"]] == [tc.sweep_steps + 1]
        assert arm["points"][0]["rows"] == base["points"][-1]["rows"]
    # same checkpoint, same seeds: the same samples, so the same KL; other reward models, other scores
    assert stale["history"][0]["objective/kl"] == pytest.approx(fresh["history"][0]["objective/kl"], abs=1e-6)
    assert stale["history"][0]["objective/score"] != pytest.approx(fresh["history"][0]["objective/score"], abs=1e-6)
    # the re-made base resumes exactly: the stale arm's step is the step a continuous run takes there
    continuous = tr.ppo_run(
        ctx, config, tc.ppo.steps, tc.ppo.steps, store.RunCache(tmp_path / "c"), label="continuous", progress=False
    )
    assert stale["history"][0]["objective/kl"] == pytest.approx(continuous["history"][-1]["objective/kl"], abs=1e-5)
    assert stale["points"][-1]["rows"] == continuous["points"][-1]["rows"]
    assert store.fingerprint(ctx.reward_model) == stale_before, "the refresh changed the stale reward model"
    assert not (tmp_path / f"checkpoint-{base['key']}").exists(), "the base checkpoint was not cleaned up"
    assert proxies.online_refresh(ctx, tc, base, cache, old_rows=ROWS[:2], annotator=AlwaysFirst())["cached"]


def test_notebook_05s_pieces_load_from_the_cache_on_a_second_call(tmp_path, monkeypatch):
    """sft_eval_rows, sft_pool, pool_scores and weak_proxy compute once, then load: the second calls
    sample nothing, score nothing and train nothing."""
    ctx, cache = context(), store.RunCache(tmp_path)
    rows = tr.sft_eval_rows(ctx, cache, seed=1)
    pool, key, was_cached = tr.sft_pool(ctx, cache, 3, seed=2)
    assert not was_cached and len(rows) == len(EVAL) and len(pool["proxy"]["main"][0]) == 3
    built = []
    model, record, weak_id = tr.weak_proxy(ctx, cache, ROWS, ROWS, RewardConfig(lr=1e-3, batch_size=2, max_steps=1), 0)
    weak_scores = tr.pool_scores(ctx, cache, pool, key, lambda: built.append(1) or model(), weak_id)
    assert set(record["accuracy"]) == {"weak", "main"} and built == [1]

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached piece")

    monkeypatch.setattr(tr, "build_pool", fail)
    monkeypatch.setattr(tr, "score_pool", fail)
    monkeypatch.setattr(proxies, "train_weak_proxy", fail)
    monkeypatch.setattr("rlhf_edu.metrics.evaluate_policy", fail)
    assert tr.sft_eval_rows(ctx, cache, seed=1) == rows
    assert tr.sft_pool(ctx, cache, 3, seed=2)[2] is True
    again, record_again, _ = tr.weak_proxy(ctx, cache, ROWS, ROWS, RewardConfig(lr=1e-3, batch_size=2, max_steps=1), 0)
    assert record_again["accuracy"] == record["accuracy"]
    assert tr.pool_scores(ctx, cache, pool, key, again, weak_id) == weak_scores
    # other held-out pairs: the accuracies are measured anew, never read from this record
    with pytest.raises(AssertionError, match="recomputed a cached piece"):
        tr.weak_proxy(ctx, cache, ROWS, ROWS[:2], RewardConfig(lr=1e-3, batch_size=2, max_steps=1), 0)
