"""Summary statistics over seeds: mean, sample std, Student-t confidence intervals and Welch's t-test.

Pure `math`, so that a report needs no scipy at run time (scipy checks these functions in the tests). The Student-t
CDF goes through the regularized incomplete beta function, evaluated with its continued fraction (modified Lentz).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

_EPS = 1e-16  # relative precision targeted by the continued fraction
_TINY = 1e-300  # keeps Lentz's denominators off zero


def finite(values: Iterable[float]) -> list[float]:
    """The finite floats among `values` (NaN, inf and None dropped)."""
    out = []
    for v in values:
        if v is None:
            continue
        v = float(v)
        if math.isfinite(v):
            out.append(v)
    return out


def mean(values: Iterable[float]) -> float:
    xs = list(values)
    return math.fsum(xs) / len(xs) if xs else math.nan


def sample_std(values: Iterable[float]) -> float:
    """Standard deviation with ddof=1; NaN for fewer than two values."""
    xs = list(values)
    if len(xs) < 2:
        return math.nan
    m = mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (Numerical Recipes' betacf, modified Lentz); converges for x < (a+1)/(a+b+2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0 (got a={a}, b={b})")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """Survival function P(T > t) of Student's t with `df` (> 0, not necessarily integer) degrees of freedom."""
    if math.isnan(t) or not df > 0:
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    if t * t < df:
        # Near the centre: P(|T| < |t|) = I_{t²/(df+t²)}(1/2, df/2), accurate where 1 - tail would cancel.
        central = betainc(0.5, 0.5 * df, t * t / (df + t * t))
        return 0.5 - 0.5 * central if t > 0 else 0.5 + 0.5 * central
    tail = 0.5 * betainc(0.5 * df, 0.5, df / (df + t * t))  # P(T > |t|), accurate in the far tail
    return tail if t > 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    return t_sf(-t, df)


def t_pdf(t: float, df: float) -> float:
    log_norm = math.lgamma(0.5 * (df + 1.0)) - math.lgamma(0.5 * df) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - 0.5 * (df + 1.0) * math.log1p(t * t / df))


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t: the t with t_cdf(t, df) = p (Newton inside a bracket, bisecting when it leaves)."""
    if math.isnan(p) or not df > 0:
        return math.nan
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    if p == 0.5:
        return 0.0
    sign = 1.0 if p > 0.5 else -1.0
    target = 1.0 - p if p > 0.5 else p  # solve t_sf(|t|) = the smaller tail, which keeps its precision
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > target:
        lo, hi = hi, hi * 2.0
    t = 0.5 * (lo + hi)
    for _ in range(200):
        f = t_sf(t, df) - target  # decreasing in t
        if f > 0:
            lo = t
        else:
            hi = t
        step = f / t_pdf(t, df)
        new = t + step
        if not (lo < new < hi):
            new = 0.5 * (lo + hi)
        if abs(new - t) <= 1e-15 * max(1.0, abs(t)) or hi - lo <= 1e-15 * max(1.0, hi):
            return sign * new
        t = new
    return sign * t


def confidence_interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean: mean ± t_{(1+level)/2, n-1} · s/√n; NaNs for fewer than two values."""
    xs = list(values)
    n = len(xs)
    if n < 2:
        return math.nan, math.nan
    m, s = mean(xs), sample_std(xs)
    half = t_ppf(0.5 + 0.5 * level, n - 1) * s / math.sqrt(n)
    return m - half, m + half


@dataclass(frozen=True)
class Welch:
    """Welch's unequal-variance t-test of mean(a) - mean(b): statistic, Welch-Satterthwaite df, two-sided p."""

    t: float
    df: float
    p: float


def welch_t_test(a: Iterable[float], b: Iterable[float]) -> Welch:
    """Two-sided Welch t-test; NaNs when either side has fewer than two values or both have zero variance."""
    xa, xb = list(a), list(b)
    na, nb = len(xa), len(xb)
    if na < 2 or nb < 2:
        return Welch(math.nan, math.nan, math.nan)
    va, vb = sample_std(xa) ** 2 / na, sample_std(xb) ** 2 / nb
    se2 = va + vb
    if se2 == 0.0:
        return Welch(math.nan, math.nan, math.nan)
    t = (mean(xa) - mean(xb)) / math.sqrt(se2)
    df = se2 * se2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    return Welch(t, df, min(1.0, 2.0 * t_sf(abs(t), df)))
