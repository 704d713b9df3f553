"""rlhf_edu.trunk: the frozen lower blocks computed once give the same numbers as full forwards."""

import copy

import pytest
import torch
from test_ppo_loop import CPU, PROMPTS, make_trainer, small_config

from rlhf_edu.generation import SamplingConfig, sample
from rlhf_edu.logprobs import per_token_logps
from rlhf_edu.models import tiny_model_and_tokenizer
from rlhf_edu.ppo_trainer import PPOTrainer
from rlhf_edu.reward import RewardModel
from rlhf_edu.training import freeze_lower_layers
from rlhf_edu.trunk import FrozenTrunk


def rollout_batch(arch="llama", n=4):
    model, tok = tiny_model_and_tokenizer(arch, seed=0)
    model.eval()
    samples = sample(
        model,
        tok,
        [f"question {i}" for i in range(n)],
        SamplingConfig(10, 1.0, n),
        generator=torch.Generator().manual_seed(0),
    )
    return model, samples


def test_trunk_logps_equal_full_forward_logps():
    model, s = rollout_batch()
    freeze_lower_layers(model, 1)
    trunk = FrozenTrunk(model, trainable_layers=1)
    assert trunk.enabled and trunk.n_frozen == 1
    hidden = trunk.hidden(model, s.input_ids, s.attention_mask)
    assert hidden.shape == (*s.input_ids.shape, model.config.hidden_size)
    full, full_h = per_token_logps(model, s.input_ids, s.attention_mask, s.context_length, 0.7, return_hidden=True)
    fast, fast_h = trunk.logps(model, hidden, s.input_ids, s.attention_mask, s.context_length, 0.7, return_hidden=True)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast_h, full_h, atol=1e-5, rtol=0)
    assert trunk.check(model, s.input_ids, s.attention_mask, s.context_length, 0.7) < 1e-5
    assert len(model.model.layers) == 2  # the block list is restored after each call


def test_trunk_is_off_for_gpt2_without_frozen_blocks_and_after_a_failed_check():
    gpt2, _ = tiny_model_and_tokenizer("gpt2", seed=0)
    assert not FrozenTrunk(gpt2, trainable_layers=1).enabled  # GPT-2 adds position embeddings to inputs_embeds
    model, s = rollout_batch()
    assert not FrozenTrunk(model, trainable_layers=None).enabled
    assert not FrozenTrunk(model, trainable_layers=2).enabled  # all blocks train
    trunk = FrozenTrunk(model, trainable_layers=1)
    assert trunk.check(model, s.input_ids, s.attention_mask, s.context_length, 1.0, atol=-1.0) >= 0
    assert not trunk.enabled and "differed" in trunk.reason


def test_reference_shares_the_trunk_only_with_equal_lower_blocks():
    model, _ = tiny_model_and_tokenizer("llama", seed=0)
    same = copy.deepcopy(model)
    other, _ = tiny_model_and_tokenizer("llama", seed=1)
    assert FrozenTrunk(model, 1, same).shared_with_reference
    assert not FrozenTrunk(model, 1, other).shared_with_reference
    with torch.no_grad():
        same.model.layers[1].mlp.up_proj.weight.add_(1.0)  # a trainable block may differ
        same.model.layers[1].input_layernorm.weight.mul_(3.0)  # so may its norms
        same.model.norm.weight.mul_(3.0)  # and the final norm, which sits above the trunk
    assert FrozenTrunk(model, 1, same).shared_with_reference


@pytest.mark.parametrize("norm", ["input_layernorm", "post_attention_layernorm"])
def test_reference_with_another_norm_in_a_frozen_block_does_not_share_the_trunk(norm):
    """The frozen blocks' norms are part of the trunk: a reference whose layers.0 norm differs
    computes another trunk, so it must not be handed the policy's."""
    model, _ = tiny_model_and_tokenizer("llama", seed=0)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        getattr(reference.model.layers[0], norm).weight.mul_(3.0)
    assert not FrozenTrunk(model, 1, reference).shared_with_reference


@pytest.mark.parametrize("critic", ["shared", "reward_model"])
def test_ppo_with_the_trunk_repeats_ppo_with_full_forwards(critic):
    def run(enabled: bool):
        reference, tok = tiny_model_and_tokenizer("llama", seed=0)
        reward = RewardModel.from_causal_lm(tiny_model_and_tokenizer("llama", seed=3)[0])
        cfg = small_config(trainable_layers=1, critic=critic, steps=3)
        trainer = PPOTrainer(copy.deepcopy(reference), reference, reward, tok, PROMPTS, cfg, setup=CPU)
        if not enabled:
            trainer.trunk.enabled = False
        history = trainer.train(progress=False)
        return trainer, history

    fast, h_fast = run(True)
    slow, h_slow = run(False)
    assert fast.trunk.enabled and fast.trunk.shared_with_reference and fast.trunk_gap < 1e-5
    assert "health/trunk_gap" in h_fast[0] and "health/trunk_gap" not in h_slow[0]
    for a, b in zip(h_fast, h_slow):
        assert a["health/first_ratio_dev"] < 1e-5
        for key in ("objective/score", "objective/kl", "policy/approxkl", "val/explained_variance"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    for p, q in zip(fast.policy.parameters(), slow.policy.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=0)


def test_trainer_without_frozen_blocks_runs_full_forwards():
    trainer = make_trainer(small_config(steps=1))
    assert not trainer.trunk.enabled
    metrics, rollout = trainer.step(keep_rollout=True)
    assert rollout.trunk is None and "health/trunk_gap" not in metrics
