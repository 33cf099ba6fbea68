"""Summaries a scientist can trust: mean, sample standard deviation, t-based 95 % CI, Welch's t-test."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy import stats as sps

ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for a single run
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.half_width:.4f} (95% CI, n={self.n}, sd {self.std:.4f})"

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2

    def mean_ci(self) -> str:
        """``mean ± half-width`` of the 95 % CI; the mean alone for a single value (it has no CI)."""
        return f"{self.mean:.4f} ± {self.half_width:.4f}" if self.n > 1 else f"{self.mean:.4f}"


def summarize(values: list[float]) -> Summary:
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = sum(values) / n
    if n == 1:
        return Summary(1, mean, 0.0, float("nan"), float("nan"))
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = sps.t.ppf(1 - ALPHA / 2, df=n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    difference: float  # mean(a) - mean(b)
    t: float
    p_value: float
    significant: bool  # p < ALPHA, two-sided

    def to_dict(self) -> dict:
        return asdict(self)

    def verdict(self, a: str, b: str) -> str:
        if math.isnan(self.p_value):
            return f"cannot tell {a} from {b}: too few runs or no variance"
        if self.significant:
            better, worse = (a, b) if self.difference > 0 else (b, a)
            return (
                f"{better} is better than {worse} by {abs(self.difference):.4f} (Welch's t-test p = {self.p_value:.3g})"
            )
        return (
            f"no significant difference between {a} and {b} "
            f"({self.difference:+.4f}, Welch's t-test p = {self.p_value:.3g} >= {ALPHA})"
        )


def welch(a: list[float], b: list[float]) -> Comparison:
    """Two-sided Welch's t-test (unequal variances) of mean(a) - mean(b)."""
    difference = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Comparison(difference, float("nan"), float("nan"), False)
    result = sps.ttest_ind(a, b, equal_var=False)
    t, p = float(result.statistic), float(result.pvalue)
    return Comparison(difference, t, p, bool(p < ALPHA))
