"""Canaries: truncation (cap hits), generation length, no answer / scorer failure, and the episode
canaries of agent benches; each a family of one member per bench (engine/grade/family.py decides them).
"""

from __future__ import annotations

import msgspec
import numpy as np

from engine import episodes, stats
from engine.grade.family import Member
from engine.records import ItemRecord

TRUNCATION, LENGTH, NO_ANSWER, EPISODES = "truncation", "length", "no-answer", "episodes"


class TruncationCanary(msgspec.Struct, kw_only=True):
    base_rate: float
    cand_rate: float
    up: int  # items the candidate truncates more often than the baseline
    down: int
    p_more: float  # exact McNemar one-sided on up/down: candidate hits the cap more
    p_holm: float = 1.0  # Holm over the run's benches (this canary's family)
    flagged: bool


class LengthCanary(msgspec.Struct, kw_only=True):
    measure: str  # "reasoning tokens" (think mode) or "completion tokens"
    shift: stats.LengthShift
    p_holm: float = 1.0
    flagged: bool


class UnparsedCanary(msgspec.Struct, kw_only=True):
    """Items with no extracted answer or a scorer timeout/error, paired: a format regression must not
    read as lost knowledge."""

    base_rate: float  # share of samples without an answer or with a scorer failure
    cand_rate: float
    up: int  # items where the candidate has more such samples than the baseline
    down: int
    p_more: float  # exact McNemar one-sided on up/down
    p_holm: float = 1.0
    flagged: bool


def paired_canary(base: np.ndarray, cand: np.ndarray) -> tuple[int, int, float]:
    up, down = int(np.sum(cand > base)), int(np.sum(cand < base))
    return up, down, stats.mcnemar_exact(up, down).p_degraded


def _one_sided_min(discordant: int) -> float:
    """Smallest one-sided p of an exact sign test (and of Wilcoxon's exact form) on `discordant` pairs."""
    return 0.5**discordant if discordant else 1.0


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def truncation_member(bench: str, t: TruncationCanary) -> Member:
    return Member(
        name=bench, effect=t.cand_rate - t.base_rate, p=t.p_more, p_min=_one_sided_min(t.up + t.down),
        line=f"truncation on {bench} {_pct(t.base_rate)} → {_pct(t.cand_rate)} ({t.up} items up / {t.down} down)",
    )  # fmt: skip


def length_member(bench: str, ln: LengthCanary) -> Member:
    sh = ln.shift
    longer = sh.median_ratio > 1 or sh.cand_mean > sh.base_mean
    return Member(
        name=bench, effect=sh.cand_mean - sh.base_mean, p=sh.p_longer if longer else 1.0,
        p_min=_one_sided_min(sh.n) if longer and sh.p_longer < 1 else 1.0,
        line=f"{ln.measure} longer on {bench} (mean {sh.base_mean:.0f} → {sh.cand_mean:.0f}, median ratio ×{sh.median_ratio:.2f})",
    )  # fmt: skip


def unparsed_member(bench: str, un: UnparsedCanary) -> Member:
    return Member(
        name=bench, effect=un.cand_rate - un.base_rate, p=un.p_more, p_min=_one_sided_min(un.up + un.down),
        line=f"no answer / scorer failure on {bench} {_pct(un.base_rate)} → {_pct(un.cand_rate)} of samples",
    )  # fmt: skip


def episode_members(bench: str, base: list[ItemRecord], cand: list[ItemRecord]) -> tuple[list[Member], episodes.EpisodeCanaries | None]:
    """Turns used, tool errors, format errors and the bad stop reasons of one agent bench, as members
    of the episodes family (one family over every agent bench of the run)."""
    found = episodes.canaries(bench, base, cand, alpha=0.0)  # flags decided here, by the family
    if found is None:
        return [], None
    members = [
        Member(name=f"{bench}/{c.measure}", effect=c.cand_mean - c.base_mean, p=c.p_more, p_min=_one_sided_min(c.up + c.down),
               line=f"{c.measure} up on {bench} (mean {c.base_mean:.2f} → {c.cand_mean:.2f})")
        for c in found.counts
    ]  # fmt: skip
    members += [
        Member(name=f"{bench}/stop {s.reason}", effect=float(s.cand - s.base), p=s.p_more, p_min=_one_sided_min(s.to + s.away),
               line=f"more episodes end in {s.reason} on {bench} ({s.base} → {s.cand})")
        for s in found.stops
        if s.reason in episodes.BAD_STOPS
    ]  # fmt: skip
    return members, found


def unanswered(record: ItemRecord) -> bool:
    """No extracted answer, or the scorer timed out / failed on it."""
    extra = record.extra
    return (
        record.answer is None
        or not str(record.answer).strip()
        or bool(extra.get("check_timed_out"))
        or bool(extra.get("scorer_error"))
        or extra.get("status") == "timeout"
    )
