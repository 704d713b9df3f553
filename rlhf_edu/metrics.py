"""Means, standard errors and paired differences, plus one policy evaluation helper.

Every comparison in the course ("SFT beats base by more than 3 standard errors") is a paired one:
both policies answer the same eval prompts, so the standard error is that of the per-prompt
differences, sd(d) / sqrt(n), which is smaller than the unpaired one when the prompts vary in
difficulty.
"""

from __future__ import annotations

import math

import torch


def mean_and_se(values) -> tuple[float, float]:
    """Sample mean and its standard error sd / sqrt(n), with the n - 1 (Bessel) sd."""
    x = [float(v) for v in values]
    n = len(x)
    if n == 0:
        raise ValueError("mean_and_se of an empty list")
    mean = sum(x) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in x) / (n - 1)
    return mean, math.sqrt(var / n)


def paired_difference(after, before) -> dict[str, float]:
    """Mean of after - before over matched items, its standard error, and their ratio z."""
    if len(after) != len(before):
        raise ValueError(f"paired_difference needs matched lists, got {len(after)} and {len(before)}")
    delta, se = mean_and_se([a - b for a, b in zip(after, before)])
    z = delta / se if se > 0 else (math.inf if delta > 0 else (-math.inf if delta < 0 else 0.0))
    return {"delta": delta, "se": se, "z": z}


def evaluate_policy(
    model,
    tokenizer,
    prompts: list[str],
    sampling,
    *,
    seed: int = 0,
    autocast_ctx=None,
    reference=None,
    reward_model=None,
) -> list[dict]:
    """Sample one response per prompt and score it with the gold rubric.

    Returns rows {prompt, response, tokens, eos, gold, <components>}. The same seed gives the same
    draws, so two policies are compared on equal terms. With `reference` (a causal LM), each row
    also gets `kl`: sum over the response of log pi(y_t) - log pi_ref(y_t), both from logits /
    temperature (nats per response, the k1 estimate of KL(pi || ref)). With `reward_model`, each
    row gets `rm`: the reward model's score of the sampled tokens (no EOS when the response was
    cut off, as in training). The rows are `eval_rows.score_samples`' (with a reference, also the
    reference's `ref_nll` and `ref_tokens`).
    """
    from rlhf_edu.eval_rows import score_samples
    from rlhf_edu.generation import sample

    generator = torch.Generator().manual_seed(seed)
    samples = sample(model, tokenizer, prompts, sampling, generator=generator, autocast_ctx=autocast_ctx)
    return score_samples(
        samples,
        prompts,
        reference=reference,
        reward_model=reward_model,
        policy=model if reference is not None else None,
        temperature=sampling.temperature,
        autocast_ctx=autocast_ctx,
    )


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); 95% by default.

    Better than p +- z sqrt(p(1-p)/n) at small n and near 0 or 1 (it never leaves [0, 1]).
    """
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)
