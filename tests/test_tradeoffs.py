"""Best-of-n KL and curves, Gao et al. (2022) fits, peaks, diversity and the Pareto front."""

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from rlhf_edu.tradeoffs import (
    best_of_n,
    bon_curve,
    bon_expected,
    bon_kl_bound,
    bon_kl_discrete,
    bon_kl_empirical,
    bon_weights,
    distinct_n,
    fit_bon,
    fit_rl,
    gao_peak,
    pareto_front,
    peak_kl,
    predict,
)

# ---------------------------------------------------------------- best-of-n KL


def test_bon_kl_bound_reference_table():
    # the table of docs/implementation_details.md#grpo-rloo-and-best-of-n-tests
    table = {1: 0.0, 2: 0.1931, 4: 0.6363, 8: 1.2044, 16: 1.8351, 64: 3.1745, 256: 4.5491}
    for n, value in table.items():
        assert bon_kl_bound(n) == pytest.approx(value, abs=1e-4)
    assert bon_kl_bound(np.array([2, 4])) == pytest.approx([0.19315, 0.63629], abs=1e-5)
    with pytest.raises(ValueError):
        bon_kl_bound(0)


def test_empirical_kl_on_many_distinct_outcomes_reaches_the_bound():
    # reference Appendix A: uniform K = 1e5 gives 0.193147, 0.636294, 1.835089
    scores = np.arange(100_000.0)
    for n, value in [(2, 0.193147), (4, 0.636294), (16, 1.835089)]:
        assert bon_kl_empirical(scores, n) == pytest.approx(value, abs=1e-6)


def brute_force_bon_kl(scores, n):
    """KL over score values by enumerating all N^n ordered draws from the uniform pool."""
    N = len(scores)
    base = Counter(scores)
    chosen = Counter(max(scores[i] for i in draw) for draw in itertools.product(range(N), repeat=n))
    total = N**n
    return sum(c / total * math.log((c / total) / (base[v] / N)) for v, c in chosen.items())


def test_empirical_kl_matches_brute_force_with_ties():
    for scores in ([0.3, 0.1, 0.3, 0.9, 0.1, 0.5], [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 2.0, 2.0, 7.0]):
        for n in (1, 2, 3):
            assert bon_kl_empirical(np.array(scores), n) == pytest.approx(brute_force_bon_kl(scores, n), abs=1e-12)


def test_ties_pull_the_kl_below_the_bound():
    assert bon_kl_empirical(np.full((3, 8), 0.4), 4) == 0.0  # all tied: best-of-n changes nothing
    assert bon_kl_empirical(np.arange(8.0), 1) == pytest.approx(0.0, abs=1e-15)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(50))
    for n in (2, 4, 16):
        exact = bon_kl_discrete(probs, rng.normal(size=50), n)
        assert 0 < exact <= bon_kl_bound(n)
    coarse = np.array([[0, 0, 1, 1, 1, 2, 2, 2] * 4], dtype=float)  # (1, 32) few distinct scores
    fine = np.arange(32.0)[None]  # (1, 32)
    assert bon_kl_empirical(coarse, 8) < bon_kl_empirical(fine, 8) - 0.3


def test_bon_kl_discrete_two_outcomes_by_hand():
    # p = (0.5, 0.5) on scores (0, 1), n = 2: P_bon = (0.25, 0.75)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert bon_kl_discrete([0.5, 0.5], [1.0, 0.0], 2) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        bon_kl_discrete([0.5, 0.5], [1.0], 2)


# ---------------------------------------------------------------- best-of-n curves


def pool(seed=0, P=3, N=8):
    rng = np.random.default_rng(seed)
    proxy = rng.integers(0, 4, size=(P, N)).astype(float)  # (P, N) many ties on purpose
    gold = rng.normal(size=(P, N))  # (P, N)
    return gold, proxy


def test_best_of_n_takes_the_first_n_and_breaks_ties_low():
    scores = np.array([[0.1, 0.9, 0.9, 5.0], [3.0, 1.0, 3.0, 0.0]])
    assert best_of_n(scores, 3).tolist() == [1, 0]
    assert best_of_n(scores, 4).tolist() == [3, 0]
    assert best_of_n(scores, 1).tolist() == [0, 0]
    with pytest.raises(ValueError):
        best_of_n(scores, 5)


def test_unbiased_estimator_matches_brute_force_over_subsets():
    gold, proxy = pool()
    N = proxy.shape[1]
    for n in (1, 2, 3, 5, N):
        brute = np.zeros(len(proxy))
        subsets = list(itertools.combinations(range(N), n))
        for subset in subsets:
            cols = list(subset)
            pick = best_of_n(proxy[:, cols], n)  # (P,)
            brute += gold[np.arange(len(gold)), np.array(cols)[pick]]
        assert bon_expected(gold, proxy, n) == pytest.approx(brute / len(subsets), abs=1e-12)


