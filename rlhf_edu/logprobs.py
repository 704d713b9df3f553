"""Per-token log-probabilities, masks and masked statistics: the plumbing every stage shares.

One layout everywhere (docs/implementation_details.md#batch-layout): a batch is a left-padded prompt
block of width P followed by a right-padded response block of width R,

    input_ids      (B, P + R)   [pad pad p1 p2 p3 | r1 r2 EOS pad pad]
    attention_mask (B, P + R)   [ 0   0  1  1  1 |  1  1  1   0   0 ]
    response_mask  (B, R)                         [ 1  1  1   0   0 ]

`per_token_logps` is the only place in the library that shifts logits against labels: the logits at
position t predict the token at t + 1, so the response tokens are scored by logits[:, P-1 : P+R-1].
"""

from __future__ import annotations

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: an exclusive cumulative sum of the mask.

    attention_mask (B, T) -> position_ids (B, T); the first real token of each row gets 0.
    Without this, GPT-2's absolute position embeddings see left padding as content
    (docs/implementation_details.md#padding-and-position-ids).
    """
    mask = attention_mask.long()
    return mask.cumsum(dim=1) - mask  # (B, T)


def check_context_length(
    model: torch.nn.Module,
    attention_mask: torch.Tensor,
    *,
    reserve: int = 0,
    first_index: int = 0,
    what: str = "row",
) -> None:
    """Raise a ValueError naming the first sequence whose real tokens (plus `reserve` tokens still
    to sample) do not fit the model's context, `model.config.max_position_embeddings`.

    attention_mask (B, T). Beyond the context GPT-2's position embeddings fail deep inside torch
    with an index error, and RoPE models silently read positions they were never trained on. The
    message calls row i "{what} {first_index + i}"; the check costs nothing while T + reserve fits.
    """
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is None or attention_mask.shape[1] + reserve <= limit:
        return
    lengths = attention_mask.sum(dim=1)  # (B,) real tokens per row
    too_long = (lengths + reserve > limit).nonzero().flatten()
    if len(too_long):
        i = int(too_long[0])
        n = int(lengths[i])
        budget = f" and max_new_tokens is {reserve}: {n + reserve} positions," if reserve else ","
        raise ValueError(
            f"{what} {first_index + i} is {n} tokens{budget} more than the model's context of {limit} "
            f"tokens (model.config.max_position_embeddings); shorten it"
            + (" or lower max_new_tokens" if reserve else "")
        )


def response_mask_from_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on every response token up to and including the first EOS, 0 after it.

    response_ids (B, R) -> (B, R) long. Built from the EOS position, never from pad ids (pad may
    equal EOS in a hub tokenizer). A row with no EOS is all ones.
    """
    is_eos = (response_ids == eos_token_id).long()  # (B, R)
    eos_seen_before = is_eos.cumsum(dim=1) - is_eos  # (B, R) EOS tokens strictly before t
    return (eos_seen_before == 0).long()  # (B, R)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost position where attention_mask == 1: (B, T) -> (B,) long.

    On an attention mask in the course layout this is the response's EOS (where the reward model
    reads its score); on a response_mask it is the last response token (where PPO places the
    score). Built from the mask, never from token ids
    (docs/implementation_details.md#pad-is-not-eos).

    Notebooks: 03_reward_model.ipynb, 04_ppo.ipynb
    """
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device)  # (T,)
    masked_positions = positions * (attention_mask != 0).long()  # (B, T) 0 where masked
    if not (attention_mask != 0).any(dim=1).all():
        raise ValueError("every row of attention_mask needs at least one real token")
    return masked_positions.argmax(dim=1)  # (B,) the largest position among the real tokens


def truncate_after_eos(
    response_ids: torch.Tensor, eos_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace everything after the first EOS with pad.

    Returns (response_ids (B, R), response_mask (B, R), has_eos (B,) bool). For [a, b, EOS, x, y]
    that is [a, b, EOS, PAD, PAD] with mask [1, 1, 1, 0, 0].
    """
    response_mask = response_mask_from_eos(response_ids, eos_token_id)  # (B, R)
    truncated = response_ids.masked_fill(response_mask == 0, pad_token_id)  # (B, R)
    has_eos = (response_ids == eos_token_id).any(dim=1)  # (B,)
    return truncated, response_mask, has_eos


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[index] in fp32 without keeping a second (B, T, V) tensor.

    logits (B, T, V), index (B, T) -> (B, T).
    """
    logits = logits.float()
    picked = logits.gather(dim=-1, index=index.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, T)


def response_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    return_hidden: bool = False,
    inputs_embeds: torch.Tensor | None = None,
):
    """Logits that predict each response token: (B, P + R) -> (B, R, V).

    With return_hidden=True, also the last-layer hidden states at the same positions (B, R, H): the
    state that predicts response token t is also where a value head reads V_t
    (docs/implementation_details.md#values-and-the-critic).
    `inputs_embeds` (B, P + R, H) replaces the embedding of `input_ids` (see `rlhf_edu.trunk`).
    """
    check_context_length(model, attention_mask)
    position_ids = position_ids_from_mask(attention_mask)  # (B, P+R)
    n_response = input_ids.shape[1] - context_length
    out = model(
        **({"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}),
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=n_response + 1,  # only the positions P-1 .. P+R-1 are needed
        use_cache=False,
        output_hidden_states=return_hidden,
    )
    logits = out.logits[:, :-1]  # (B, R, V): the shift, logits at t predict token t+1
    if not return_hidden:
        return logits
    return logits, out.hidden_states[-1][:, context_length - 1 : -1]  # (B, R, V), (B, R, H)


def per_token_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    temperature: float = 1.0,
    return_hidden: bool = False,
    inputs_embeds: torch.Tensor | None = None,
):
    """log pi(response_t | prompt, response_<t) for every response token, from logits / temperature.

    input_ids, attention_mask (B, P + R) in the layout above; context_length = P.
    Returns (B, R) fp32. Entries on padding are meaningless: multiply by `response_mask`.
    The same temperature must be used for sampling, old, new and reference log-probs
    (docs/implementation_details.md#temperature).
    With return_hidden=True returns (logps (B, R), hidden states (B, R, H)) from the same pass.
    `inputs_embeds`, when given, enters the model instead of the embedded `input_ids`.
    """
    out = response_logits(model, input_ids, attention_mask, context_length, return_hidden, inputs_embeds)
    logits, hidden = out if return_hidden else (out, None)  # (B, R, V), (B, R, H)
    labels = input_ids[:, context_length:]  # (B, R)
    logps = selective_log_softmax(logits.float() / temperature, labels)  # (B, R)
    return (logps, hidden) if return_hidden else logps


def zero_where_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask is 1 and exactly 0 where it is 0: (B, T), (B, T) -> (B, T).

    Not `x * mask`: padding may hold inf or NaN (a sentinel, an overflow), and inf * 0 is NaN, which
    would reach every statistic below (docs/implementation_details.md#whitening).
    """
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))  # (B, T)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x where mask is 1; whatever padding holds (even inf or NaN) is left out."""
    kept = zero_where_masked(x, mask)  # (B, T)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (all of them, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return masked_sum(x, mask) / mask.sum().clamp(min=1.0)
    return masked_sum(x, mask, dim) / mask.sum(dim=dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over masked positions (Bessel-corrected by default, as in TRL/N-details)."""
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    centered_sq = zero_where_masked((x - mean) ** 2, mask)  # (B, T)
    n = mask.sum()
    if unbiased:
        if n < 2:
            raise ValueError(f"masked_var needs at least 2 unmasked values for an unbiased variance, got {int(n)}")
        return centered_sq.sum() / (n - 1)
    return centered_sq.sum() / n.clamp(min=1.0)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, unbiased: bool = True
) -> torch.Tensor:
    """(x - mean) / std over masked positions; with shift_mean=False the mean is added back.

    Statistics use only unmasked entries; masked entries come back as 0
    (docs/implementation_details.md#whitening). The variance is the unbiased one by default
    (TRL's `masked_whiten`); unbiased=False is OpenAI's
    `tf.nn.moments` (the N-implementation-details blog shows the two differ on small batches).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased)
    whitened = (x - mean) * torch.rsqrt(var + eps)  # (B, T)
    if not shift_mean:
        whitened = whitened + mean  # (B, T)
    return zero_where_masked(whitened, mask)  # (B, T)
