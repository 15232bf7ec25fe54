"""Family-wise control: each signal family decides within itself, and the families share alpha.

Within a family (`decide_family`): two-sided or one-sided p-values of its members, Holm over the
members that can reach their level (Tarone 1990: a member whose smallest attainable p exceeds
level / K can never be rejected and is left out, so it costs the others nothing).

Across families (`combine`): weighted Holm over the families (Holm 1979, weighted form). Each family's
global test is its Holm-Tarone step 1 (Bonferroni over its members), so under a complete null (an A/A
pair) the chance that any family fires is at most the sum of the levels it was tested at, which is
alpha. Accuracy gets a fixed share (ACCURACY_SHARE); the other families split the rest equally;
a family with no member able to reach its level takes no share (its share goes to the others), and
once a family fires its share passes on to the families still standing (the Holm step).

A new signal plugs in as a list of `Member`s under a family name: see `FamilyInput` and
engine/grade/decide.py `grade(..., evidence=Evidence(families=[FamilyInput(...)]))`.
"""

from __future__ import annotations

import msgspec

from engine import stats

ACCURACY = "accuracy"
ACCURACY_SHARE = 0.8  # of alpha, when any other family can reach its level; the rest is split equally


class Member(msgspec.Struct, kw_only=True):
    """One test of a family: a bench's accuracy, one bench's truncation canary, one trait, ...

    p: the member's p-value (one-sided "worse" for a canary, two-sided for accuracy);
    p_min: the smallest p this member could give with its data (Tarone: 1.0 = can never fire);
    adverse: whether a rejection means degradation (False: accuracy's IMPROVED side, said, not counted);
    line: the one-line reason when it fires, e.g. "truncation on arith 0.7% → 95%".
    """

    name: str
    effect: float  # in the member's own unit (accuracy units, nats, a rate difference)
    interval: tuple[float, float] | None = None  # inverts the same test, when it has one
    p: float
    p_min: float
    adverse: bool = True
    line: str = ""
    # Filled by decide_family:
    p_adjusted: float = 1.0  # Holm within the family, scaled to the whole decision's alpha (compare with alpha)
    tested: bool = True  # False: cannot reach its level (left out, Tarone)
    fired: bool = False  # rejected at the family's level (and adverse)
    rejected: bool = False  # rejected at the family's level (either direction)
    level: float = 0.0  # the level its decision (and interval) used


class FamilyInput(msgspec.Struct, kw_only=True):
    """What a signal hands to the decision: a name, its members and how they were tested."""

    name: str
    method: str
    members: list[Member]


class Family(msgspec.Struct, kw_only=True):
    name: str
    method: str
    measured: bool  # False: no data for this family (e.g. no probe): "not measured", never "passed"
    share: float  # of alpha at the step that decided it (0: took no share)
    level: float  # alpha x share: the Holm level of the family
    tarone_k: int  # members counted by Tarone at that level
    fired: bool
    members: list[Member]
    note: str = ""


def decide_family(name: str, members: list[Member], level: float, method: str = "", scale: float = 1.0) -> Family:
    """Holm over the members that can reach `level` (Tarone); `scale` turns the within-family
    adjusted p into one comparable with the whole decision's alpha (alpha / level)."""
    if not members:
        return Family(name=name, method=method, measured=False, share=0.0, level=level, tarone_k=0, fired=False, members=[])
    decision = stats.decide_family([m.p for m in members], [m.p_min for m in members], level)
    out = []
    for i, m in enumerate(members):
        rejected = bool(decision.rejected[i])
        out.append(
            msgspec.structs.replace(
                m,
                tested=bool(decision.in_family[i]),
                p_adjusted=min(1.0, decision.p_holm[i] * scale) if decision.in_family[i] else 1.0,
                rejected=rejected,
                fired=rejected and m.adverse,
                level=float(decision.level[i]),
            )
        )
    return Family(
        name=name, method=method, measured=True, share=0.0, level=level, tarone_k=decision.tarone_k,
        fired=any(m.fired for m in out), members=out,
    )  # fmt: skip


def _shares(names: list[str]) -> dict[str, float]:
    """Initial shares of alpha over the families that can take one."""
    if not names:
        return {}
    others = [n for n in names if n != ACCURACY]
    if ACCURACY not in names:
        return {n: 1.0 / len(others) for n in others}
    if not others:
        return {ACCURACY: 1.0}
    return {ACCURACY: ACCURACY_SHARE, **{n: (1 - ACCURACY_SHARE) / len(others) for n in others}}


def combine(inputs: list[FamilyInput], alpha: float) -> list[Family]:
    """Decide every family at its share of alpha (weighted Holm across families, Tarone within and
    across); families in input order."""
    measured = [f for f in inputs if f.members]
    able = [f.name for f in measured]
    # Tarone across families: a family none of whose members can reach alpha x share takes no share.
    while True:
        shares = _shares(able)
        keep = [n for n in able if any(m.p_min <= alpha * shares[n] for f in measured if f.name == n for m in f.members)]
        if keep == able:
            break
        able = keep
    standing = list(able)
    decided: dict[str, Family] = {}
    # Weighted Holm: the families standing share alpha in proportion to their weights; a family with a
    # rejection leaves, and the rest are decided again at their larger shares, until none is added.
    while standing:
        total = sum(shares[n] for n in standing)
        rejected_now = []
        for n in standing:
            share = shares[n] / total
            family = next(f for f in measured if f.name == n)
            result = decide_family(n, family.members, alpha * share, family.method, scale=1 / share)
            result.share = share
            decided[n] = result
            if any(m.rejected for m in result.members):
                rejected_now.append(n)
        if not rejected_now:
            break
        standing = [n for n in standing if n not in rejected_now]
    nominal = _shares([f.name for f in measured])
    out = []
    for f in inputs:
        if f.name in decided:
            out.append(decided[f.name])
        elif f.members:  # measured, but no member can reach the level it would get
            left = decide_family(f.name, f.members, alpha * nominal[f.name], f.method, scale=1 / nominal[f.name])
            left.note = "no member can reach its level: took no share of alpha"
            left.members = [msgspec.structs.replace(m, tested=False, p_adjusted=1.0, rejected=False, fired=False) for m in left.members]
            left.fired = False
            out.append(left)
        else:
            out.append(Family(name=f.name, method=f.method, measured=False, share=0.0, level=0.0, tarone_k=0, fired=False, members=[],
                              note="not measured"))  # fmt: skip
    return out
