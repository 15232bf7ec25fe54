"""The Verdict: what `grade` decided about a candidate against its baseline, saved as verdict.json.

Every command renders this value and none decides anything itself. Field by field in
docs/verdict-schema.md (a test checks that the doc lists every field).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from engine.errors import ExitCode
from engine.grade.bench import BenchComparison
from engine.grade.family import Family

SCHEMA = 1
VERDICT_FILE = "verdict.json"

Decision = Literal["PASS", "EQUIVALENT", "INCONCLUSIVE", "DEGRADED", "INCOMPLETE", "NOT_COMPARABLE", "INVALID", "GATE_FAILED"]


class Gate(msgspec.Struct, kw_only=True):
    """A deterministic gate (not a test, outside the alpha budget): the KL tripwire, a trait's minimum rate."""

    name: str  # "kl mean", "kl top-1", "trait <bench>/<trait>"
    value: float | None  # the measured value (None: not measured)
    threshold: float
    failed: bool
    line: str


class ProbeReport(msgspec.Struct, kw_only=True):
    """The tier-0 KL probe of the candidate (probe.json in its run dir) and its tripwire gates."""

    measured: bool
    kl_mean: float | None = None
    kl_se: float | None = None
    top1_agree: float | None = None
    n_positions: int = 0
    gates: list[Gate] = []
    note: str = ""


class Difference(msgspec.Struct, kw_only=True):
    """A contract field that differs between the runs (NOT_COMPARABLE), with what to do about it."""

    field: str
    baseline: object
    candidate: object
    remedy: str = ""


class TraitTable(msgspec.Struct, kw_only=True):
    """A judged bench's trait table (engine/traits_report.py TraitsReport, as it was when graded)."""

    bench: str
    report: dict  # msgspec.to_builtins(TraitsReport): rendered by traits_report.format_report


class Verdict(msgspec.Struct, kw_only=True):
    schema: int = SCHEMA
    decision: Decision
    exit_code: int  # engine.errors.ExitCode
    headline: str
    reasons: list[str] = []
    signals: list[str] = []  # the families and gates that counted (all, or --signals)
    baseline: str = ""
    candidate: str = ""
    baseline_model: str = ""
    candidate_model: str = ""
    alpha: float = 0.05
    margin: float | None = None  # --margin, accuracy units
    method: str = ""
    families: list[Family] = []
    benches: list[BenchComparison] = []
    traits: list[TraitTable] = []
    probe: ProbeReport | None = None
    gates: list[Gate] = []
    differences: list[Difference] = []
    waived: list[Difference] = []
    missing: list[str] = []
    invalid: list[str] = []
    notes: list[str] = []
    options: dict = {}
    provenance: dict = {}


def exit_code_of(decision: str, margin_given: bool) -> ExitCode:
    return {
        "PASS": ExitCode.PASS,
        "EQUIVALENT": ExitCode.PASS,
        "INCONCLUSIVE": ExitCode.NOT_SHOWN if margin_given else ExitCode.PASS,
        "DEGRADED": ExitCode.DEGRADED,
        "INCOMPLETE": ExitCode.INCOMPLETE,
        "NOT_COMPARABLE": ExitCode.NOT_COMPARABLE,
        "INVALID": ExitCode.INVALID,
        "GATE_FAILED": ExitCode.GATE_FAILED,
    }[decision]


def encode(verdict: Verdict) -> bytes:
    """verdict.json's bytes, exactly what --json prints (NaN is written as null)."""
    return msgspec.json.format(msgspec.json.encode(verdict), indent=1) + b"\n"
