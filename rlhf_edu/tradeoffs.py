"""Reward versus KL: best-of-n, the Gao et al. (2022) scaling forms, over-optimization, diversity.

Gao, Schulman and Hilton (2022), "Scaling Laws for Reward Model Overoptimization", measure a policy
by two numbers: how far it moved from the initial policy, d = sqrt(KL(pi || pi_init)), and its gold
score R relative to the initial policy (R(0) = 0). They fit

    best-of-n:  R_bon(d) = d (alpha - beta d)                                            (Gao eq. 1)
    RL:         R_RL(d)  = d (alpha - beta log d)                                         (Gao eq. 2)

Best-of-n (BoN) draws n responses and keeps the one the proxy reward model scores highest. Its KL
is analytic, log n - (n - 1)/n, an upper bound that is exact only when no two outcomes tie
(Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy").

Deliberate deviations:
- The fits use linear least squares (numpy.linalg.lstsq): both forms are linear in (alpha, beta)
  once d is fixed, so no iterative curve fitting (and no scipy) is needed.
- BoN gold and proxy curves come from one pool of N >= n samples per prompt through the unbiased
  order-statistics estimator over all size-n subsets of the pool (see `bon_weights`), not from
  fresh draws for every n.

Notebook: 05_reward_kl_tradeoffs.ipynb
"""

from __future__ import annotations

import math

import numpy as np

from rlhf_edu.rubric import words

# ---------------------------------------------------------------------------------------- BoN KL


def bon_kl_bound(n):
    """Analytic best-of-n KL, log n - (n - 1)/n nats (Gao et al. 2022, section 2; an upper bound
    by Beirami et al. 2024). Takes an int or an array of ints >= 1.

    Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    n_arr = np.asarray(n, dtype=float)
    if np.any(n_arr < 1) or np.any(n_arr != np.round(n_arr)):
        raise ValueError(f"n must be integers >= 1, got {n}")
    kl = np.log(n_arr) - (n_arr - 1) / n_arr
    return float(kl) if kl.ndim == 0 else kl


def bon_kl_discrete(probs, scores, n: int) -> float:
    """Exact KL(pi_bon || pi) in nats for a discrete base policy pi: outcome j has probability
    probs[j] and score scores[j].

    Sort the outcomes by score, ascending; F_i is the cumulative probability up to outcome i.
    Best-of-n keeps the maximum of n independent draws, so it lands on outcome i with probability

        P_bon(i) = F_i^n - F_{i-1}^n                       (max of n draws)

    and KL = sum_i P_bon(i) log(P_bon(i) / p_i). Outcomes with equal scores are merged into one
    outcome first: best-of-n cannot tell them apart, and when it breaks the tie at random among
    independent draws it keeps their relative probabilities, so merging gives the same KL.
    `probs` are normalized to sum to 1.

    Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    p = np.asarray(probs, dtype=float).ravel()  # (K,)
    s = np.asarray(scores, dtype=float).ravel()  # (K,)
    if p.shape != s.shape or p.size == 0:
        raise ValueError(f"probs and scores need the same non-zero length, got {p.size} and {s.size}")
    if n < 1 or np.any(p < 0) or p.sum() <= 0:
        raise ValueError("need n >= 1 and non-negative probabilities with a positive sum")
    order = np.argsort(s, kind="stable")
    s, p = s[order], p[order] / p.sum()  # (K,), ascending scores
    _, first = np.unique(s, return_index=True)  # start of each run of equal scores
    mass = np.add.reduceat(p, first)  # (U,) probability of each distinct score
    F = np.minimum(np.cumsum(mass), 1.0)  # (U,) CDF at each distinct score
    F_prev = np.concatenate([[0.0], F[:-1]])  # (U,)
    q = F**n - F_prev**n  # (U,) best-of-n probabilities
    keep = (q > 0) & (mass > 0)
    return float(np.sum(q[keep] * (np.log(q[keep]) - np.log(mass[keep]))))


