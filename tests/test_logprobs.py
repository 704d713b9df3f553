"""Plumbing invariants (docs/implementation_details.md#plumbing-tests) and the masked statistics."""

import pytest
import torch
import torch.nn.functional as F

from rlhf_edu.generation import SamplingConfig, encode_prompts, sample
from rlhf_edu.logprobs import (
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    per_token_logps,
    position_ids_from_mask,
    response_mask_from_eos,
    selective_log_softmax,
    truncate_after_eos,
)

EOS, PAD = 2, 0


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_truncation_after_first_eos():
    a, b, x, y = 10, 11, 12, 13
    ids = torch.tensor([[a, b, EOS, x, y], [a, b, x, y, a]])
    truncated, mask, has_eos = truncate_after_eos(ids, EOS, PAD)
    assert truncated.tolist() == [[a, b, EOS, PAD, PAD], [a, b, x, y, a]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert has_eos.tolist() == [True, False]


def test_response_mask_when_pad_equals_eos():
    # A mask built from `ids != pad` would hide the real EOS when pad == EOS; ours keeps it.
    ids = torch.tensor([[5, EOS, EOS, EOS]])
    assert response_mask_from_eos(ids, EOS).tolist() == [[1, 1, 0, 0]]


def test_selective_log_softmax_matches_naive():
    torch.manual_seed(0)
    logits, index = torch.randn(3, 4, 7), torch.randint(0, 7, (3, 4))
    naive = torch.stack(
        [torch.stack([F.log_softmax(logits[b, t], -1)[index[b, t]] for t in range(4)]) for b in range(3)]
    )
    torch.testing.assert_close(selective_log_softmax(logits, index), naive)


def test_masked_mean_var_whiten_match_naive():
    torch.manual_seed(0)
    x, mask = torch.randn(4, 6), (torch.rand(4, 6) > 0.3).long()
    values = x[mask.bool()]
    torch.testing.assert_close(masked_mean(x, mask), values.mean())
    torch.testing.assert_close(masked_var(x, mask), values.var(unbiased=True))
    white = masked_whiten(x, mask)
    torch.testing.assert_close(white[mask.bool()], (values - values.mean()) / (values.var() + 1e-8).sqrt())
    assert (white[~mask.bool()] == 0).all()
    # Reference value: [1, 2, 3] whitens to [-1, 0, 1] (unbiased std is 1).
    torch.testing.assert_close(
        masked_whiten(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3)), torch.tensor([-1.0, 0.0, 1.0])
    )
    torch.testing.assert_close(
        masked_mean(torch.tensor([[1.0, 2.0], [3.0, 9.0]]), torch.tensor([[1, 1], [1, 0]]), dim=1),
        torch.tensor([1.5, 3.0]),
    )


def test_masked_sum_reference_value_through_padding():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(masked_sum(x, mask, dim=1), torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(masked_sum(x, mask), torch.tensor(7.0))


def test_whitening_reference_values_and_invariants():  # docs/implementation_details.md#ppo-tests
    torch.manual_seed(0)
    x, mask = 3.0 + 2.0 * torch.randn(4, 6, dtype=torch.float64), (torch.rand(4, 6) > 0.3).long()
    white = masked_whiten(x, mask)  # the library's choice: the unbiased variance
    torch.testing.assert_close(masked_mean(white, mask), torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(masked_var(white, mask), torch.tensor(1.0, dtype=torch.float64), atol=1e-7, rtol=0)
    kept = masked_whiten(x, mask, shift_mean=False)  # scaled, the mean kept
    torch.testing.assert_close(masked_mean(kept, mask), masked_mean(x, mask), atol=1e-12, rtol=0)
    torch.testing.assert_close(masked_var(kept, mask), torch.tensor(1.0, dtype=torch.float64), atol=1e-7, rtol=0)
    # The TF-vs-torch example (biased variance, shift_mean=False), from the N-implementation-details blog.
    tf = torch.tensor([[1.2, 1.3, 1.4], [1.5, 1.6, 1.7], [1.8, 1.9, 2.0]], dtype=torch.float64)
    expected = [[0.0508, 0.4381, 0.8254], [1.2127, 1.6000, 1.9873], [2.3746, 2.7619, 3.1492]]
    out = masked_whiten(tf, torch.ones(3, 3), shift_mean=False, unbiased=False)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("garbage", [float("inf"), float("-inf"), float("nan"), 1e30])
def test_masked_statistics_ignore_non_finite_padding(garbage):  # SkyRL PR #1782
    """inf or NaN on padding must not reach the statistics: x * mask would turn them into NaN."""
    torch.manual_seed(0)
    x, mask = torch.randn(4, 6), (torch.rand(4, 6) > 0.3).long()
    clean, dirty = x.masked_fill(mask == 0, 0.0), x.masked_fill(mask == 0, garbage)
    for dim in (None, 1):
        assert torch.equal(masked_sum(dirty, mask, dim), masked_sum(clean, mask, dim))
        assert torch.equal(masked_mean(dirty, mask, dim), masked_mean(clean, mask, dim))
    for unbiased in (True, False):
        assert torch.equal(masked_var(dirty, mask, unbiased), masked_var(clean, mask, unbiased))
    for shift_mean in (True, False):
        white = masked_whiten(dirty, mask, shift_mean=shift_mean)
        assert torch.isfinite(white).all()
        assert torch.equal(white, masked_whiten(clean, mask, shift_mean=shift_mean))


def test_first_response_logp_by_hand(tiny):  # off-by-one
    model, tok = tiny
    T = 0.7
    prompt_ids, prompt_mask = encode_prompts(tok, ["hello", "a longer prompt"])
    response = torch.tensor([[40, 41, 42], [50, 51, 52]])
    ids = torch.cat([prompt_ids, response], 1)
    mask = torch.cat([prompt_mask, torch.ones_like(response)], 1)
    logps = per_token_logps(model, ids, mask, prompt_ids.shape[1], T)
    assert logps.shape == response.shape
    for b in range(2):
        real = prompt_mask[b].bool()
        q = prompt_ids[b, real][None]  # the unpadded query alone
        by_hand = F.log_softmax(model(q).logits[0, -1] / T, -1)[response[b, 0]]
        torch.testing.assert_close(logps[b, 0], by_hand, atol=1e-5, rtol=1e-5)


def test_sampling_logps_equal_full_forward(tiny):  # with left padding
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.7, batch_size=3)
    s = sample(model, tok, ["hi", "tell me about rain", "x y"], cfg, generator=torch.Generator().manual_seed(1))
    assert s.prompt_mask[:, 0].tolist().count(0) >= 1  # some row is left-padded
    logps = per_token_logps(model, s.input_ids, s.attention_mask, s.context_length, cfg.temperature)
    torch.testing.assert_close(logps * s.response_mask, s.logps, atol=1e-5, rtol=0)


def _logps_alone_and_batched(model, tok, use_position_ids=True):
    short, long = "hi", "a much longer neighbour prompt"
    ids, mask = encode_prompts(tok, [short, long])
    resp = torch.tensor([[30, 31, 32, 33]] * 2)
    full_ids = torch.cat([ids, resp], 1)
    full_mask = torch.cat([mask, torch.ones_like(resp)], 1)
    alone_ids, alone_mask = encode_prompts(tok, [short])
    alone_full = torch.cat([alone_ids, resp[:1]], 1)
    alone_m = torch.cat([alone_mask, torch.ones_like(resp[:1])], 1)
    if use_position_ids:
        batched = per_token_logps(model, full_ids, full_mask, ids.shape[1])[0]
    else:
        out = model(input_ids=full_ids, attention_mask=full_mask).logits[0, ids.shape[1] - 1 : -1]
        batched = selective_log_softmax(out, full_ids[0, ids.shape[1] :])
    alone = per_token_logps(model, alone_full, alone_m, alone_ids.shape[1])[0]
    return alone, batched


def test_padding_invariance_with_position_ids(tiny):
    model, tok = tiny
    alone, batched = _logps_alone_and_batched(model, tok)
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=0)


