"""bench/trl_ppo.py's reward-model conversion: TRL must read the same scores and values as ours.

TRL 1.8.0's `get_reward` (trl/experimental/utils.py) is restated here, so the test runs in the
course's .venv, which has no TRL; where TRL is importable, its own function is checked too.
"""

import sys
from pathlib import Path

import pytest
import torch

from rlhf_edu.critic import ValueModel
from rlhf_edu.models import tiny_model_and_tokenizer
from rlhf_edu.reward import RewardModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import trl_ppo


def trl_get_reward(model, query_responses, pad_token_id, context_length):
    """TRL 1.8.0 `get_reward`: padding from token ids, the backbone under base_model_prefix, and
    `score` on the last hidden state; the reward is read at the last non-pad response token."""
    attention_mask = query_responses != pad_token_id
    position_ids = attention_mask.cumsum(1) - attention_mask.long()
    backbone = getattr(model, model.base_model_prefix)
    input_ids = torch.masked_fill(query_responses, ~attention_mask, 0)
    output = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        return_dict=True,
        output_hidden_states=True,
        use_cache=False,
    )
    logits = model.score(output.hidden_states[-1])  # (B, T, 1)
    is_pad = query_responses[:, context_length:] == pad_token_id
    first_pad = torch.where(is_pad.any(1), is_pad.int().argmax(1), is_pad.shape[1])
    lengths = first_pad - 1 + context_length
    return logits, logits[torch.arange(logits.shape[0]), lengths].squeeze(-1), lengths


def batch(tok, P=5, R=6):
    """A (3, P+R) batch in the course layout: left-padded prompts, responses cut after EOS."""
    pad, eos = tok.pad_token_id, tok.eos_token_id
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tok), (3, P + R), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = pad, 0  # left padding
    ids[0, P + 2], ids[0, P + 3 :], mask[0, P + 3 :] = eos, pad, 0  # EOS, then padding
    ids[1, P + R - 1] = eos  # EOS on the last slot
    return ids, mask, P  # row 2: cut off without EOS


def tiny_reward_model(arch):
    model, tok = tiny_model_and_tokenizer(arch)
    rm = RewardModel.from_causal_lm(model)
    with torch.no_grad():
        rm.head.bias.fill_(0.3)
        rm.gain.fill_(1.7)  # what set_normalization sets: neither 1 nor 0
        rm.bias.fill_(-0.4)
    return rm.eval(), tok


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_converted_reward_model_scores_like_ours(arch):
    rm, tok = tiny_reward_model(arch)
    ids, mask, P = batch(tok)
    converted = trl_ppo.to_sequence_classifier(rm)
    with torch.no_grad():
        ours = rm(ids, mask)
        _, theirs, _ = trl_get_reward(converted, ids, tok.pad_token_id, P)
    assert abs(float(rm.bias)) > 0.1 and abs(float(rm.gain) - 1) > 0.1
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(converted.parameters(), rm.parameters()))


def test_converted_value_model_reads_like_our_critic():
    rm, tok = tiny_reward_model("llama")
    ids, mask, P = batch(tok)
    with torch.no_grad():
        ours = ValueModel(rm)(ids, mask, P)  # (B, R)
        logits, _, _ = trl_get_reward(trl_ppo.to_sequence_classifier(rm), ids, tok.pad_token_id, P)
    theirs = logits[:, P - 1 : -1].squeeze(-1)  # what TRL's PPO reads as values
    response = mask[:, P:].bool()
    torch.testing.assert_close(theirs[response], ours[response], atol=1e-5, rtol=1e-5)


def test_trl_get_reward_itself():
    pytest.importorskip("trl.experimental.ppo", reason="TRL is only in the bench environment (make bench-env)")
    from trl.experimental.utils import get_reward

    rm, tok = tiny_reward_model("llama")
    ids, mask, P = batch(tok)
    converted = trl_ppo.to_sequence_classifier(rm)
    with torch.no_grad():
        _, theirs, _ = get_reward(converted, ids, tok.pad_token_id, P)
        torch.testing.assert_close(theirs, rm(ids, mask), atol=1e-5, rtol=1e-5)


def test_missing_trl_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    with pytest.raises(RuntimeError, match="make bench-env"):
        trl_ppo._require_trl()