def bon_kl_empirical(scores, n: int) -> float:
    """Plug-in estimate of the best-of-n KL from a pool of samples.

    scores: (N,) or (G, N), the proxy scores of N samples per prompt. Each prompt's N samples stand
    for its base policy, 1/N each, so the chosen sample's rank in the empirical CDF of the pool gives
    P_bon through `bon_kl_discrete`; the result is averaged over prompts. Without ties it equals
    the exact value for N equally likely outcomes, below the bound and tending to it as N grows
    (for N = 100000: 0.193147, 0.636294 and 1.835089 for n = 2, 4, 16). Ties (repeated responses, a
    coarse score) pull it lower, which is exactly where the analytic bound overstates the KL.

    Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    s = np.atleast_2d(np.asarray(scores, dtype=float))  # (G, N)
    uniform = np.ones(s.shape[1])  # (N,)
    return float(np.mean([bon_kl_discrete(uniform, row, n) for row in s]))


# ---------------------------------------------------------------------------------------- BoN curves


def best_of_n(scores, n: int) -> np.ndarray:
    """Index of the highest-scoring sample among the first n of each prompt, ties to the lower index.

    scores: (G, N) proxy scores. Returns (G,) ints in [0, n). Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or not 1 <= n <= s.shape[1]:
        raise ValueError(f"need scores of shape (G, N) and 1 <= n <= N, got {s.shape} and n={n}")
    return np.argmax(s[:, :n], axis=1)  # (G,) argmax returns the first maximum


def bon_weights(N: int, n: int) -> np.ndarray:
    """Weights of the order statistics in the unbiased best-of-n estimator.

    Draw n of the N pooled samples without replacement, all C(N, n) subsets equally likely. The
    i-th smallest sample (i = 1..N) is the subset's maximum when it is in the subset and the other
    n - 1 come from the i - 1 below it:

        w_i = C(i - 1, n - 1) / C(N, n)

    so E[value of best-of-n] = sum_i w_i value_(i). n = 1 gives the mean, n = N the top sample.
    Returns (N,), summing to 1. Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    if not 1 <= n <= N:
        raise ValueError(f"need 1 <= n <= N, got n={n}, N={N}")
    total = math.comb(N, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, N + 1)])  # (N,)


def bon_expected(values, scores, n: int) -> np.ndarray:
    """Unbiased E[values of the best-of-n sample] per prompt, over all size-n subsets of the pool.

    values, scores: (G, N). Selection is by `scores` with ties to the lower pool index, as in
    `best_of_n` on each subset. Returns (G,). Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    v, s = np.asarray(values, dtype=float), np.asarray(scores, dtype=float)
    if v.shape != s.shape or v.ndim != 2:
        raise ValueError(f"values and scores need the same (G, N) shape, got {v.shape} and {s.shape}")
    G, N = s.shape
    index = np.broadcast_to(np.arange(N), (G, N))  # (G, N)
    # Ascending score; among equal scores the lower index ranks higher, so it sorts later.
    order = np.lexsort((-index, s), axis=1)  # (G, N)
    v_sorted = np.take_along_axis(v, order, axis=1)  # (G, N)
    return v_sorted @ bon_weights(N, n)  # (G,)


def bon_curve(gold, proxy, ns) -> dict[str, np.ndarray]:
    """Best-of-n gold and proxy for each n in `ns`, from one pool of N samples per prompt.

    gold, proxy: (G, N); the proxy (reward model) picks the sample. For each n, "gold" and "proxy"
    are the prompt means of `bon_expected`: the unbiased estimator over all size-n subsets of the
    pool (drawn without replacement), not one draw. Also returns "kl" (analytic bound), "sqrt_kl"
    (Gao's d) and "kl_empirical" (`bon_kl_empirical` on the proxy scores). All arrays have len(ns).

    Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    ns = [int(n) for n in ns]
    kl = bon_kl_bound(np.array(ns))
    return {
        "n": np.array(ns),
        "kl": kl,
        "sqrt_kl": np.sqrt(kl),
        "kl_empirical": np.array([bon_kl_empirical(proxy, n) for n in ns]),
        "gold": np.array([bon_expected(gold, proxy, n).mean() for n in ns]),
        "proxy": np.array([bon_expected(proxy, proxy, n).mean() for n in ns]),
    }


# ---------------------------------------------------------------------------------------- Gao fits

FORMS = ("bon", "rl")


def _design(d: np.ndarray, form: str) -> np.ndarray:
    """Columns multiplying (alpha, beta): R = alpha * d - beta * g(d), g = d^2 or d log d."""
    if form == "bon":
        g = d * d
    elif form == "rl":
        g = d * np.log(np.where(d > 0, d, 1.0))  # d log d -> 0 as d -> 0
    else:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    return np.stack([d, -g], axis=1)  # (M, 2)


def _fit(d, r, form: str) -> tuple[float, float]:
    d, r = np.asarray(d, dtype=float).ravel(), np.asarray(r, dtype=float).ravel()
    if d.shape != r.shape:
        raise ValueError(f"d and r need the same length, got {d.size} and {r.size}")
    if d.size < 2:
        raise ValueError(f"fitting (alpha, beta) needs at least 2 points, got {d.size}")
    if np.any(d < 0) or not (np.all(np.isfinite(d)) and np.all(np.isfinite(r))):
        raise ValueError("d must be finite and >= 0 (d = sqrt(KL)) and r finite")
    X = _design(d, form)  # (M, 2)
    (alpha, beta), _, rank, _ = np.linalg.lstsq(X, r, rcond=None)
    if rank < 2:
        raise ValueError(f"the points do not pin down alpha and beta for the {form} form (need two distinct d > 0)")
    return float(alpha), float(beta)


def fit_bon(d, r) -> tuple[float, float]:
    """Least-squares (alpha, beta) of R(d) = d (alpha - beta d) (Gao eq. 1).

    d: (M,) sqrt(KL) values; r: (M,) gold minus the initial policy's gold. Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    return _fit(d, r, "bon")


