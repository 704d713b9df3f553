"""GRPO / Dr GRPO / RLOO of rlhf_edu.grpo: the values of
docs/implementation_details.md#grpo-rloo-and-best-of-n-tests (advantages, the loss at step 0, the
length bias), the KL gradients of docs/implementation_details.md#kl-in-grpo by exact enumeration,
naive loops, and tiny-model runs (ratio 1, lr = 0, gradient accumulation, a programmatic reward
rises)."""

import copy
import warnings

import pytest
import torch

from rlhf_edu.devices import device_setup
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.grpo import (
    aggregate_loss,
    clipped_surrogate,
    group_advantages,
    kl_loss_per_token,
    kl_penalized_advantages,
    kl_shaped_scores,
    rloo_advantages,
    zero_std_groups,
)
from rlhf_edu.grpo_loop import GRPOConfig
from rlhf_edu.grpo_trainer import GRPOTrainer, train_grpo
from rlhf_edu.logprobs import masked_sum
from rlhf_edu.models import tiny_model_and_tokenizer
from rlhf_edu.reward_functions import reward_model_scorer
from rlhf_edu.training import prompts_for_step

CPU = device_setup("cpu")  # this CPU's dtype rule, or RLHF_EDU_DTYPE
F64 = torch.float64
R_EXAMPLE = torch.tensor([[1.0, 3.0, 2.0, 6.0]], dtype=F64)  # (G, K) = (1, 4)
PROMPTS = [f"question {i}" for i in range(24)]


@pytest.fixture(autouse=True)
def _threads():
    """One thread: the tiny models' ops are too small to split, and on cores shared with other
    work a second thread's waiting makes these tests many times slower (overrides conftest)."""
    torch.set_num_threads(1)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def random_groups(G=5, K=6, seed=0):
    return torch.randn(G, K, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------- advantages


def test_grpo_advantages_reference_values():
    close(group_advantages(R_EXAMPLE), [[-0.925777, 0.0, -0.462889, 1.388666]])
    close(group_advantages(R_EXAMPLE, scale="none"), [[-2.0, 0.0, -1.0, 3.0]])  # Dr GRPO: r - mean


def test_grpo_advantages_are_standardized_per_group_and_match_a_naive_loop():
    rewards = 10 * random_groups()  # std >> eps = 1e-4, so the std comes out 1 to 1e-4
    advantages = group_advantages(rewards)
    close(advantages.mean(dim=1), torch.zeros(5), atol=1e-10)
    close(advantages.std(dim=1), torch.ones(5), atol=1e-4)
    for scale in ("std", "none"):
        naive = torch.zeros_like(rewards)
        for g, row in enumerate(rewards.tolist()):
            mean = sum(row) / len(row)
            std = (sum((r - mean) ** 2 for r in row) / (len(row) - 1)) ** 0.5
            for k, r in enumerate(row):
                naive[g, k] = (r - mean) / (std + 1e-4) if scale == "std" else r - mean
        torch.testing.assert_close(group_advantages(rewards, scale), naive)


def test_a_group_of_equal_rewards_gets_zero_not_nan():
    rewards = torch.tensor([[0.7, 0.7, 0.7], [1.0, 2.0, 3.0]])
    advantages = group_advantages(rewards)
    assert torch.equal(advantages[0], torch.zeros(3))
    assert torch.isfinite(advantages).all() and advantages[1].abs().sum() > 0


def test_rloo_advantages_reference_values_and_naive_loop():
    close(rloo_advantages(R_EXAMPLE), [[-2.666667, 0.0, -1.333333, 4.0]])
    rewards = random_groups(seed=1)
    K = rewards.shape[1]
    close(rloo_advantages(rewards), K / (K - 1) * (rewards - rewards.mean(dim=1, keepdim=True)), atol=1e-12)
    naive = torch.zeros_like(rewards)
    for g, row in enumerate(rewards.tolist()):
        for k, r in enumerate(row):
            others = row[:k] + row[k + 1 :]
            naive[g, k] = r - sum(others) / len(others)
    torch.testing.assert_close(rloo_advantages(rewards), naive)


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (group_advantages, [[-1 / (2**0.5 + 1e-4), 1 / (2**0.5 + 1e-4)], [0.0, 0.0]]),  # std of [1, 3] is sqrt 2
        (rloo_advantages, [[-2.0, 2.0], [0.0, 0.0]]),  # each one's baseline is the other's reward
    ],
)
def test_two_responses_per_group_are_enough(fn, expected):  # TRL RLOO's default group size
    close(fn(torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=F64)), expected, atol=1e-12)


