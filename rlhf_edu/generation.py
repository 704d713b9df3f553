"""Sampling from the exact policy with a hand-written KV-cached loop.

Why not `model.generate`? Any logits processor (top-k, top-p, min_new_tokens, repetition penalty,
or a hub model's `generation_config.json`, which since transformers 5 can take precedence over
arguments) changes the distribution we sample from, and the KL estimates of later notebooks become
biased, typically negative (docs/implementation_details.md#exact-sampling). This loop applies
only `logits / temperature`, and records the log-prob of every sampled token from that same
distribution, so `per_token_logps(..., temperature)` over the full sequence gives the same numbers.

Prompts are left-padded, `position_ids` come from the attention mask, and each response is truncated
after its first EOS (EOS kept, pad after it, `response_mask` explicit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, TopKLogitsWarper, TopPLogitsWarper

from rlhf_edu.logprobs import check_context_length, position_ids_from_mask, truncate_after_eos


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled."""

    max_new_tokens: int = 64
    """The token budget of a response; one that has not emitted EOS by then is truncated."""
    temperature: float = 0.7
    """Logits are divided by this before sampling and in every log-prob computed for training."""
    batch_size: int = 16
    """Prompts per forward pass."""
    top_k: int | None = None
    """Sample only among the k likeliest tokens. None (the course's setting) keeps every token: with
    truncation the answers no longer come from the policy whose log-probs training computes."""
    top_p: float | None = None
    """Sample only within the smallest set of tokens whose probability reaches top_p; None keeps all."""

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {self.temperature}); the course samples, never argmaxes")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")


@dataclass
class Samples:
    """A batch of sampled responses in the course layout (see logprobs.py)."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, R) pad after the first EOS
    response_mask: torch.Tensor  # (B, R) 1 up to and including the first EOS
    logps: torch.Tensor  # (B, R) sampling log-probs from logits / temperature, 0 on padding
    has_eos: torch.Tensor  # (B,) bool: the response ended by itself
    texts: list[str]  # decoded responses, special tokens removed

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)  # (B, P+R)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)  # (B, P+R)

    @property
    def context_length(self) -> int:
        return self.prompt_ids.shape[1]

    @property
    def n_tokens(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)  # (B,)


def chat_prompt(tokenizer, user_message: str) -> str:
    """The model's own chat template around one user message, ready for the assistant's turn."""
    if not isinstance(user_message, str) or not user_message.strip():
        raise ValueError(f"a prompt must be a non-empty string, got {user_message!r}")
    messages = [{"role": "user", "content": user_message}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_prompts(prompts: list[str]) -> None:
    """A ValueError naming the index of the first prompt that is not a non-empty string, or saying
    that there are no prompts at all."""
    if not prompts:
        raise ValueError("got no prompts: pass a list of at least one non-empty string")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {i} must be a non-empty string, got {prompt!r}")


def encode_prompts(tokenizer, prompts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-format and left-pad prompts: -> input_ids, attention_mask, each (B, P)."""
    check_prompts(prompts)
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    if max_length is not None and enc.input_ids.shape[1] > max_length:
        longest = int(enc.attention_mask.sum(1).argmax())
        raise ValueError(
            f"prompt {longest} ({prompts[longest][:60]!r}...) is {enc.input_ids.shape[1]} tokens, "
            f"longer than the {max_length} allowed"
        )
    return enc.input_ids, enc.attention_mask


