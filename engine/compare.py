"""Compare a candidate run against a baseline run: `compare_runs` = load what grading needs + grade.

The decision lives in engine/grade/ (grade(base, cand, options, evidence) -> Verdict); this module
keeps the library entry point for callers that hold two runs.
"""

from __future__ import annotations

from engine.errors import NotComparable
from engine.grade.bench import AVG, MAJ, BenchComparison, compare_bench
from engine.grade.decide import GradeOptions
from engine.grade.load import grade_runs
from engine.grade.text import delta_cell, format_verdict
from engine.grade.verdict import Verdict

__all__ = ["AVG", "MAJ", "BenchComparison", "compare_bench", "compare_runs", "delta_cell", "format_verdict"]


def compare_runs(
    base, cand, alpha: float = 0.05, waive: tuple[str, ...] = (), *, allow_incomplete: bool = False,
    margin: float | None = None, signals: tuple[str, ...] | None = None, primary: str = AVG,
) -> Verdict:  # fmt: skip
    """Grade cand against base (every signal unless `signals`); NotComparable when the contract differs."""
    options = GradeOptions(alpha=alpha, waive=tuple(waive), allow_incomplete=allow_incomplete, margin=margin, signals=signals, primary=primary)
    verdict = grade_runs(base, cand, options)
    if verdict.decision == "NOT_COMPARABLE":
        raise NotComparable("\n".join([verdict.headline, *(f"  {r}" for r in verdict.reasons)]))
    return verdict
