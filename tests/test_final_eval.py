"""rlhf_edu.course.final_eval: budgets, saving and loading policies, the eval-row cache, best-of-n, the
scoreboard line and the AI judge, on tiny models (notebooks 06 and 07)."""

import copy
import json
import math

import pytest
import torch

from rlhf_edu import ai_judge as aj
from rlhf_edu import eval_rows as er
from rlhf_edu import store
from rlhf_edu.course import final_eval as fe
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.models import tiny_model_and_tokenizer
from rlhf_edu.presets import PRESETS, get_preset
from rlhf_edu.reward import RewardModel
from rlhf_edu.rubric import COMPONENTS

PROMPTS = ["Explain rain to a 10-year-old.", "Explain a volcano to a 10-year-old.", "Explain gravity to a 10-year-old."]
SAMPLING = SamplingConfig(max_new_tokens=8, temperature=1.0, batch_size=2)


@pytest.fixture(autouse=True)
def _threads():
    """One thread: the tiny models' ops are too small to split (overrides conftest)."""
    torch.set_num_threads(1)


@pytest.fixture
def models():
    """A tiny policy, its frozen copy as the reference, and a reward model on another tiny model."""
    policy, tok = tiny_model_and_tokenizer(seed=0)
    reference = copy.deepcopy(policy)
    lm, _ = tiny_model_and_tokenizer(seed=3)
    torch.manual_seed(3)
    reward_model = RewardModel.from_causal_lm(lm).eval()
    return policy, reference, reward_model, tok


def perturb(model, seed=1):
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model


# --------------------------------------------------------------------------- budgets


def test_every_preset_carries_the_budgets_of_06_and_07():
    from rlhf_edu.budgets import FinalEvalBudget

    for preset in PRESETS.values():
        assert isinstance(preset.final, FinalEvalBudget)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("tpu")


def test_budgets_fit_the_data_and_grow_with_the_preset():
    from rlhf_edu.preferences import load_pairs, to_preference_rows

    train = to_preference_rows(load_pairs("train"))
    heldout = to_preference_rows(load_pairs("heldout"))
    smoke, cpu, gpu = (get_preset(n).final for n in ("smoke", "cpu", "gpu"))
    for b in (smoke, cpu, gpu):
        assert b.dpo_pairs <= len(train) and b.judge_pairs <= len(train)
        assert b.dpo_heldout <= len(heldout) and b.judge_heldout <= len(heldout)
        assert b.group_algorithm in ("grpo", "dr_grpo", "rloo")
    assert smoke.dpo_pairs < cpu.dpo_pairs <= gpu.dpo_pairs
    assert smoke.grpo.steps < cpu.grpo.steps <= gpu.grpo.steps
    assert cpu.dpo_pairs == cpu.dpo.batch_size * cpu.dpo.max_steps
    for name in ("cpu", "gpu"):  # the same blocks train as in PPO (notebook 06 compares them)
        b, ppo = get_preset(name).final, get_preset(name).ppo
        assert b.dpo.trainable_layers == b.grpo.trainable_layers == ppo.trainable_layers
        assert b.grpo.kl_coef == ppo.kl_coef and b.grpo.sampling == ppo.sampling


def test_a_budget_without_dpo_steps_is_rejected():
    from dataclasses import replace

    with pytest.raises(ValueError, match="max_steps"):
        replace(get_preset("smoke").final, dpo=replace(get_preset("smoke").final.dpo, max_steps=None))


# --------------------------------------------------------------------------- fingerprints, saving, loading


def test_fingerprint_follows_the_weights(models):
    policy, reference, _, _ = models
    assert store.fingerprint(policy) == store.fingerprint(reference)
    assert store.fingerprint(perturb(copy.deepcopy(policy))) != store.fingerprint(reference)
    before, before_sum = store.fingerprint(policy), store.param_sum(policy)  # remembered from here on
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    policy(input_ids=torch.tensor([[5, 6, 7]])).logits.sum().backward()
    optimizer.step()  # an in-place update: the remembered values must not be reused
    assert store.fingerprint(policy) != before and store.param_sum(policy) != before_sum
    policy.load_state_dict(reference.state_dict())
    assert store.fingerprint(policy) == store.fingerprint(reference) and store.param_sum(policy) == before_sum
    import gc

    gone = perturb(copy.deepcopy(policy))
    store.fingerprint(gone)
    remembered = len(store._MEMO["fingerprint"])
    del gone
    gc.collect()
    assert len(store._MEMO["fingerprint"]) == remembered - 1  # a freed model is forgotten: its address may be reused


