"""Judged benches (trader_traits): the trait family (a degradation test per trait against the
baseline) and the trait gates (a deterministic minimum rate per trait, outside alpha).

The tables themselves come from engine/traits_report.py (it reads the judgments); the loader hands
them over as TraitEvidence so the decision needs neither the judge nor the files.
"""

from __future__ import annotations

import msgspec

from engine.grade.family import Member
from engine.grade.verdict import Gate

TRAITS, TRAIT_GATES = "traits", "trait-gates"


class TraitLine(msgspec.Struct, kw_only=True):
    trait: str
    name: str
    scenarios: int
    cand_rate: float
    base_rate: float | None = None
    delta: float | None = None
    p_degraded: float | None = None  # one-sided paired sign-flip test against the baseline
    gate: float | None = None
    gate_pass: bool | None = None


class TraitEvidence(msgspec.Struct, kw_only=True):
    bench: str
    rows: list[TraitLine]
    report: dict  # the whole TraitsReport as builtins (rendered by traits_report.format_report)


def trait_members(traits: list[TraitEvidence]) -> list[Member]:
    """One member per trait of every judged bench with a baseline. Smallest one-sided p of the sign-flip
    test on s scenarios is 2^-s: a trait with few scenarios cannot reach its level and is left out by
    Tarone, said in the verdict (audit defect 7: with 6 traits under Holm, 6 scenarios never could)."""
    return [
        Member(
            name=f"{t.bench}/{r.trait}", effect=r.delta or 0.0, p=r.p_degraded, p_min=0.5**r.scenarios if r.scenarios else 1.0,
            line=f"trait {r.trait} ({r.name}) on {t.bench} {100 * (r.base_rate or 0):.0f}% → {100 * r.cand_rate:.0f}%",
        )  # fmt: skip
        for t in traits
        for r in t.rows
        if r.p_degraded is not None
    ]


def trait_gates(traits: list[TraitEvidence]) -> list[Gate]:
    return [
        Gate(name=f"trait {t.bench}/{r.trait}", value=r.cand_rate, threshold=r.gate, failed=r.gate_pass is False,
             line=f"trait gate {r.trait} ({r.name}) on {t.bench}: {100 * r.cand_rate:.0f}% < {100 * r.gate:.0f}%")  # fmt: skip
        for t in traits
        for r in t.rows
        if r.gate is not None
    ]
