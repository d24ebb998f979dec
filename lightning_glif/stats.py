"""Small-sample statistics: Student-t intervals of a mean, of a paired (per-seed) difference, so
a variant's accuracy is reported as ``mean ± half width``, and of a paired ratio (benchmarks:
a run's time over its baseline's in the same round)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# scipy is not a direct dependency: it comes with scikit-learn, which the project requires.
from scipy import stats as _st

PAIRED_METHOD = "paired t-test (Student t on per-seed differences)"


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval ``[lo, hi]`` over ``n`` values (nan: undefined)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        """``(hi - lo) / 2``; nan when the interval is undefined."""
        return (self.hi - self.lo) / 2

    @property
    def excludes_zero(self) -> bool:
        """True when 0 lies outside ``[lo, hi]``; False when the interval is undefined (nan)."""
        return self.lo > 0 or self.hi < 0

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """``"94.44 ± 0.81"`` (values times ``scale``), or ``"94.44 (n=1)"`` when undefined."""
        if math.isnan(self.half_width):
            return f"{self.mean * scale:.{digits}f} (n={self.n})"
        return f"{self.mean * scale:.{digits}f} ± {self.half_width * scale:.{digits}f}"


def _as_1d(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {x.shape}")
    return x


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean: ``m ± t_{(1+c)/2, n-1} * s / sqrt(n)``, with ``s`` the
    sample standard deviation (ddof=1). With n == 1 there is no spread estimate, so the interval
    is undefined: ``lo = hi = nan`` (callers print "n/a" or use :meth:`Interval.format`)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = _as_1d(values, "values")
    n, m = x.size, float(x.mean())
    if n == 1:
        return Interval(m, math.nan, math.nan, 1)
    half = float(_st.t.ppf((1 + confidence) / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(m, m - half, m + half, n)


def _paired(values: Sequence[float], reference: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    v, r = _as_1d(values, "values"), _as_1d(reference, "reference")
    if v.size != r.size:
        raise ValueError(f"paired lengths differ: {v.size} values vs {r.size} reference")
    return v, r


def _differences(values: Sequence[float], reference: Sequence[float]) -> np.ndarray:
    v, r = _paired(values, reference)
    return v - r


def paired_difference(
    values: Sequence[float], reference: Sequence[float], confidence: float = 0.95
) -> Interval:
    """Paired-t interval of ``mean(d)``, ``d_i = v_i - r_i`` over seeds aligned by position:
    :func:`mean_ci` of the differences, ``mean(d) ± t_{(1+c)/2, n-1} * s_d / sqrt(n)``."""
    return mean_ci(_differences(values, reference), confidence)


def paired_ratio(
    values: Sequence[float], reference: Sequence[float], confidence: float = 0.95
) -> Interval:
    """Paired interval of a ratio ``v_i / r_i`` of positive values aligned by position (one
    timing round each): the Student-t interval of the mean log ratio, exponentiated. ``mean`` is
    the geometric mean of the ratios, ``[lo, hi]`` its interval (not symmetric about it).

    Why logs: a ratio's spread is multiplicative (a round twice as slow doubles both times), and
    the mean of ``log(v_i / r_i)`` treats 2x and 0.5x alike, where the plain mean of ratios
    would not."""
    v, r = _paired(values, reference)
    if (v <= 0).any() or (r <= 0).any():
        raise ValueError("paired_ratio needs positive values (times, sizes), got one <= 0")
    logs = mean_ci(np.log(v / r), confidence)
    return Interval(math.exp(logs.mean), math.exp(logs.lo), math.exp(logs.hi), logs.n)


def paired_p_value(values: Sequence[float], reference: Sequence[float]) -> float:
    """Two-sided paired t-test p-value: ``T = mean(d) / (s_d / sqrt(n))``,
    ``p = 2 * (1 - F_{t, n-1}(|T|))``. nan for n == 1 or all-zero differences;
    0.0 for a constant non-zero difference."""
    d = _differences(values, reference)
    n, m = d.size, float(d.mean())
    s = float(d.std(ddof=1)) if n > 1 else math.nan
    if math.isnan(s) or (s == 0 and m == 0):
        return math.nan
    if s == 0:
        return 0.0
    return float(2 * _st.t.sf(abs(m) / (s / math.sqrt(n)), n - 1))
