"""The one decision: grade(baseline, candidate, options, evidence) -> Verdict (docs/decision.md).

    decide.py   grade, GradeOptions, Evidence, SIGNALS     verdict.py  Verdict, exit_code_of, verdict.json bytes
    family.py   Member, FamilyInput, decide_family, combine (family-wise control)
    bench.py    per-bench test and decision                strata.py   reweighting to the full split
    canaries.py truncation, length, no-answer, episodes    traits.py   trait family and gates
    text.py     terminal rendering                         load.py     reads what grade needs; writes verdict.json
"""

from engine.grade.decide import SIGNALS, Evidence, GradeOptions, ProbeReading, grade
from engine.grade.family import FamilyInput, Member, combine, decide_family
from engine.grade.verdict import VERDICT_FILE, Verdict, encode, exit_code_of

__all__ = [
    "SIGNALS", "VERDICT_FILE", "Evidence", "FamilyInput", "GradeOptions", "Member", "ProbeReading", "Verdict",
    "combine", "decide_family", "encode", "exit_code_of", "grade",
]
