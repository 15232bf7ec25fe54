"""The answer-margin family: a paired test per bench on the per-item margin (engine/margin.py), Holm
over the benches, and an interval that says the same as the decision. Pure functions of numbers.

Test: Student's paired t on candidate − baseline margins of the items both sides scored (the margin
is continuous and n is in the tens to thousands; a few items with huge drops make t conservative, not
liberal: tests/test_margin_stats.py measures its A/A family-wise rate on heavy-tailed and skewed
nulls). Holm over the benches of the family (every bench can reach any level: p_min = 0). Interval:
est ± t_{γ/2, df}·se at the level γ of the Holm step that decided the bench (stats.decide_family), so
it excludes 0 exactly when the bench is flagged. Items with identical margins on both sides (a
deterministic teacher-forced pass of the same weights) give Δ 0, no spread, p 1: "identical".
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from engine import stats
from engine.stats import OnFirstUse

_scipy_stats = OnFirstUse("scipy.stats")  # loaded when first used (fast --help)

FAMILY = "answer margin"


class MarginTest(msgspec.Struct, frozen=True, kw_only=True):
    bench: str
    n: int  # items paired
    base_mean: float  # nats
    cand_mean: float
    effect: float  # mean of candidate − baseline margins (nats); negative: the candidate is less sure of the answer
    interval: tuple[float, float]  # inverts the test at `level`
    level: float  # the Holm step's gamma (two-sided) that decided this bench
    p: float  # two-sided paired t
    p_holm: float
    p_min: float  # smallest p these items could give (0: a continuous test)
    fired: bool  # Holm-rejected, either direction
    worse: bool  # fired and effect < 0
    identical: bool  # every paired margin equal bit for bit
    method: str = "paired t, Holm over the margin benches"


def _interval(test: stats.DeltaTest, gamma: float) -> tuple[float, float]:
    if test.scale <= 0:
        return test.estimate, test.estimate
    half = float(_scipy_stats.t.isf(gamma / 2, test.df)) * test.scale
    return test.estimate - half, test.estimate + half


def margin_tests(
    base_margins: dict[str, dict[str, float]], cand_margins: dict[str, dict[str, float]], alpha: float = 0.05
) -> list[MarginTest]:
    """One test per bench present in both ({bench: {item_id: margin}}), paired by item id, sorted by bench."""
    names = sorted(b for b in base_margins if b in cand_margins)
    rows = []
    for name in names:
        base, cand = base_margins[name], cand_margins[name]
        ids = [i for i in base if i in cand]
        x = np.array([base[i] for i in ids], dtype=float)
        y = np.array([cand[i] for i in ids], dtype=float)
        rows.append((name, x, y, stats.paired_t(y - x)))
    family = stats.decide_family([t.p_two for *_, t in rows], [0.0] * len(rows), alpha) if rows else None
    out = []
    for k, (name, x, y, test) in enumerate(rows):
        gamma = family.level[k]
        fired = bool(family.rejected[k])
        out.append(
            MarginTest(
                bench=name, n=int(x.size), base_mean=float(x.mean()) if x.size else math.nan,
                cand_mean=float(y.mean()) if y.size else math.nan, effect=test.estimate, interval=_interval(test, gamma),
                level=gamma, p=test.p_two, p_holm=family.p_holm[k], p_min=0.0, fired=fired,
                worse=fired and test.estimate < 0, identical=bool(x.size) and bool(np.array_equal(x, y)),
            )
        )  # fmt: skip
    return out


def format_margin_test(t: MarginTest) -> str:
    """One line: "answer margin Δ −0.41 nats [−0.55, −0.28], p 3e-9"."""
    if t.identical:
        return f"answer margin Δ 0 nats, identical on all {t.n} items"
    lo, hi = t.interval
    flag = (" ▼ worse" if t.worse else " ▲ better") if t.fired else ""
    return (
        f"answer margin Δ {_signed(t.effect)} nats [{_signed(lo)}, {_signed(hi)}], p {t.p:.2g}"
        f"{f' (Holm {t.p_holm:.2g})' if t.p_holm != t.p else ''}{flag}"
    )


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−")