@pytest.mark.parametrize("fn", [group_advantages, rloo_advantages])
def test_one_response_per_group_is_an_error(fn):
    with pytest.raises(ValueError, match="K >= 2"):
        fn(torch.ones(3, 1))
    with pytest.raises(ValueError, match="K >= 2"):
        fn(torch.ones(4))


# --------------------------------------------------------------------------- the clip


@pytest.mark.parametrize(
    "advantage, ratio, loss, grad_flows",
    [(1.0, 1.5, -1.2, False), (-1.0, 0.5, 0.8, False), (-1.0, 1.5, 1.5, True), (1.0, 0.5, -0.5, True)],
)
def test_clipped_surrogate_scalar_cases(advantage, ratio, loss, grad_flows):
    logps = torch.tensor([[torch.log(torch.tensor(ratio)).item()]], dtype=F64, requires_grad=True)
    per_token, clipped = clipped_surrogate(logps, torch.zeros(1, 1, dtype=F64), torch.tensor([advantage]), 0.2)
    per_token.sum().backward()
    assert per_token.item() == pytest.approx(loss)
    assert bool(clipped.item()) is not grad_flows
    assert (logps.grad.item() != 0) is grad_flows


def masked_batch(B=8, R=7, seed=0):
    """Random log-probs (with gradients), a group-centred advantage per response, lengths 1..R."""
    g = torch.Generator().manual_seed(seed)
    logps = (-3 * torch.rand(B, R, generator=g, dtype=F64)).requires_grad_()  # (B, R)
    advantages = group_advantages(torch.randn(B // 4, 4, generator=g, dtype=F64)).reshape(-1)  # (B,)
    lengths = torch.randint(1, R + 1, (B,), generator=g)  # (B,)
    lengths[0] = R
    mask = (torch.arange(R).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (B, R)
    return logps, advantages, mask, lengths.to(F64)


# --------------------------------------------------------------------------- loss at step 0


def test_loss_at_step_zero_for_each_aggregation():
    """Ratio 1, no KL term: sequence_mean (GRPO) is exactly 0, token_mean is -sum|o|A / sum|o|,
    token_sum is -sum|o|A / (B L_max); every gradient is non-zero."""
    logps, advantages, mask, lengths = masked_batch()
    per_token, clipped = clipped_surrogate(logps, logps.detach(), advantages)
    assert not clipped.any()
    B, L_max = 8, 10
    expected = {
        "sequence_mean": 0.0,
        "token_mean": -(lengths * advantages).sum() / lengths.sum(),
        "token_sum": -(lengths * advantages).sum() / (B * L_max),
    }
    for aggregation, value in expected.items():
        loss = aggregate_loss(per_token, mask, aggregation, max_tokens=L_max)
        assert loss.item() == pytest.approx(float(value), abs=1e-12)
        (grad,) = torch.autograd.grad(loss, logps, retain_graph=True)
        assert grad.abs().sum() > 0, aggregation


def test_length_bias_of_the_per_token_gradient_weights():
    """d loss / d logp_{i,t} = -A_i / (B |o_i|) for GRPO (longer responses weigh less per token),
    -A_i / (B L_max) for Dr GRPO (the same for every token), -A_i / sum|o| for token_mean."""
    logps, advantages, mask, lengths = masked_batch(seed=3)
    per_token, _ = clipped_surrogate(logps, logps.detach(), advantages)
    B, L_max = 8, 10
    weights = {
        "sequence_mean": -advantages / (B * lengths),
        "token_sum": -advantages / (B * L_max),
        "token_mean": -advantages / lengths.sum(),
    }
    for aggregation, per_response in weights.items():
        (grad,) = torch.autograd.grad(aggregate_loss(per_token, mask, aggregation, L_max), logps, retain_graph=True)
        close(grad, per_response.unsqueeze(1) * mask, atol=1e-12)


def test_aggregations_match_a_naive_loop_and_ignore_padding():
    logps, advantages, mask, _ = masked_batch(seed=5)
    old = logps.detach() + 0.3 * torch.randn(logps.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    per_token, _ = clipped_surrogate(logps, old, advantages)
    garbage = per_token.detach().masked_fill(mask == 0, 1e6)  # padding holds nonsense
    seq_means, total, n_tokens = [], 0.0, 0
    for i in range(per_token.shape[0]):
        row = [float(per_token.detach()[i, t]) for t in range(per_token.shape[1]) if mask[i, t]]
        seq_means.append(sum(row) / len(row))
        total, n_tokens = total + sum(row), n_tokens + len(row)
    naive = {
        "sequence_mean": sum(seq_means) / len(seq_means),
        "token_mean": total / n_tokens,
        "token_sum": total / (per_token.shape[0] * 12),
    }
    for aggregation, value in naive.items():
        assert aggregate_loss(garbage, mask, aggregation, 12).item() == pytest.approx(value, rel=1e-10)
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate_loss(per_token, mask, "token_sum")
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_loss(per_token, mask, "dapo")


# --------------------------------------------------------------------------- the KL term


def test_kl_in_the_reward_and_k2_loss_follow_the_reverse_kl_but_k3_loss_the_forward_kl():
    """Exact expectations over a 6-token vocabulary: E_pi[grad of each KL form] against the
    gradients of KL(pi || ref) and KL(ref || pi)."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, generator=g, dtype=F64, requires_grad=True)
    ref_logp = torch.randn(6, generator=g, dtype=F64).log_softmax(0)  # (V,)
    logp = theta.log_softmax(0)  # (V,)
    pi = logp.exp().detach()  # the sampling weights carry no gradient
    reverse = torch.autograd.grad((logp.exp() * (logp - ref_logp)).sum(), theta, retain_graph=True)[0]
    forward = torch.autograd.grad((ref_logp.exp() * (ref_logp - logp)).sum(), theta, retain_graph=True)[0]
    assert (reverse - forward).abs().max() > 0.05, "pick logits where the two KLs differ"

    beta, ones = 0.3, torch.ones(6, 1)
    # k1 in the reward: each token y is a one-token response with score 0; REINFORCE weight = shaped score
    shaped = kl_shaped_scores(torch.zeros(6, dtype=F64), logp[:, None], ref_logp[:, None], ones, beta)  # (V,)
    assert not shaped.requires_grad
    reinforce = -(pi * shaped * logp).sum()  # loss = -E[A log pi(y)]
    close(torch.autograd.grad(reinforce, theta, retain_graph=True)[0], beta * reverse, atol=1e-12)
    for kl_penalty, expected in [("k2_loss", reverse), ("k3_loss", forward)]:
        term = kl_loss_per_token(logp[:, None], ref_logp[:, None], kl_penalty).squeeze(1)  # (V,)
        close(torch.autograd.grad((pi * term).sum(), theta, retain_graph=True)[0], expected, atol=1e-12)
    with pytest.raises(ValueError, match="kl_penalty"):
        kl_loss_per_token(logp, ref_logp, "k1_reward")


@pytest.mark.parametrize("kl_penalty", ["k1_reward", "k3_loss"])
def test_groups_whose_scores_tie_get_only_a_kl_coef_sized_kl_advantage(kl_penalty):
    """A constant reward: every group's scores tie, so no group carries a score signal
    (frac_zero_std 1). With the KL folded into the reward and then standardized per group, the KL's
    noise came out as advantages of size 1 whatever kl_coef was; now the tied groups get only
    -kl_coef * (KL_i - mean KL), ten times larger at a ten times larger kl_coef (0 with the KL in
    the loss, which adds its own term at step 4)."""
    reference, tok = tiny_model_and_tokenizer(seed=0)
    policy = tiny_model_and_tokenizer(seed=1)[0]  # away from the reference: KL noise in every group
    constant = lambda prompts, texts, eos: torch.ones(len(texts))
    advantages = {}
    for kl_coef in (0.01, 0.1):
        trainer = GRPOTrainer(
            copy.deepcopy(policy),
            reference,
            constant,
            tok,
            PROMPTS,
            small_config(steps=1, epochs=1, kl_coef=kl_coef, kl_penalty=kl_penalty),
            setup=CPU,
        )
        metrics, rollout = trainer.step(keep_rollout=True)
        assert metrics["objective/frac_zero_std"] == 1.0
        assert metrics["objective/kl"] != 0.0
        advantages[kl_coef] = rollout.advantages
    if kl_penalty == "k3_loss":
        assert torch.equal(advantages[0.1], torch.zeros_like(advantages[0.1]))
        return
    kl = masked_sum(rollout.old_logps - rollout.ref_logps, rollout.response_mask, dim=1).view(-1, 4)  # (G, K)
    close(advantages[0.1].view(-1, 4), -0.1 * (kl - kl.mean(dim=1, keepdim=True)), atol=1e-5)
    close(advantages[0.1], 10 * advantages[0.01], atol=1e-5)
    assert advantages[0.01].abs().max() < 0.5  # not unit-size


def test_kl_penalized_advantages_standardize_the_scores_only():
    scores = torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 3.0, 2.0, 6.0]], dtype=F64)  # (G, K): a tie, R_EXAMPLE
    kl = random_groups(2, 4, seed=3)  # (G, K) nats per response
    centered_kl = kl - kl.mean(dim=1, keepdim=True)  # (G, K)
    for kl_coef in (0.0, 0.01, 0.1):
        A = kl_penalized_advantages(scores, kl, kl_coef, "grpo")  # (G, K)
        close(A, group_advantages(scores) - kl_coef * centered_kl, atol=1e-12)
        close(A[0], -kl_coef * centered_kl[0], atol=1e-12)  # the tie: only the KL term, kl_coef-sized
    old = group_advantages(scores - 0.01 * kl)  # standardizing score and KL together
    assert old[0].std() == pytest.approx(1.0, abs=0.05)  # turns the tie's KL noise into unit advantages
    # Without a std division the KL term is the same either way: Dr GRPO and RLOO are linear.
    close(kl_penalized_advantages(scores, kl, 0.1, "dr_grpo"), group_advantages(scores - 0.1 * kl, "none"), atol=1e-12)
    close(kl_penalized_advantages(scores, kl, 0.1, "rloo"), rloo_advantages(scores - 0.1 * kl), atol=1e-12)
    assert zero_std_groups(scores).tolist() == [True, False]


def test_kl_shaped_scores_sum_k1_over_response_tokens_only():
    scores = torch.tensor([1.0, 2.0])
    logps = torch.tensor([[-1.0, -2.0, 50.0], [-0.5, -0.5, -0.5]])  # (B, R) garbage at 50
    ref_logps = torch.tensor([[-1.5, -1.0, -9.0], [-0.5, -0.5, -0.5]])  # (B, R)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # (B, R)
    close(kl_shaped_scores(scores, logps, ref_logps, mask, 0.1), [1.0 - 0.1 * (0.5 - 1.0), 2.0])


# --------------------------------------------------------------------------- config and plumbing


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"advantage": "ppo"}, "advantage must be"),
        ({"loss_aggregation": "dapo"}, "loss_aggregation"),
        ({"kl_penalty": "k3"}, "kl_penalty"),
        ({"group_size": 1}, "group_size"),
        ({"prompts_per_step": 3, "group_size": 2, "mini_batch_size": 4}, "multiple of mini_batch_size"),
        ({"missing_eos_mode": "drop"}, "missing_eos_mode"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_bad_config_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**overrides)


def test_each_algorithm_has_its_own_aggregation():
    assert GRPOConfig(advantage="grpo").aggregation == "sequence_mean"
    assert GRPOConfig(advantage="dr_grpo").aggregation == "token_sum"
    assert GRPOConfig(advantage="rloo").aggregation == "token_sum"
    assert GRPOConfig(advantage="grpo", loss_aggregation="token_mean").aggregation == "token_mean"
    assert GRPOConfig(prompts_per_step=3, group_size=4, mini_batch_size=6, micro_batch_size=3).batch_size == 12


def test_prompts_for_step_visit_every_prompt_once_per_pass():
    prompts = [f"p{i}" for i in range(10)]
    seen = [p for step in range(5) for p in prompts_for_step(prompts, step, 4, seed=0)]  # 2 passes
    assert sorted(seen[:10]) == sorted(prompts) and sorted(seen[10:20]) == sorted(prompts)
    assert seen[:10] != prompts  # shuffled
    assert prompts_for_step(prompts, 3, 4, seed=0) == prompts_for_step(prompts, 3, 4, seed=0)


# --------------------------------------------------------------------------- the trainer on a tiny model


def count_reward(letter="a"):
    """A programmatic reward: how often one letter appears in the response text."""
    return lambda prompts, texts, eos: torch.tensor([float(t.count(letter)) for t in texts])


def small_config(**overrides) -> GRPOConfig:
    base = {
        "steps": 4,
        "prompts_per_step": 4,
        "group_size": 4,
        "mini_batch_size": 8,
        "micro_batch_size": 4,
        "epochs": 2,
        "lr": 3e-3,
        "sampling": SamplingConfig(12, 1.0, 16),
        "kl_coef": 0.01,
        "missing_eos_penalty": None,
    }
    return GRPOConfig(**{**base, **overrides})


def make_trainer(config: GRPOConfig, reward_fn=None, arch="llama"):
    reference, tok = tiny_model_and_tokenizer(arch, seed=0)
    return GRPOTrainer(
        copy.deepcopy(reference), reference, reward_fn or count_reward(), tok, PROMPTS, config, setup=CPU
    )


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kl_penalty", ["k1_reward", "k3_loss"])
def test_lr_zero_changes_nothing(kl_penalty):
    """Old log-probs come from the training forward: the ratio is 1 in every epoch and minibatch,
    nothing is clipped, the KL to the reference stays 0, and the parameters do not move."""
    trainer = make_trainer(small_config(lr=0.0, kl_penalty=kl_penalty, advantage="rloo"))
    before = params(trainer.policy)
    for _ in range(2):
        m = trainer.step()
        assert m["health/first_ratio_dev"] < 1e-5
        assert abs(m["policy/ratio_max"] - 1) < 1e-5 and m["policy/clipfrac"] == 0.0
        assert m["objective/kl"] == 0.0 and m["policy/approxkl"] < 1e-10
    assert all(torch.equal(before[k], v) for k, v in params(trainer.policy).items())


def test_non_finite_log_probs_on_padding_stay_out_of_the_loop():
    """inf log-probs after the EOS (padding the masks exclude): the rollout, the loss and the logged
    statistics are finite (x * mask would turn them into NaN)."""
    trainer = make_trainer(small_config(steps=1, epochs=2, mini_batch_size=8))
    forward = trainer.forward

    def garbage_on_padding(model, input_ids, attention_mask, context_length):
        logps = forward(model, input_ids, attention_mask, context_length)  # (b, R)
        return logps.masked_fill(attention_mask[:, context_length:] == 0, float("inf"))

    trainer.forward = garbage_on_padding
    metrics, rollout = trainer.step(keep_rollout=True)
    assert (rollout.response_mask == 0).any(), "no padding: the check shows nothing"
    for key in (
        "policy/ratio_max",
        "policy/approxkl",
        "policy/clipfrac",
        "health/first_ratio_dev",
        "policy/loss",
        "policy/entropy",
        "objective/kl",
    ):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["health/first_ratio_dev"] < 1e-5


def test_logged_lr_is_the_lr_of_the_step():
    """`policy/lr` is the learning rate the step's updates used: the configured lr at the first
    step, then the linear decay lr * (1 - s / steps), not the schedule's value one step later."""
    trainer = make_trainer(small_config(steps=4, epochs=1))
    history = [trainer.step() for _ in range(2)]
    assert history[0]["policy/lr"] == pytest.approx(3e-3, rel=1e-12)
    assert history[1]["policy/lr"] == pytest.approx(3e-3 * (1 - 1 / 4), rel=1e-12)


def test_first_minibatch_ratio_is_one_while_training_moves_the_policy():
    trainer = make_trainer(small_config(steps=2, mini_batch_size=4))
    before = params(trainer.policy)
    for _ in range(2):
        m = trainer.step()
        assert m["health/first_ratio_dev"] < 1e-5
        assert m["policy/ratio_max"] > 1.0 + 1e-4  # later minibatches see an updated policy
    assert any(not torch.equal(before[k], v) for k, v in params(trainer.policy).items())
    assert m["objective/kl"] != 0.0


def test_ratio_health_check_warns_when_old_and_new_log_probs_differ():
    """Dropout switched back on after the trainer disabled it: the first minibatch's ratio is off 1
    and GRPO warns, with PPO's check (`training.warn_if_first_ratio_off`)."""
    trainer = make_trainer(small_config(steps=1, epochs=1))
    for module in trainer.policy.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    with pytest.warns(UserWarning, match="GRPO step 0: the first minibatch's ratio is off 1"):
        metrics = trainer.step()
    assert metrics["health/first_ratio_dev"] > 1e-2


def test_ratio_health_check_is_quiet_when_nothing_is_wrong():
    trainer = make_trainer(small_config(steps=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(progress=False)
    assert not [w for w in caught if "ratio is off" in str(w.message)]


def test_same_seed_same_run():
    runs = []
    for _ in range(2):
        trainer = make_trainer(small_config(steps=2))
        history = trainer.train(progress=False)
        runs.append([(h["objective/score"], h["policy/loss"], h["objective/kl"]) for h in history])
    assert runs[0] == runs[1]
    other = make_trainer(small_config(steps=2, seed=1)).train(progress=False)
    assert [(h["objective/score"], h["policy/loss"], h["objective/kl"]) for h in other] != runs[0]


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "token_sum"])
def test_gradient_accumulation_matches_one_minibatch(aggregation):
    """Micro-batches of 2 accumulated over a minibatch of 8 give the same update as one pass over
    the 8 (a plain SGD step, so the comparison sees the gradient itself)."""
    results = []
    for micro in (8, 2):
        trainer = make_trainer(
            small_config(
                steps=1,
                epochs=1,
                prompts_per_step=2,
                micro_batch_size=micro,
                loss_aggregation=aggregation,
                max_grad_norm=1e9,
                kl_penalty="k2_loss",
            ),
            reward_fn=lambda prompts, texts, eos: torch.tensor([float(len(t)) for t in texts]),
        )
        trainer.optimizer = torch.optim.SGD(trainer.params, lr=0.5)
        _, rollout = trainer.step(keep_rollout=True)
        results.append(params(trainer.policy))
    assert len(set(rollout.response_mask.sum(dim=1).tolist())) > 1, "equal lengths would not test the weighting"
    start = params(make_trainer(small_config()).policy)
    assert any(not torch.equal(results[0][k], start[k]) for k in start), "the update moved nothing"
    for k in results[0]:
        torch.testing.assert_close(results[1][k], results[0][k], rtol=1e-4, atol=1e-6)


def mean_of(history, key, part):
    return sum(h[key] for h in part(history)) / 3


@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo", "rloo"])
def test_grpo_and_rloo_raise_a_programmatic_reward(advantage):
    """The count of one letter (about 0.05 per response at first) rises within seconds, and the
    policy moves away from the reference (KL > 0, finite)."""
    history = make_trainer(small_config(steps=24, epochs=4, advantage=advantage)).train(progress=False)
    first = mean_of(history, "objective/score", lambda h: h[:3])
    last = mean_of(history, "objective/score", lambda h: h[-3:])
    assert last > first + 3.0, (first, last)
    assert history[0]["objective/frac_zero_std"] > 0.5  # at first most groups carry no signal
    assert all(torch.isfinite(torch.tensor(h["objective/kl"])) for h in history)
    assert mean_of(history, "objective/kl", lambda h: h[-3:]) > 5.0


def test_a_large_kl_coefficient_keeps_the_policy_at_the_reference():
    """The same run with kl_coef 10 (k1 in the reward, the default): the score barely moves."""
    history = make_trainer(small_config(steps=12, epochs=4, kl_coef=10.0)).train(progress=False)
    assert abs(mean_of(history, "objective/kl", lambda h: h[-3:])) < 2.0
    assert mean_of(history, "objective/score", lambda h: h[-3:]) < 1.0


def test_train_grpo_and_the_missing_eos_penalty():
    reference, tok = tiny_model_and_tokenizer()
    seen = []
    trainer = train_grpo(
        copy.deepcopy(reference),
        reference,
        count_reward(),
        tok,
        PROMPTS,
        small_config(steps=2, missing_eos_penalty=5.0, sampling=SamplingConfig(4, 1.0, 16)),
        setup=CPU,
        progress=False,
        on_step=lambda step, m: seen.append(step),
    )
    assert seen == [1, 2] and [h["step"] for h in trainer.history] == [1, 2]
    _, rollout = trainer.step(keep_rollout=True)
    assert (~rollout.samples.has_eos).any(), "4 new tokens should leave some responses unfinished"
    expected = rollout.raw_scores - 5.0 * (~rollout.samples.has_eos.to(rollout.raw_scores.device)).float()
    torch.testing.assert_close(rollout.scores, expected)


def test_bad_reward_fn_output_is_named():
    trainer = make_trainer(small_config(steps=1), reward_fn=lambda p, t, e: torch.full((len(t),), float("nan")))
    with pytest.raises(FloatingPointError, match="reward_fn scores"):
        trainer.step()
    trainer = make_trainer(small_config(steps=1), reward_fn=lambda p, t, e: torch.zeros(3))
    with pytest.raises(ValueError, match="reward_fn returned shape"):
        trainer.step()


def test_a_reward_model_scores_the_sampled_tokens_as_in_ppo():
    """GRPO with `reward_model_scorer` pays each response the reward model's score of the sampled
    token ids (what PPO scores), not of its decoded, stripped text re-tokenized, which differs for
    some samples (special tokens dropped, whitespace stripped)."""
    from rlhf_edu.reward import RewardModel, score_texts

    reference, tok = tiny_model_and_tokenizer(seed=0)
    rm = RewardModel.from_causal_lm(tiny_model_and_tokenizer(seed=2)[0])
    trainer = GRPOTrainer(
        copy.deepcopy(reference),
        reference,
        reward_model_scorer(rm, tok, batch_size=3),
        tok,
        PROMPTS,
        small_config(steps=1, epochs=1),
        setup=CPU,
    )
    _, rollout = trainer.step(keep_rollout=True)
    with torch.no_grad():
        on_ids = rm(rollout.input_ids, rollout.attention_mask)  # (B,) the sampled tokens, as PPO scores them
    torch.testing.assert_close(rollout.raw_scores, on_ids, atol=1e-5, rtol=0)
    s = rollout.samples
    on_text = score_texts(rm, tok, rollout.prompts, s.texts, eos=s.has_eos.tolist())  # (B,)
    assert (on_text - on_ids).abs().max() > 1e-3, "re-tokenized text scores the same: the check shows nothing"


def test_reward_model_scorer_matches_score_texts():
    from rlhf_edu.reward import RewardModel, score_texts

    lm, tok = tiny_model_and_tokenizer(seed=2)
    rm = RewardModel.from_causal_lm(lm)
    prompts, texts, eos = ["q one", "q two", "q three"], ["abc", "hello there", "zz"], [True, False, True]
    scores = reward_model_scorer(rm, tok, batch_size=2)(prompts, texts, eos)
    torch.testing.assert_close(scores, score_texts(rm, tok, prompts, texts, eos=eos))
    assert scores.shape == (3,) and scores[0] != scores[2]