def test_unbiased_estimator_end_points_and_weights():
    gold, proxy = pool(seed=1)
    assert bon_expected(gold, proxy, 1) == pytest.approx(gold.mean(axis=1))
    top = np.argmax(proxy, axis=1)  # first maximum
    assert bon_expected(gold, proxy, 8) == pytest.approx(gold[np.arange(3), top])
    w = bon_weights(8, 3)
    assert w.sum() == pytest.approx(1.0)
    assert w[:2].tolist() == [0.0, 0.0] and w[-1] == pytest.approx(math.comb(7, 2) / math.comb(8, 3))


def test_bon_curve_keys_and_monotone_proxy():
    gold, proxy = pool(seed=2, P=5, N=16)
    curve = bon_curve(gold, proxy, [1, 2, 4, 16])
    assert curve["n"].tolist() == [1, 2, 4, 16]
    assert curve["kl"] == pytest.approx([bon_kl_bound(n) for n in (1, 2, 4, 16)])
    assert curve["sqrt_kl"] == pytest.approx(np.sqrt(curve["kl"]))
    assert np.all(np.diff(curve["proxy"]) >= 0)  # more samples, higher selected proxy
    assert curve["gold"][0] == pytest.approx(gold.mean())
    assert np.all(curve["kl_empirical"] <= curve["kl"] + 1e-12)


# ---------------------------------------------------------------- Gao fits


def test_fits_recover_parameters_noise_free():
    d = np.linspace(0.0, 3.0, 12)
    assert fit_bon(d, d * (1.3 - 0.4 * d)) == pytest.approx((1.3, 0.4), abs=1e-10)
    r_rl = np.where(d > 0, d * (0.9 - 0.25 * np.log(np.where(d > 0, d, 1))), 0.0)
    assert fit_rl(d, r_rl) == pytest.approx((0.9, 0.25), abs=1e-10)


def test_fits_recover_parameters_with_seeded_noise():
    rng = np.random.default_rng(0)
    d = np.linspace(0.1, 4.0, 200)
    r = predict(d, 1.0, 0.3, "bon") + rng.normal(scale=0.02, size=d.size)
    assert fit_bon(d, r) == pytest.approx((1.0, 0.3), abs=0.02)
    r = predict(d, 0.8, 0.5, "rl") + rng.normal(scale=0.02, size=d.size)
    assert fit_rl(d, r) == pytest.approx((0.8, 0.5), abs=0.02)


def test_predict_handles_zero_and_peaks_match_the_formulas():
    assert predict(np.array([0.0, 1.0]), 0.8, 0.5, "rl").tolist() == [0.0, 0.8]
    assert predict(2.0, 1.0, 0.25, "bon") == pytest.approx(1.0)
    for form, (a, b) in [("bon", (1.2, 0.3)), ("rl", (0.9, 0.4))]:
        d_star, r_star = gao_peak(a, b, form)
        grid = np.linspace(0.01, 10, 100_001)
        values = predict(grid, a, b, form)
        assert d_star == pytest.approx(grid[np.argmax(values)], abs=1e-3)
        assert r_star == pytest.approx(values.max(), abs=1e-6)
    assert gao_peak(1.2, 0.3, "bon") == pytest.approx((2.0, 1.2))
    assert gao_peak(0.9, 0.4, "rl")[0] == pytest.approx(math.exp(0.9 / 0.4 - 1))


def test_fit_errors_are_clear():
    with pytest.raises(ValueError, match="at least 2"):
        fit_bon([1.0], [0.5])
    with pytest.raises(ValueError, match="same length"):
        fit_rl([0.5, 1.0, 2.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="distinct"):
        fit_bon([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="form"):
        predict([1.0], 1.0, 1.0, "dpo")
    with pytest.raises(ValueError, match="beta"):
        gao_peak(1.0, 0.0)


# ---------------------------------------------------------------- summaries


def test_peak_kl():
    assert peak_kl([0, 1, 4, 9, 16], [0.50, 0.60, 0.70, 0.65, 0.55]) == 4.0
    assert peak_kl([9, 1, 4], [0.7, 0.7, 0.2]) == 1.0  # a tie goes to the smaller KL
    assert peak_kl([0, 2, 5], [0.1, 0.2, 0.3]) == 5.0  # still rising: peak at the edge
    with pytest.raises(ValueError):
        peak_kl([1, 2], [0.1])


def test_distinct_n_hand_examples():
    # "the cat the cat" -> unigrams the, cat, the, cat: 2 distinct of 4
    assert distinct_n(["The cat the CAT."], 1) == 0.5
    # bigrams: (the cat) (cat the) (the cat) -> 2 of 3; second text adds (a dog): 3 of 4
    assert distinct_n(["the cat the cat"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["the cat the cat", "a dog"], 2) == pytest.approx(3 / 4)
    # n-grams do not cross texts: "cat a" is not counted
    assert distinct_n(["the cat", "a dog"], 2) == 1.0
    assert distinct_n(["one", ""], 2) == 0.0


def test_pareto_front():
    points = [(1.0, 0.5), (2.0, 0.4), (0.5, 0.3), (3.0, 0.9), (1.0, 0.5), (2.5, 0.9)]
    assert pareto_front(points) == [2, 0, 5]
    assert pareto_front([]) == []
