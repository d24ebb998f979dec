"""The sweep's statistics (lightning_glif.sweep.report) and the benchmarks' paired ratio
(benchmarks/common.py), against Student-t intervals computed by hand."""

from __future__ import annotations

import math

import pytest

from benchmarks.common import paired_ratio
from lightning_glif.sweep.report import mean_ci, paired_difference

T3 = 3.182446305284263  # t_{0.975, 3}: the 95% two-sided quantile with 3 degrees of freedom
T1 = 12.706204736174707  # t_{0.975, 1}


def test_mean_ci_by_hand():
    # values 1..4: mean 2.5, sample sd s = sqrt(5/3), half width t_{0.975,3} * s / sqrt(4)
    half = T3 * math.sqrt(5 / 3) / 2
    ci = mean_ci([1, 2, 3, 4])
    assert ci.n == 4 and ci.mean == pytest.approx(2.5)
    assert (ci.lo, ci.hi) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-9)
    assert half == pytest.approx(2.0543, abs=1e-4)


def test_mean_ci_other_confidence_by_hand():
    # values [2, 4, 6]: mean 4, s = 2, t_{0.95,2} = 2.919985580 (the 90% two-sided quantile)
    ci = mean_ci([2, 4, 6], confidence=0.90)
    half = 2.919985580 * 2 / math.sqrt(3)
    assert (ci.lo, ci.hi) == pytest.approx((4 - half, 4 + half), rel=1e-8)


def test_paired_difference_by_hand():
    # differences [1, 2, 3, 4]: the interval of mean_ci([1, 2, 3, 4]), shifted by nothing
    ci = paired_difference([11, 12, 13, 14], [10, 10, 10, 10])
    half = T3 * math.sqrt(5 / 3) / 2
    assert ci.mean == pytest.approx(2.5) and ci.n == 4
    assert (ci.lo, ci.hi) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-9)
    # pairing removes a per-seed offset that the unpaired spread would keep
    values, reference = [3.0, 1.0, 2.0], [2.5, 0.5, 1.5]
    assert paired_difference(values, reference).lo == 0.5
    assert mean_ci(values).lo < 0 < mean_ci(values).hi  # 2 ± t_{0.975,2} * 1 / sqrt(3)


def test_one_value_has_no_interval_and_equal_ones_a_zero_width_one():
    ci = mean_ci([0.9444])
    assert ci.n == 1 and ci.mean == pytest.approx(0.9444)
    assert math.isnan(ci.lo) and math.isnan(ci.hi)
    same = paired_difference([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert (same.mean, same.lo, same.hi) == (0.0, 0.0, 0.0)
    shifted = paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert (shifted.lo, shifted.hi) == (1.0, 1.0)


def test_an_interval_excludes_zero_only_when_the_difference_is_clear():
    assert paired_difference([0.95, 0.96, 0.955], [0.90, 0.92, 0.91]).lo > 0
    mixed = paired_difference([0.91, 0.90, 0.935], [0.90, 0.92, 0.91])  # +1, -2, +2.5 pp
    assert mixed.lo < 0 < mixed.hi
    assert paired_difference([0.85, 0.86, 0.855], [0.90, 0.92, 0.91]).hi < 0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="3 values, 2 reference"):
        paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="2 values vs 1 reference"):
        paired_ratio([1.0, 2.0], [1.0])


def test_paired_ratio_by_hand():
    # ratios 2 and 8: logs ln2 and 3 ln2, mean 2 ln2 (geometric mean 4), sample sd sqrt(2) ln2,
    # half width t_{0.975,1} * sqrt(2) ln2 / sqrt(2) = t ln2: the interval [2**(2-t), 2**(2+t)].
    ci = paired_ratio([2.0, 80.0], [1.0, 10.0])
    assert ci.n == 2 and ci.mean == pytest.approx(4.0, rel=1e-12)
    assert (ci.lo, ci.hi) == pytest.approx((2 ** (2 - T1), 2 ** (2 + T1)), rel=1e-9)


def test_paired_ratio_ignores_the_speed_of_each_round():
    # rounds 1x, 3x and 0.5x as slow as a whole (busy phases): the same ratios, the same interval
    fit, bare, slow = [1.3, 1.5, 1.4], [1.0, 1.0, 1.0], [1.0, 3.0, 0.5]
    a = paired_ratio(fit, bare)
    b = paired_ratio([f * k for f, k in zip(fit, slow, strict=True)], slow)
    assert (b.mean, b.lo, b.hi) == pytest.approx((a.mean, a.lo, a.hi), rel=1e-12)
    assert a.mean == pytest.approx((1.3 * 1.5 * 1.4) ** (1 / 3), rel=1e-12) and a.lo < a.mean < a.hi
    constant = paired_ratio([3.0, 6.0, 1.5], [2.0, 4.0, 1.0])
    assert constant.mean == constant.lo == constant.hi == pytest.approx(1.5, rel=1e-12)
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([1.0, 0.0], [1.0, 1.0])