def test_save_and_load_a_policy_checks_preset_config_and_reference(artifacts, models):
    policy, reference, _, tok = models
    preset, budget = get_preset("smoke"), get_preset("smoke").final
    model, _, _, reason = fe.load_policy("dpo", preset, budget)
    assert model is None and "missing" in reason
    trained = perturb(copy.deepcopy(policy))
    fe.save_policy(trained, tok, "dpo", preset="smoke", config=budget.dpo, reference=reference, extra={"seconds": 1.5})
    info = json.loads((artifacts / "dpo" / "run_info.json").read_text())
    assert info["preset"] == "smoke" and info["seconds"] == 1.5
    loaded, _, info, message = fe.load_policy("dpo", preset, budget, reference=reference)
    assert loaded is not None and "loaded" in message
    assert store.fingerprint(loaded) == store.fingerprint(trained)
    # another preset, another config, another reference: not this run's policy
    assert fe.load_policy("dpo", get_preset("cpu"), budget)[0] is None
    assert fe.load_policy("dpo", preset, get_preset("cpu").final)[0] is None
    model, _, _, reason = fe.load_policy("dpo", preset, budget, reference=trained)
    assert model is None and "another SFT" in reason
    with pytest.raises(ValueError, match="unknown policy"):
        fe.load_policy("sft2", preset, budget)


def test_load_ppo_needs_a_finished_run_against_the_same_models(artifacts, models):
    policy, reference, reward_model, tok = models
    preset, budget = get_preset("smoke"), get_preset("smoke").final
    root = artifacts / "ppo"
    ppo = perturb(copy.deepcopy(policy), seed=5)
    ppo.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    state = {
        "config": store.jsonable(preset.ppo),
        "step": preset.ppo.steps,
        "fingerprint": [store.param_sum(reference), store.param_sum(reward_model)],
    }
    (root / "trainer_state.json").write_text(json.dumps(state))
    loaded, _, _, message = fe.load_policy("ppo", preset, budget, reference=reference, reward_model=reward_model)
    assert loaded is not None, message
    assert store.fingerprint(loaded) == store.fingerprint(ppo)
    assert "another reference" in fe.load_policy("ppo", preset, budget, reference=ppo)[3]
    (root / "trainer_state.json").write_text(json.dumps({**state, "step": 1}))
    assert "stopped at step 1" in fe.load_policy("ppo", preset, budget)[3]
    (root / "trainer_state.json").write_text(json.dumps({**state, "config": store.jsonable(get_preset("cpu").ppo)}))
    assert "another PPOConfig" in fe.load_policy("ppo", preset, budget)[3]


# --------------------------------------------------------------------------- eval rows and their cache


def test_cached_rows_compute_once_per_key(artifacts):
    calls = []

    def compute():
        calls.append(1)
        return [{"x": len(calls)}]

    settings = {"preset": "smoke", "sampling": SAMPLING, "models": {"policy": "1.0"}}
    rows, message = er.cached_rows("toy", settings, compute)
    assert rows == [{"x": 1}] and "sampled" in message
    rows, message = er.cached_rows("toy", dict(settings), compute)
    assert rows == [{"x": 1}] and "from" in message and len(calls) == 1
    rows, _ = er.cached_rows("toy", {**settings, "preset": "cpu"}, compute)  # another key: computed again
    assert rows == [{"x": 2}]
    rows, _ = er.cached_rows("toy", {**settings, "preset": "cpu"}, compute, refresh=True)
    assert rows == [{"x": 3}] and (artifacts / "eval_rows" / "toy.json").exists()


def test_policy_eval_rows_score_and_cache(artifacts, models, monkeypatch):
    policy, reference, reward_model, tok = models
    spec = er.EvalSpec(PROMPTS, SAMPLING, preset_name="smoke", seed=0)
    kwargs = {"reference": reference, "reward_model": reward_model}
    rows, message = er.policy_eval_rows("sft", policy, tok, spec, **kwargs)
    assert len(rows) == len(PROMPTS) and "sampled" in message
    for r in rows:
        assert {"gold", "rm", "kl", "ref_nll", "ref_tokens", "tokens", "eos", *COMPONENTS} <= set(r)
        assert abs(r["kl"]) < 1e-4  # the policy is the reference
        assert math.isfinite(r["rm"]) and r["ref_nll"] > 0 and r["ref_tokens"] >= 1
    monkeypatch.setattr(er, "sample", lambda *a, **k: pytest.fail("not cached"))
    again, message = er.policy_eval_rows("sft", policy, tok, spec, **kwargs)
    assert again == rows and "from" in message
    with pytest.raises(pytest.fail.Exception):  # other weights: another key, so it samples again
        er.policy_eval_rows("sft", perturb(copy.deepcopy(policy)), tok, spec, **kwargs)


