"""The PPO loop of rlhf_edu.ppo on tiny random models: docs/implementation_details.md#ppo-tests
(first step a no-op, lr = 0, gradient accumulation, toy learning test) plus resume and failures."""

import copy
import math

import pytest
import torch

from rlhf_edu.devices import device_setup
from rlhf_edu.generation import SamplingConfig
from rlhf_edu.models import tiny_model_and_tokenizer
from rlhf_edu.ppo_loop import PPOConfig
from rlhf_edu.ppo_trainer import PPOTrainer
from rlhf_edu.reward import RewardModel

CPU = device_setup("cpu")  # this CPU's dtype rule, or RLHF_EDU_DTYPE
PROMPTS = [f"question {i}" for i in range(24)]


class CountReward(torch.nn.Module):
    """A programmatic reward: how often one token id appears among the real tokens."""

    def __init__(self, token_id: int, value: float | None = None):
        super().__init__()
        self.token_id, self.value = token_id, value

    def forward(self, input_ids, attention_mask):
        counts = ((input_ids == self.token_id) & (attention_mask == 1)).float().sum(dim=1)  # (B,)
        return counts if self.value is None else torch.full_like(counts, self.value)


def make_trainer(config: PPOConfig, seed: int = 0, reward=None, arch: str = "llama", policy_seed: int | None = None):
    """Policy and reference both start from the tiny model of `seed` (the policy from `policy_seed`
    when given, to check that a checkpoint overwrites it)."""
    reference, tok = tiny_model_and_tokenizer(arch, seed=seed)
    policy = copy.deepcopy(reference) if policy_seed is None else tiny_model_and_tokenizer(arch, seed=policy_seed)[0]
    reward = reward or CountReward(tok.convert_tokens_to_ids("a"))
    return PPOTrainer(policy, reference, reward, tok, PROMPTS, config, setup=CPU)


def small_config(**overrides) -> PPOConfig:
    base = {
        "steps": 4,
        "batch_size": 8,
        "mini_batch_size": 4,
        "micro_batch_size": 4,
        "ppo_epochs": 2,
        "lr": 3e-3,
        "sampling": SamplingConfig(12, 1.0, 8),
        "kl_coef": 0.01,
        "missing_eos_penalty": None,
        "eval_every": 1000,
    }
    return PPOConfig(**{**base, **overrides})


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_first_minibatch_is_a_no_op(arch):
    """Old log-probs recomputed by the training forward give ratio 1, approx-KL 0."""
    trainer = make_trainer(small_config(steps=2), arch=arch)
    for _ in range(2):
        m = trainer.step()
        assert m["health/first_ratio_dev"] < 1e-5
        assert m["health/first_approxkl"] < 1e-10


def test_ratio_health_check_warns():
    """A first-minibatch ratio off 1 by more than the tolerance is reported, not silently trained on
    (here forced with a negative tolerance, since the plumbing itself gives exactly 1)."""
    trainer = make_trainer(small_config(steps=1, ratio_tolerance=-1.0))
    with pytest.warns(UserWarning, match="first minibatch's ratio is off 1"):
        trainer.step()