def test_gpt2_without_position_ids_is_not_padding_invariant():
    # The teaching counterpart of the test above: GPT-2's absolute positions see padding.
    from rlhf_edu.models import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer("gpt2")
    alone, batched = _logps_alone_and_batched(model, tok, use_position_ids=False)
    assert (alone - batched).abs().max() > 1e-3


def test_temperature_is_applied():
    from rlhf_edu.models import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer("llama")
    ids, mask = encode_prompts(tok, ["abc"])
    ids = torch.cat([ids, torch.tensor([[40, 41]])], 1)
    mask = torch.ones_like(ids)
    P = ids.shape[1] - 2
    logits = model(input_ids=ids).logits[0, P - 1 : -1]
    for T in (1.0, 0.5):
        expected = F.log_softmax(logits / T, -1).gather(1, ids[0, P:, None]).squeeze(1)
        torch.testing.assert_close(per_token_logps(model, ids, mask, P, T)[0], expected, atol=1e-5, rtol=1e-5)


def test_sampling_config_rejects_bad_values():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingConfig(top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=1.5)


def test_top_k_samples_only_the_k_likeliest_and_breaks_the_match_with_training_logps(tiny):
    # The "what breaks the KL" hook: truncated sampling draws from another distribution than the
    # policy whose log-probs training recomputes, so the two no longer agree.
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, batch_size=4, top_k=2)
    s = sample(model, tok, ["hi", "tell me about rain"] * 2, cfg, generator=torch.Generator().manual_seed(1))
    ids, mask = s.input_ids, s.attention_mask
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    P = s.context_length
    step_logits = logits[:, P - 1 : -1]  # (B, R, V) the logits that chose each response token
    rank = (step_logits > step_logits.gather(-1, s.response_ids[..., None])).sum(-1)  # (B, R)
    assert bool((rank[s.response_mask.bool()] < 2).all())  # every sampled token is among the top 2
    full = per_token_logps(model, ids, mask, P, cfg.temperature) * s.response_mask
    assert bool((s.logps >= full - 1e-5).all()) and (s.logps - full).abs().max() > 1e-3  # renormalized over 2


def test_empty_prompt_is_a_clear_error(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="non-empty"):
        sample(model, tok, ["ok", "  "], SamplingConfig(max_new_tokens=2))


def test_prompt_longer_than_allowed_is_a_clear_error(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="longer than the 8 allowed"):
        encode_prompts(tok, ["this prompt is far too long"], max_length=8)


def test_same_seed_same_samples(tiny):
    model, tok = tiny
    cfg = SamplingConfig(max_new_tokens=8)
    a = sample(model, tok, ["hi", "yo"], cfg, generator=torch.Generator().manual_seed(3))
    b = sample(model, tok, ["hi", "yo"], cfg, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.response_ids, b.response_ids)