def test_eval_rows_are_evaluate_policys_plus_perplexity(artifacts, models):
    from rlhf_edu.metrics import evaluate_policy

    policy, reference, reward_model, tok = models
    other = perturb(copy.deepcopy(policy), seed=2)
    spec = er.EvalSpec(PROMPTS, SAMPLING, preset_name="smoke", seed=4)
    rows, _ = er.policy_eval_rows("x", other, tok, spec, reference=reference, reward_model=reward_model)
    expected = evaluate_policy(other, tok, PROMPTS, SAMPLING, seed=4, reference=reference, reward_model=reward_model)
    for r, e in zip(rows, expected):
        assert r["response"] == e["response"] and r["gold"] == e["gold"] and r["tokens"] == e["tokens"]
        assert r["kl"] == pytest.approx(e["kl"], abs=1e-4) and r["rm"] == pytest.approx(e["rm"], abs=1e-5)
    assert any(abs(r["kl"]) > 1e-3 for r in rows)  # another policy: a KL that is not 0


def test_perplexity_sums_match_a_token_by_token_loop_without_padding(models):
    from rlhf_edu.generation import sample

    policy, reference, _, tok = models
    samples = sample(policy, tok, PROMPTS, SAMPLING, generator=torch.Generator().manual_seed(1))
    assert samples.response_mask.sum(1).unique().numel() > 1 or samples.prompt_mask.sum(1).unique().numel() > 1
    rows = er.score_samples(samples, PROMPTS, reference=reference, temperature=SAMPLING.temperature, batch_size=3)
    assert all("rm" not in r and "kl" not in r for r in rows)
    for i, row in enumerate(rows):
        prompt = samples.prompt_ids[i][samples.prompt_mask[i].bool()]  # (P_i,) without its padding
        response = samples.response_ids[i][samples.response_mask[i].bool()]  # (R_i,)
        ids = torch.cat([prompt, response])[None]  # (1, P_i + R_i)
        with torch.no_grad():
            logps = torch.log_softmax(reference(input_ids=ids).logits[0].float(), dim=-1)  # temperature 1
        naive = -sum(float(logps[len(prompt) - 1 + t, tok_id]) for t, tok_id in enumerate(response.tolist()))
        assert row["ref_tokens"] == len(response)
        assert row["ref_nll"] == pytest.approx(naive, rel=1e-4)


def test_best_of_n_keeps_the_highest_reward_model_score(models):
    policy, _, reward_model, tok = models
    rows = er.best_of_n_rows(policy, tok, PROMPTS, SAMPLING, 3, reward_model, seed=0)
    assert len(rows) == len(PROMPTS)
    for r in rows:
        assert len(r["pool_rm"]) == 3 and r["rm"] == max(r["pool_rm"])
        assert r["kl"] == pytest.approx(math.log(3) - 2 / 3)
    single = er.best_of_n_rows(policy, tok, PROMPTS, SAMPLING, 1, reward_model, seed=0)
    assert all(r["kl"] == 0.0 and r["rm"] == r["pool_rm"][0] for r in single)


def test_best_of_n_eval_rows_cache_depends_on_n(artifacts, models):
    policy, reference, reward_model, tok = models
    spec = er.EvalSpec(PROMPTS, SAMPLING, preset_name="smoke", seed=0)
    kwargs = {"reference": reference, "reward_model": reward_model}
    _, first = er.best_of_n_eval_rows(policy, tok, spec, 2, **kwargs)
    _, second = er.best_of_n_eval_rows(policy, tok, spec, 2, **kwargs)
    _, third = er.best_of_n_eval_rows(policy, tok, spec, 3, **kwargs)
    assert "sampled" in first and "from" in second and "sampled" in third


# --------------------------------------------------------------------------- the scoreboard line


def fake_rows(golds, responses, prompts=None):
    prompts = prompts or [f"p{i}" for i in range(len(golds))]
    return [
        {
            "prompt": p,
            "response": t,
            "gold": g,
            "rm": 2 * g,
            "kl": 1.0,
            "tokens": 10,
            "eos": i % 2 == 0,
            "ref_nll": 20.0,
            "ref_tokens": 10,
            **{c: g for c in COMPONENTS},
        }
        for i, (p, g, t) in enumerate(zip(prompts, golds, responses))
    ]


