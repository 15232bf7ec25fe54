"""Statistics of the paired comparison: every test and correction lives here.

Items are aligned by id; per item each run has a score in [0, 1] (the mean over its samples).
For binary scores the exact McNemar test is the binomial test on the discordant pairs: under "no
change", an item that flips is equally likely to flip either way.
"""

from __future__ import annotations

import math

import msgspec
from scipy import stats as _scipy_stats


class McNemar(msgspec.Struct, frozen=True):
    b: int  # baseline right, candidate wrong (losses)
    c: int  # baseline wrong, candidate right (wins)
    p_two_sided: float
    p_degraded: float  # one-sided: candidate worse
    p_improved: float  # one-sided: candidate better


def mcnemar_exact(b: int, c: int) -> McNemar:
    """Exact McNemar: X = b ~ Binomial(b + c, 1/2) under no change."""
    n = b + c
    if n == 0:
        return McNemar(b, c, 1.0, 1.0, 1.0)
    return McNemar(
        b,
        c,
        float(_scipy_stats.binomtest(b, n, 0.5, alternative="two-sided").pvalue),
        float(_scipy_stats.binomtest(b, n, 0.5, alternative="greater").pvalue),
        float(_scipy_stats.binomtest(b, n, 0.5, alternative="less").pvalue),
    )


def discordant(base_scores: list[float], cand_scores: list[float]) -> tuple[int, int]:
    """(b, c): items where the baseline did better / the candidate did better.

    With several samples per item this is the sign test on per-item differences, which is McNemar
    when every item carries one binary sample.
    """
    b = sum(1 for x, y in zip(base_scores, cand_scores, strict=True) if x > y)
    c = sum(1 for x, y in zip(base_scores, cand_scores, strict=True) if y > x)
    return b, c


def holm(p_values: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error control over the benches of a run)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")