def _cache_kwarg(model) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; accept both."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def sample_tokens(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling loop. prompt (B, P) -> raw response ids (B, R), sampling log-probs (B, R).

    R <= max_new_tokens: the loop stops once every row has emitted EOS. Tokens after a row's EOS
    are pad (and their log-probs 0). The log-probs are those of the distribution actually sampled
    from: logits / temperature, truncated by top_k and top_p (transformers' logits warpers) when set.
    """
    warpers = []
    if top_k is not None:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    B = prompt_ids.shape[0]
    cache_kwarg = _cache_kwarg(model)
    cache = DynamicCache(config=model.config)  # filled in place by every forward below
    position_ids = position_ids_from_mask(prompt_mask)  # (B, P)
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **{cache_kwarg: cache},
    )
    next_position = position_ids[:, -1:] + 1  # (B, 1)
    attention_mask = prompt_mask
    done = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)  # (B,)
    tokens, logps = [], []
    for _ in range(max_new_tokens):
        step_logits = out.logits[:, -1].float() / temperature  # (B, V)
        for warp in warpers:
            step_logits = warp(prompt_ids, step_logits)  # -inf outside the kept tokens
        step_logps = torch.log_softmax(step_logits, dim=-1)  # (B, V)
        token = torch.multinomial(step_logps.exp(), 1, generator=generator).squeeze(1)  # (B,)
        token_logp = step_logps.gather(1, token[:, None]).squeeze(1)  # (B,)
        tokens.append(token.masked_fill(done, pad_token_id))
        logps.append(token_logp.masked_fill(done, 0.0))
        done = done | (token == eos_token_id)
        if bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)  # (B, P+t+1)
        out = model(
            input_ids=tokens[-1][:, None],
            attention_mask=attention_mask,
            position_ids=next_position,
            use_cache=True,
            **{cache_kwarg: cache},
        )
        next_position = next_position + 1
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)  # (B, R), (B, R)


def sample(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    config: SamplingConfig = SamplingConfig(),
    *,
    generator: torch.Generator | None = None,
    autocast_ctx=None,
) -> Samples:
    """Sample one response per prompt (a plain user message; the chat template is applied here).

    Works in batches of `config.batch_size`; returns one `Samples` for all prompts, padded to the
    longest response. An empty prompt, or one whose tokens plus `max_new_tokens` exceed the model's
    context, is a ValueError naming its index.
    """
    import contextlib

    _, prompt_mask = encode_prompts(tokenizer, prompts)  # (N, P) all at once: bad input stops here
    check_context_length(model, prompt_mask, reserve=config.max_new_tokens, what="prompt")
    device = next(model.parameters()).device
    if generator is not None and generator.device != device:
        # A CPU generator (the course's seeds) cannot drive sampling on a GPU: seed one there from it.
        seed = int(torch.randint(2**62, (1,), generator=generator))
        generator = torch.Generator(device).manual_seed(seed)
    chunks = []
    for start in range(0, len(prompts), config.batch_size):
        prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts[start : start + config.batch_size])
        with autocast_ctx or contextlib.nullcontext():
            raw, logps = sample_tokens(
                model,
                prompt_ids.to(device),
                prompt_mask.to(device),
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                generator=generator,
                top_k=config.top_k,
                top_p=config.top_p,
            )
        response_ids, response_mask, has_eos = truncate_after_eos(
            raw.cpu(), tokenizer.eos_token_id, tokenizer.pad_token_id
        )
        chunks.append((prompt_ids, prompt_mask, response_ids, response_mask, logps.cpu() * response_mask, has_eos))
    return _concat(chunks, tokenizer)


def _pad_to(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    pad = x.new_full((x.shape[0], width - x.shape[1]), value)
    return torch.cat([pad, x] if left else [x, pad], dim=1)


def _concat(chunks, tokenizer) -> Samples:
    P = max(c[0].shape[1] for c in chunks)
    R = max(c[2].shape[1] for c in chunks)
    pad = tokenizer.pad_token_id
    prompt_ids = torch.cat([_pad_to(c[0], P, pad, left=True) for c in chunks])  # (B, P)
    prompt_mask = torch.cat([_pad_to(c[1], P, 0, left=True) for c in chunks])  # (B, P)
    response_ids = torch.cat([_pad_to(c[2], R, pad, left=False) for c in chunks])  # (B, R)
    response_mask = torch.cat([_pad_to(c[3], R, 0, left=False) for c in chunks])  # (B, R)
    logps = torch.cat([_pad_to(c[4], R, 0.0, left=False) for c in chunks])  # (B, R)
    has_eos = torch.cat([c[5] for c in chunks])  # (B,)
    texts = tokenizer.batch_decode(response_ids.masked_fill(response_mask == 0, pad), skip_special_tokens=True)
    return Samples(prompt_ids, prompt_mask, response_ids, response_mask, logps, has_eos, [t.strip() for t in texts])