def test_scoreboard_row_by_hand():
    rows = fake_rows([0.2, 0.4, 0.9], ["a b a b", "c d", "e"])
    sft = fake_rows([0.1, 0.3, 0.5], ["x", "y", "z"])
    line = fe.scoreboard_row("dpo", rows, sft)
    assert line["policy"] == "dpo" and line["gold"] == pytest.approx(0.5) and line["rm"] == pytest.approx(1.0)
    assert line["gold_se"] == pytest.approx(math.sqrt(((0.3**2 + 0.1**2 + 0.4**2) / 2) / 3))
    assert line["distinct2"] == pytest.approx(3 / 4)  # bigrams (a b), (b a), (a b), (c d): 3 distinct of 4
    assert line["perplexity"] == pytest.approx(math.exp(2.0))
    assert line["eos_rate"] == pytest.approx(2 / 3) and line["length"] == 10  # tokens, not the rubric's length score
    assert line["components"] == pytest.approx({c: 0.5 for c in COMPONENTS})
    deltas = [0.1, 0.1, 0.4]
    se = math.sqrt(sum((d - 0.2) ** 2 for d in deltas) / 2 / 3)
    assert line["gold_delta"] == pytest.approx(0.2) and line["gold_diff_se"] == pytest.approx(se)
    assert line["gold_z"] == pytest.approx(0.2 / se)
    with pytest.raises(ValueError, match="different prompts"):
        fe.scoreboard_row("dpo", rows, fake_rows([0.1, 0.3, 0.5], ["x", "y", "z"], prompts=["q", "r", "s"]))


def test_ab_store_path_names_the_comparison(artifacts):
    a = fe.ab_store_path(("sft", "dpo"), ["x", "y"], ["u", "v"])
    assert a == fe.ab_store_path(("sft", "dpo"), ["x", "y"], ["u", "v"])
    assert a != fe.ab_store_path(("sft", "dpo"), ["x", "y"], ["u", "w"])
    assert a.parent == artifacts / "labels" and "sft-vs-dpo" in a.name


# --------------------------------------------------------------------------- the AI judge


def test_judge_prompt_shows_the_criteria_both_answers_and_cut_offs():
    text = aj.judge_prompt(PROMPTS[0], "first answer", "second answer", True, False)
    assert aj.JUDGE_CRITERIA in text and PROMPTS[0] in text
    assert text.index("Answer A: first answer") < text.index("Answer B: second answer" + aj.CUT_OFF)


def test_judge_margins_match_a_full_forward_without_padding(models):
    policy, _, _, tok = models
    requests = [
        aj.judge_prompt(PROMPTS[0], "Rain is water.", "It rains.", True, True),
        aj.judge_prompt(PROMPTS[1], "A volcano is a hot mountain that can blow up.", "Hot.", True, False),
    ]
    margins = aj.judge_margins(policy, tok, requests, batch_size=2)
    id_a, id_b = aj.choice_token_ids(tok)
    from rlhf_edu.generation import encode_prompts

    for request, margin in zip(requests, margins.tolist()):
        ids, _ = encode_prompts(tok, [request])  # (1, P) alone: no padding
        with torch.no_grad():
            logps = torch.log_softmax(policy(input_ids=ids).logits[0, -1].float(), dim=-1)  # (V,)
        assert margin == pytest.approx(float(logps[id_a] - logps[id_b]), abs=1e-4)


def test_ai_preferences_cancel_position_bias_and_flip_with_the_labels(models):
    policy, _, _, tok = models
    rows = [
        {
            "prompt": PROMPTS[0],
            "chosen": "Rain is water from clouds.",
            "rejected": "rain rain rain",
            "chosen_eos": True,
            "rejected_eos": False,
        },
        {"prompt": PROMPTS[2], "chosen": "Gravity pulls things down.", "rejected": "Things float."},
    ]
    prefs = aj.ai_preferences(policy, tok, rows, batch_size=4)
    torch.testing.assert_close(prefs["preference"], (prefs["first"] - prefs["second"]) / 2)
    torch.testing.assert_close(prefs["first"], prefs["preference"] + prefs["position_bias"])
    flipped = aj.ai_preferences(policy, tok, aj.relabel(rows, torch.tensor([-1.0, -1.0])), batch_size=4)
    torch.testing.assert_close(flipped["preference"], -prefs["preference"], atol=1e-4, rtol=0)
    torch.testing.assert_close(flipped["position_bias"], prefs["position_bias"], atol=1e-4, rtol=0)


def test_relabel_swaps_where_the_judge_disagrees():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_eos": True, "rejected_eos": False}] * 3
    out = aj.relabel(rows, torch.tensor([0.5, -0.5, 0.0]))
    assert [r["chosen"] for r in out] == ["a", "b", "a"]
    assert (out[1]["chosen_eos"], out[1]["rejected_eos"]) == (False, True)
    assert rows[1]["chosen"] == "a"  # the input is not changed
    with pytest.raises(ValueError, match="preferences"):
        aj.relabel(rows, torch.tensor([1.0]))
