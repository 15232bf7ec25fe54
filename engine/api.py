"""The Python API for notebooks: read runs, grade a pair, get one row per item and side.

    from engine.api import read_run, grade, to_pandas

    base = read_run("baselines/smollm2-135m/smoke-nothink-s0")
    cand = read_run("runs/demo-rtn-int3")
    verdict = grade(base, cand)            # headline, exit_code, reasons, benches (b, c, delta, ...)
    frame = to_pandas(cand, base)          # one row per (bench, item, side)

docs/evidence.md has the runnable example (tests/test_evidence.py runs it).
"""

from __future__ import annotations

from engine.evidence import Graded, grade_pair
from engine.export import rows, to_pandas
from engine.records import Run, read_run

__all__ = ["Graded", "Run", "grade", "read_run", "rows", "to_pandas"]


def grade(
    base: Run, cand: Run, *, alpha: float = 0.05, margin: float | None = None, waive: tuple[str, ...] = (), allow_incomplete: bool = False
) -> Graded | None:
    """The grade of `cand` against `base` (margin in accuracy units, e.g. 0.02); None when they share no bench."""
    return grade_pair(base, cand, alpha=alpha, margin=margin, waive=waive, allow_incomplete=allow_incomplete)
