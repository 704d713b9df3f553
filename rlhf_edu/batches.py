"""The batch layout every stage uses: a left-padded prompt block, then a right-padded response
block, with a response mask that covers the response tokens and their EOS (docs/glossary.md).
SFT trains on such batches, the reward model and DPO score pairs of them, PPO and GRPO sample into
the same layout (`generation.sample`), and `logprobs.per_token_logps` reads every one.
"""

from __future__ import annotations

import torch

from rlhf_edu.generation import encode_prompts


def build_sft_batch(
    tokenizer, prompts: list[str], responses: list[str], max_response_tokens: int = 96, eos: list[bool] | None = None
) -> dict:
    """Tokenize (prompt, response) pairs into the course layout.

    Returns input_ids, attention_mask (B, P + R), response_mask (B, R) and context_length P.
    Each response is followed by EOS, except where `eos[i]` is False: a sampled response that was
    cut off at the token budget is scored as it was sampled, without an EOS it never emitted.
    response_mask is 1 on the response tokens and the EOS.
    """
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)  # (B, P), left-padded
    eos_id, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ended = [True] * len(responses) if eos is None else [bool(e) for e in eos]
    if len(ended) != len(responses):
        raise ValueError(f"got {len(responses)} responses but {len(ended)} eos flags")
    encoded = [
        tokenizer(r, add_special_tokens=False).input_ids + ([eos_id] if e else []) for r, e in zip(responses, ended)
    ]
    for i, ids in enumerate(encoded):
        if len(ids) > max_response_tokens:
            raise ValueError(f"response {i} is {len(ids)} tokens, more than max_response_tokens={max_response_tokens}")
    R = max(len(ids) for ids in encoded)
    response_ids = torch.full((len(encoded), R), pad, dtype=torch.long)  # (B, R) right-padded
    response_mask = torch.zeros((len(encoded), R), dtype=torch.long)  # (B, R)
    for i, ids in enumerate(encoded):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = 1
    return {
        "input_ids": torch.cat([prompt_ids, response_ids], dim=1),  # (B, P+R)
        "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),  # (B, P+R)
        "response_mask": response_mask,  # (B, R)
        "context_length": prompt_ids.shape[1],
    }


def build_pair_batch(
    tokenizer,
    prompts: list[str],
    chosen: list[str],
    rejected: list[str],
    max_response_tokens: int = 96,
    chosen_eos: list[bool] | None = None,
    rejected_eos: list[bool] | None = None,
) -> dict:
    """One batch of 2B rows in the course layout: rows 0..B-1 chosen, rows B..2B-1 rejected.

    Returns input_ids, attention_mask (2B, P + R), response_mask (2B, R) and context_length P, as
    `build_sft_batch` (EOS appended unless the `*_eos` flag says the response was cut off).
    One forward pass scores both sides.

    Notebook: 03_reward_model.ipynb
    """
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(f"got {len(prompts)} prompts, {len(chosen)} chosen, {len(rejected)} rejected")
    n = len(prompts)
    eos = (chosen_eos or [True] * n) + (rejected_eos or [True] * n)
    return build_sft_batch(tokenizer, prompts + prompts, chosen + rejected, max_response_tokens, eos=eos)
