"""Summaries a scientist can trust: mean, sample standard deviation, t-based 95 % CI, Welch's t-test."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

from scipy import stats as sps

ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN for a single run (it has none)
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.4f} (one run: no CI or sd)"
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
        return Summary(1, mean, float("nan"), float("nan"), float("nan"))
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
                f"{better} is better than {worse} by {abs(self.difference):.4f} "
                f"(Welch's t-test p {p_text(self.p_value)})"
            )
        return (
            f"no significant difference between {a} and {b} "
            f"({self.difference:+.4f}, Welch's t-test p {p_text(self.p_value)} >= {ALPHA})"
        )


def p_text(p: float, digits: int = 3) -> str:
    """``= 0.0123`` to ``digits`` significant digits, trailing zeros kept (0.500, not 0.5), or ``< 0.05`` where
    rounding would carry a significant p up to ALPHA (0.04996 is not "p = 0.05")."""
    text = f"{p:#.{digits}g}"
    return f"< {ALPHA}" if p < ALPHA <= float(text) else f"= {text}"


def welch(a: list[float], b: list[float]) -> Comparison:
    """Two-sided Welch's t-test (unequal variances) of mean(a) - mean(b)."""
    difference = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return Comparison(difference, float("nan"), float("nan"), False)
    with warnings.catch_warnings():
        # Identical runs in one group (a diverged config, a deterministic one): scipy warns of "catastrophic
        # cancellation" on the user's terminal; the test itself is still right.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = sps.ttest_ind(a, b, equal_var=False)
    t, p = float(result.statistic), float(result.pvalue)
    return Comparison(difference, t, p, bool(p < ALPHA))
