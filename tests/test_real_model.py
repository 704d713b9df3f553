"""The real offline SmolLM2-135M-Instruct: chat template, sampling that stops at EOS, plumbing."""

import pytest
import torch

from rlhf_edu.generation import SamplingConfig, chat_prompt, sample
from rlhf_edu.logprobs import per_token_logps

pytestmark = pytest.mark.real_model


def test_loads_with_distinct_pad_and_chat_template(real):
    model, tok = real
    assert model.config.model_type == "llama"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = chat_prompt(tok, "Explain rain to a 10-year-old.")
    assert "<|im_start|>user\nExplain rain to a 10-year-old.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_generates_and_stops_at_eos(real):
    model, tok = real
    prompts = ["Say hello in three words."] * 4
    s = sample(
        model,
        tok,
        prompts,
        SamplingConfig(max_new_tokens=32, temperature=0.7, batch_size=4),
        generator=torch.Generator().manual_seed(0),
    )
    assert s.has_eos.any(), s.texts
    for b in torch.nonzero(s.has_eos).flatten().tolist():
        n = int(s.response_mask[b].sum())
        assert s.response_ids[b, n - 1] == tok.eos_token_id
        assert (s.response_ids[b, n:] == tok.pad_token_id).all()
    assert all(isinstance(t, str) and t for t in s.texts)
    # The sampler's log-probs equal the training forward's on the real model (fp32; KV-cache
    # vs full-sequence kernels differ slightly).
    logps = per_token_logps(model, s.input_ids, s.attention_mask, s.context_length, 0.7)
    torch.testing.assert_close(logps * s.response_mask, s.logps, atol=1e-4, rtol=0)