def fit_rl(d, r) -> tuple[float, float]:
    """Least-squares (alpha, beta) of R(d) = d (alpha - beta log d) (Gao eq. 2); d = 0 is allowed.

    Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    return _fit(d, r, "rl")


def predict(d, alpha: float, beta: float, form: str = "bon") -> np.ndarray:
    """R(d) of the fitted form ("bon" or "rl") at d = sqrt(KL). Notebook: 05_reward_kl_tradeoffs.ipynb"""
    d = np.asarray(d, dtype=float)
    return (_design(d.ravel(), form) @ np.array([alpha, beta])).reshape(d.shape)


def gao_peak(alpha: float, beta: float, form: str = "bon") -> tuple[float, float]:
    """(d*, R*) where the fitted curve peaks (set dR/dd = 0), for beta > 0:

        bon: d* = alpha / (2 beta),      R* = alpha^2 / (4 beta)
        rl:  d* = exp(alpha/beta - 1),   R* = beta exp(alpha/beta - 1)

    Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    if beta <= 0:
        raise ValueError(f"the curve has a peak only for beta > 0, got beta={beta}")
    if form == "bon":
        return alpha / (2 * beta), alpha * alpha / (4 * beta)
    if form == "rl":
        d_star = math.exp(alpha / beta - 1)
        return d_star, beta * d_star
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


# ---------------------------------------------------------------------------------------- summaries


def peak_kl(kl, gold) -> float:
    """The KL at which the measured gold score is highest: the over-optimization peak.

    Definition: among the measured points (kl[i], gold[i]), the one with the largest gold; if
    several share it, the smallest KL (the cheapest way to reach it). If that is the largest KL
    measured, no over-optimization was seen in the range. Raw points are noisy: compare with the
    peak of a fitted curve (`gao_peak`). Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    kl, gold = np.asarray(kl, dtype=float).ravel(), np.asarray(gold, dtype=float).ravel()
    if kl.shape != gold.shape or kl.size == 0:
        raise ValueError(f"kl and gold need the same non-zero length, got {kl.size} and {gold.size}")
    best = gold == gold.max()
    return float(kl[best].min())


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled across `texts` (Li et al. 2016, "distinct-n").

    Words are lowercase and split as in the rubric (`rubric.words`, punctuation dropped); n-grams
    do not cross from one text into the next. 0.0 when there are no n-grams at all.
    Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = []
    for text in texts:
        w = words(text)
        grams.extend(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def pareto_front(points) -> list[int]:
    """Indices of the points (kl, gold) that no other point beats: none has a KL as low and a gold
    as high with one of them strictly better. Sorted by KL; of identical points only the first is
    kept. Notebook: 05_reward_kl_tradeoffs.ipynb
    """
    pts = [(float(k), float(g)) for k, g in points]
    order = sorted(range(len(pts)), key=lambda i: (pts[i][0], -pts[i][1], i))
    front, best_gold = [], -math.inf
    for i in order:
        if pts[i][1] > best_gold:
            front.append(i)
            best_gold = pts[i][1]
    return front


def pool_array(pool: dict, key: str) -> np.ndarray:
    """(G, N) array of one field of the pool: "gold", a rubric component, "tokens", or a proxy name.

    Notebook: 05_reward_kl_tradeoffs.ipynb"""
    if key in pool["proxy"]:
        return np.array(pool["proxy"][key], dtype=float)
    return np.array([[float(s[key]) for s in row] for row in pool["samples"]])
