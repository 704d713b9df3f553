import math
import statistics

import pytest

from rlhf_edu.metrics import mean_and_se, paired_difference


def test_mean_and_se_against_statistics():
    x = [0.2, 0.5, 0.9, 0.4, 0.7]
    mean, se = mean_and_se(x)
    assert mean == pytest.approx(statistics.mean(x))
    assert se == pytest.approx(statistics.stdev(x) / math.sqrt(len(x)))


def test_paired_difference_reference_value():
    # differences [1, 2, 3]: mean 2, sd 1, se 1/sqrt(3), z = 2 sqrt(3) = 3.4641
    d = paired_difference([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert d["delta"] == pytest.approx(2.0)
    assert d["se"] == pytest.approx(1 / math.sqrt(3))
    assert d["z"] == pytest.approx(3.464102, abs=1e-6)


@pytest.mark.parametrize(
    ("after", "z"), [([3.0, 4.0, 5.0], math.inf), ([2.0, 3.0, 4.0], 0.0), ([1.0, 2.0, 3.0], -math.inf)]
)
def test_paired_difference_with_zero_spread(after, z):
    """Every paired difference equal (+1, 0 or -1 here): se is 0, and z is +inf, 0 or -inf by the
    sign of the mean difference (no division by zero, no NaN)."""
    d = paired_difference(after, [2.0, 3.0, 4.0])
    assert d["se"] == 0.0
    assert d["delta"] == after[0] - 2.0
    assert d["z"] == z


def test_paired_difference_needs_matched_lists():
    with pytest.raises(ValueError, match="matched"):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        mean_and_se([])
