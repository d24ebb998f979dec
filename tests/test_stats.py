"""lightning_glif.stats: hand-computed Student-t intervals, agreement with scipy, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lightning_glif.stats import (
    PAIRED_METHOD,
    Interval,
    mean_ci,
    paired_difference,
    paired_p_value,
    paired_ratio,
)

ACC_A = [0.9412, 0.9455, 0.9431, 0.9470, 0.9448]
ACC_REF = [0.9380, 0.9401, 0.9422, 0.9415, 0.9390]


def test_mean_ci_by_hand():
    # values 1..4: mean 2.5, s = sqrt(5/3) = 1.2909944, t_{0.975,3} = 3.182446305
    half = 3.182446305 * 1.2909944487358056 / 2.0  # s / sqrt(4) = s / 2
    ci = mean_ci([1, 2, 3, 4])
    assert ci.n == 4
    assert ci.mean == pytest.approx(2.5)
    assert ci.half_width == pytest.approx(half, rel=1e-9)
    assert half == pytest.approx(2.0542, abs=1e-4)
    assert (ci.lo, ci.hi) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-9)
    assert ci.excludes_zero  # [0.446, 4.554]


def test_mean_ci_other_confidence_by_hand():
    # values [2, 4, 6]: mean 4, s = 2, t_{0.95,2} = 2.919985580 (90% two-sided)
    ci = mean_ci([2, 4, 6], confidence=0.90)
    assert ci.half_width == pytest.approx(2.919985580 * 2 / math.sqrt(3), rel=1e-8)


@pytest.mark.parametrize("values", [ACC_A, [1, 2, 3, 4], [-1.0, 0.5, 0.2, 3.0, -2.2, 0.1]])
@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_mean_ci_matches_scipy(values, confidence):
    x = np.asarray(values, dtype=float)
    lo, hi = stats.t.interval(confidence, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    ci = mean_ci(values, confidence)
    assert (ci.lo, ci.hi) == pytest.approx((lo, hi), rel=1e-12, abs=1e-12)


def test_paired_difference_matches_scipy_ttest_rel():
    ref = stats.ttest_rel(ACC_A, ACC_REF)
    cint = ref.confidence_interval(0.95)
    ci = paired_difference(ACC_A, ACC_REF)
    assert ci.n == len(ACC_A)
    assert ci.mean == pytest.approx(np.mean(np.subtract(ACC_A, ACC_REF)), rel=1e-12)
    assert (ci.lo, ci.hi) == pytest.approx((cint.low, cint.high), rel=1e-10)
    assert paired_p_value(ACC_A, ACC_REF) == pytest.approx(ref.pvalue, rel=1e-10)


def test_paired_difference_by_hand():
    # d = [1, 2, 3, 4] again: same interval as mean_ci of 1..4
    ci = paired_difference([11, 12, 13, 14], [10, 10, 10, 10])
    assert ci.mean == pytest.approx(2.5)
    assert ci.half_width == pytest.approx(3.182446305 * 1.2909944487358056 / 2, rel=1e-9)


def test_single_value_is_undefined():
    ci = mean_ci([0.9444])
    assert ci.n == 1 and ci.mean == pytest.approx(0.9444)
    assert math.isnan(ci.lo) and math.isnan(ci.hi) and math.isnan(ci.half_width)
    assert ci.excludes_zero is False
    assert ci.format(scale=100) == "94.44 (n=1)"
    d = paired_difference([0.95], [0.90])
    assert math.isnan(d.lo) and not d.excludes_zero
    assert math.isnan(paired_p_value([0.95], [0.90]))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="3 values vs 2 reference"):
        paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="3 values vs 2 reference"):
        paired_p_value([1, 2, 3], [1, 2])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="non-empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1, 2], confidence=95)


def test_identical_pair_is_zero_width_at_zero():
    ci = paired_difference(ACC_A, ACC_A)
    assert (ci.mean, ci.lo, ci.hi, ci.half_width) == (0.0, 0.0, 0.0, 0.0)
    assert not ci.excludes_zero
    assert math.isnan(paired_p_value(ACC_A, ACC_A))


def test_shifted_pair_excludes_zero():
    noise = [0.001, -0.002, 0.0015, 0.0, -0.0005]
    shifted = [r + 0.02 + e for r, e in zip(ACC_REF, noise, strict=True)]
    up = paired_difference(shifted, ACC_REF)
    assert up.excludes_zero and up.lo > 0
    down = paired_difference(ACC_REF, shifted)
    assert down.excludes_zero and down.hi < 0
    assert paired_p_value(shifted, ACC_REF) < 1e-4
    # a difference the noise swamps does not exclude 0
    assert not paired_difference([0.5, 0.7, 0.4], [0.6, 0.5, 0.5]).excludes_zero


def test_constant_nonzero_difference_p_value():
    assert paired_p_value([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == 0.0
    assert paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]).excludes_zero


def test_format_and_interval():
    ci = Interval(mean=0.9444, lo=0.9363, hi=0.9525, n=5)
    assert ci.half_width == pytest.approx(0.0081)
    assert ci.format(scale=100) == "94.44 ± 0.81"
    assert ci.format(digits=3) == "0.944 ± 0.008"
    with pytest.raises(AttributeError):
        ci.mean = 1.0  # type: ignore[misc]
    assert "paired t" in PAIRED_METHOD


def test_paired_ratio_by_hand():
    # ratios 2 and 8: logs ln2 and 3 ln2, mean 2 ln2 (geometric mean 4), sample sd sqrt(2) ln2,
    # half width t_{0.975, 1} * sqrt(2) ln2 / sqrt(2) = 12.7062047 ln2: [2**(2 - t), 2**(2 + t)].
    ci = paired_ratio([2.0, 80.0], [1.0, 10.0])
    t = 12.706204736174707
    assert ci.n == 2 and ci.mean == pytest.approx(4.0, rel=1e-12)
    assert ci.lo == pytest.approx(2 ** (2 - t), rel=1e-9)
    assert ci.hi == pytest.approx(2 ** (2 + t), rel=1e-9)


def test_paired_ratio_ignores_the_speed_of_each_round():
    # Rounds as a whole 1x, 3x and 0.5x as slow (busy phases): same ratios, same interval.
    fit, bare = [1.3, 1.5, 1.4], [1.0, 1.0, 1.0]
    slow = [1.0, 3.0, 0.5]
    a = paired_ratio(fit, bare)
    b = paired_ratio(
        [f * k for f, k in zip(fit, slow, strict=True)],
        [r * k for r, k in zip(bare, slow, strict=True)],
    )
    assert (b.mean, b.lo, b.hi) == pytest.approx((a.mean, a.lo, a.hi), rel=1e-12)
    assert a.mean == pytest.approx((1.3 * 1.5 * 1.4) ** (1 / 3), rel=1e-12)
    assert a.lo < a.mean < a.hi


def test_paired_ratio_of_constant_ratios_has_zero_width():
    ci = paired_ratio([3.0, 6.0, 1.5], [2.0, 4.0, 1.0])
    assert ci.mean == ci.lo == ci.hi == pytest.approx(1.5, rel=1e-12)


def test_paired_ratio_needs_positive_paired_values():
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([1.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="2 values vs 1 reference"):
        paired_ratio([1.0, 2.0], [1.0])