def test_lr_zero_changes_nothing():
    """With lr = 0 the ratio stays 1 in every epoch, KL to the reference stays 0, and
    the parameters do not move."""
    trainer = make_trainer(small_config(lr=0.0, ppo_epochs=3))
    before = params(trainer.policy)
    for _ in range(3):
        m = trainer.step()
        assert m["objective/kl"] == 0.0
        assert abs(m["policy/ratio_max"] - 1) < 1e-5 and m["policy/clipfrac"] == 0.0
    after = params(trainer.policy)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("critic", ["shared", "reward_model"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_values_are_padding_invariant_and_start_at_the_last_query_token(arch, critic):
    """Plumbing invariants for the critic (docs/implementation_details.md#plumbing-tests): a
    response's values are the same alone and in a left-padded batch with a longer neighbour, and
    values[:, 0] is the critic read at the hidden state of the last query token."""
    from rlhf_edu.generation import encode_prompts

    reference, tok = tiny_model_and_tokenizer(arch, seed=0)
    rm = RewardModel.from_causal_lm(tiny_model_and_tokenizer(arch, seed=3)[0])
    trainer = PPOTrainer(copy.deepcopy(reference), reference, rm, tok, PROMPTS, small_config(critic=critic), setup=CPU)
    if critic == "shared":  # zero-initialized: give the head weights that read something
        torch.nn.init.normal_(trainer.value_head.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    prompt_ids, prompt_mask = encode_prompts(tok, ["hi", "a much longer neighbour prompt"])  # (2, P) left-padded
    response = torch.tensor([[30, 31, 32, 33]] * 2)  # (2, R)
    ids = torch.cat([prompt_ids, response], 1)  # (2, P+R)
    mask = torch.cat([prompt_mask, torch.ones_like(response)], 1)  # (2, P+R)
    query, _ = encode_prompts(tok, ["hi"])  # (1, P') the short prompt alone, unpadded
    alone = torch.cat([query, response[:1]], 1)  # (1, P'+R)
    with torch.no_grad():
        _, batched = trainer.forward(ids, mask, prompt_ids.shape[1])  # (2, R)
        _, single = trainer.forward(alone, torch.ones_like(alone), query.shape[1])  # (1, R)
        torch.testing.assert_close(batched[0], single[0], atol=1e-5, rtol=0)
        if critic == "shared":
            h = trainer.policy(input_ids=query, output_hidden_states=True).hidden_states[-1][0, -1]  # (H,)
            by_hand = trainer.value_head(h)  # (1,)
        else:
            h = trainer.critic.backbone(input_ids=query).last_hidden_state[0, -1]  # (H,)
            by_hand = trainer.critic.gain * trainer.critic.head(h) + trainer.critic.bias  # (1,)
    assert by_hand.abs().item() > 1e-3, "a value of 0 would not test the position"
    torch.testing.assert_close(single[0, 0], by_hand[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[0, 0], by_hand[0], atol=1e-5, rtol=0)


def test_non_finite_numbers_on_padding_stay_out_of_the_loop():
    """inf log-probs and NaN values after the EOS (padding the masks exclude): the rollout, the
    losses and the logged statistics are finite (x * mask would turn them into NaN)."""
    trainer = make_trainer(small_config(steps=1))
    forward = trainer.forward

    def garbage_on_padding(input_ids, attention_mask, context_length, trunk=None):
        logps, values = forward(input_ids, attention_mask, context_length, trunk)  # (b, R), (b, R)
        pad = attention_mask[:, context_length:] == 0  # (b, R) after the EOS
        return logps.masked_fill(pad, float("inf")), values.masked_fill(pad, float("nan"))

    trainer.forward = garbage_on_padding
    metrics, rollout = trainer.step(keep_rollout=True)
    assert (rollout.response_mask == 0).any(), "no padding: the check shows nothing"
    for key in (
        "policy/ratio_max",
        "policy/ratio_mean",
        "health/first_ratio_dev",
        "health/first_ratio_dev_mean",
        "policy/loss",
        "val/loss",
        "policy/entropy",
        "objective/kl",
        "val/explained_variance",
    ):
        assert math.isfinite(metrics[key]), key
    assert metrics["health/first_ratio_dev"] < 1e-5


def test_logged_lr_is_the_lr_of_the_step():
    """`policy/lr` is the learning rate the step's updates used: the configured lr at the first
    step, then the linear decay lr * (1 - s / steps), not the schedule's value one step later."""
    trainer = make_trainer(small_config(steps=4, ppo_epochs=1))
    history = [trainer.step() for _ in range(2)]
    assert history[0]["policy/lr"] == pytest.approx(3e-3, rel=1e-12)
    assert history[1]["policy/lr"] == pytest.approx(3e-3 * (1 - 1 / 4), rel=1e-12)


def test_entropy_and_reward_whitening_are_the_documented_choices():
    """Both are named in rlhf_edu/ppo_loop.py: `policy/entropy` is a per-token mean of -log pi(y_t)
    (OpenAI and TRL log the per-response sum), and `whiten_rewards` divides by the unbiased std over
    the whole batch's response tokens, keeping the mean (OpenAI: the biased one, per minibatch)."""
    from rlhf_edu.ppo import per_token_rewards

    trainer = make_trainer(small_config(steps=1, whiten_rewards=True))
    metrics, rollout = trainer.step(keep_rollout=True)
    mask = rollout.response_mask.bool()  # (B, R)
    assert metrics["policy/entropy"] == pytest.approx(float(-rollout.old_logps[mask].mean()), rel=1e-6)
    rewards, _ = per_token_rewards(
        rollout.scores, rollout.old_logps, rollout.ref_logps, rollout.response_mask, trainer.config.kl_coef
    )  # (B, R) before whitening
    valid = rewards[mask]  # (N,) the batch's response tokens
    whitened = (valid - valid.mean()) / torch.sqrt(valid.var(unbiased=True) + 1e-8) + valid.mean()  # (N,)
    torch.testing.assert_close(rollout.rewards[mask], whitened, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_gradient_accumulation_matches_one_minibatch():
    """Micro-batches of 2 accumulated over a minibatch of 4 give the same update as one
    pass over the 4 (with a plain SGD step, so the comparison sees the gradient itself)."""
    results = []
    for micro in (4, 2):
        trainer = make_trainer(small_config(steps=1, ppo_epochs=1, micro_batch_size=micro, max_grad_norm=1e9))
        trainer.optimizer = torch.optim.SGD(trainer.params, lr=0.5)
        _, rollout = trainer.step(keep_rollout=True)
        results.append((params(trainer.policy), rollout.response_mask.sum(dim=1)))
    (full, lengths), (accumulated, _) = results
    assert len(set(lengths.tolist())) > 1, "responses of equal length would not test the token weighting"
    changed = [k for k in full if not torch.equal(full[k], params(make_trainer(small_config()).policy)[k])]
    assert changed, "the update moved nothing"
    for k in full:
        torch.testing.assert_close(accumulated[k], full[k], rtol=1e-4, atol=1e-6)


def test_ppo_raises_a_programmatic_reward():
    """The count of one token rises within a few seconds; with a huge KL coefficient
    the policy stays at the reference."""
    trainer = make_trainer(small_config(steps=25, batch_size=16, mini_batch_size=8, ppo_epochs=4))
    history = trainer.train(progress=False)
    first = sum(h["objective/score"] for h in history[:3]) / 3
    last = sum(h["objective/score"] for h in history[-3:]) / 3
    assert last > first + 2.0, (first, last)
    assert all(torch.isfinite(torch.tensor(h["objective/kl"])) for h in history)

    tight = make_trainer(small_config(steps=10, batch_size=16, mini_batch_size=8, ppo_epochs=4, kl_coef=50.0, lr=1e-3))
    history = tight.train(progress=False)
    assert abs(history[-1]["objective/kl"]) < 1.0


def test_train_ppo_runs_the_configured_steps():
    from rlhf_edu.ppo_trainer import train_ppo

    reference, tok = tiny_model_and_tokenizer()
    trainer = train_ppo(
        copy.deepcopy(reference),
        reference,
        CountReward(5),
        tok,
        PROMPTS,
        small_config(steps=2),
        setup=CPU,
        progress=False,
    )
    assert [h["step"] for h in trainer.history] == [1, 2]


def test_resume_gives_the_same_run(tmp_path):
    """Interrupt after 2 of 4 steps, resume in a fresh trainer: the same metrics and weights."""
    config = small_config(steps=4, kl_target=2.0)
    straight = make_trainer(config)
    straight.train(progress=False)

    first = make_trainer(config)
    first.train(2, progress=False, checkpoint_dir=tmp_path / "ckpt")
    resumed = make_trainer(config, policy_seed=1)  # other weights: the checkpoint must overwrite them
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.step_count == 2
    resumed.train(progress=False)

    assert [h["objective/score"] for h in resumed.history] == [h["objective/score"] for h in straight.history]
    assert resumed.kl_controller.kl_coef == straight.kl_controller.kl_coef
    a, b = params(straight.policy), params(resumed.policy)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(straight.value_head.weight, resumed.value_head.weight)


def test_resume_refuses_another_config(tmp_path):
    trainer = make_trainer(small_config(steps=1))
    trainer.train(progress=False, checkpoint_dir=tmp_path / "ckpt")
    other = make_trainer(small_config(steps=1, lr=1e-4))
    with pytest.raises(ValueError, match="another PPOConfig"):
        other.load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="no PPO checkpoint"):
        other.load_checkpoint(tmp_path / "nowhere")


def test_nan_reward_stops_with_the_quantity_named():
    trainer = make_trainer(small_config(steps=1), reward=CountReward(5, value=float("nan")))
    with pytest.raises(FloatingPointError, match="reward-model score"):
        trainer.step()


def test_separate_critic_from_the_reward_model():
    """critic="reward_model": values come from a copy of the reward model (Stiennon et al.)."""
    policy, tok = tiny_model_and_tokenizer()
    backbone_lm, _ = tiny_model_and_tokenizer(seed=3)
    rm = RewardModel.from_causal_lm(backbone_lm)
    trainer = PPOTrainer(
        policy,
        copy.deepcopy(policy),
        rm,
        tok,
        PROMPTS,
        small_config(critic="reward_model", trainable_layers=1),
        setup=CPU,
    )
    rm_before = params(rm)
    m = trainer.step()
    assert m["health/first_ratio_dev"] < 1e-5 and m["val/loss"] > 0
    assert all(torch.equal(rm_before[k], v) for k, v in params(rm).items()), "the reward model must stay frozen"
    frozen = [p for n, p in trainer.policy.named_parameters() if "layers.0." in n]
    assert frozen and not any(p.requires_grad for p in frozen)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 10, "mini_batch_size": 4}, "multiple of mini_batch_size"),
        ({"critic": "twin"}, "critic must be"),
        ({"missing_eos_mode": "drop"}, "missing_eos_mode"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_bad_config_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def count_letter(letter: str):
    """A reward function of text, as a learner would write one: how often a letter appears."""

    def reward(prompts, texts, eos_flags):
        return torch.tensor([float(text.count(letter)) for text in texts])

    return reward


def test_ppo_takes_a_reward_function_of_text():
    """A plain function of (prompts, texts, eos_flags) pays the policy: the rollout's scores are the
    function of its decoded texts, and PPO raises it as it raises a reward model's score."""
    reward = count_letter("a")
    trainer = make_trainer(small_config(steps=25, batch_size=16, mini_batch_size=8, ppo_epochs=4), reward=reward)
    metrics, rollout = trainer.step(keep_rollout=True)
    expected = reward(rollout.prompts, rollout.samples.texts, rollout.samples.has_eos.tolist())
    assert torch.equal(rollout.rm_scores.cpu(), expected) and metrics["objective/score"] == float(expected.mean())
    history = trainer.train(progress=False)
    first = sum(h["objective/score"] for h in history[:3]) / 3
    last = sum(h["objective/score"] for h in history[-3:]) / 3
    assert last > first + 1.0, (first, last)
    with pytest.raises(ValueError, match="with a reward function use critic='shared'"):
        make_trainer(small_config(critic="reward_model"), reward=reward)


def test_rubric_reward_and_mix():
    from rlhf_edu.reward_functions import mix, rubric_reward
    from rlhf_edu.rubric import score

    prompts = ["Explain rain to a 10-year-old."] * 2
    texts = ["Rain is water that falls from clouds. It fills puddles.", "rain rain rain rain"]
    gold = rubric_reward(prompts, texts, [True, False])
    assert gold.tolist() == pytest.approx([score(prompts[0], texts[0])[0], score(prompts[1], texts[1], eos=False)[0]])
    both = mix({rubric_reward: 2.0, count_letter("r"): 0.5})(prompts, texts, [True, False])
    assert both.tolist() == pytest.approx((2.0 * gold + 0.5 * torch.tensor([2.0, 4.0])).tolist())  # r in water, from
