"""The answer-margin family in the one decision: margin files beside both runs feed `grade` through
the loader; a margin that falls fires (DEGRADED, named), an identical one never does, margins scored
another way are not graded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_grade import _identical, _write

from engine.errors import ExitCode
from engine.grade import GradeOptions
from engine.grade.load import grade_runs
from engine.margin import MarginFile, MarginItem, write_margins
from engine.records import read_run


def _margins(run_dir: Path, values: np.ndarray, prefix: str = "") -> None:
    write_margins(run_dir, MarginFile(
        version="1", bench="arith", bench_version="1", kind="answer", prefix=prefix, answer_format="{}", prompt="chat",
        dtype="float32", model_fingerprint="f", backend="vllm", seconds=1.0,
        items=[MarginItem(item_id=f"q{i}", margin=float(v), tokens=1) for i, v in enumerate(values)],
    ))  # fmt: skip


def _pair(tmp_path: Path, n: int = 400) -> tuple[Path, Path]:
    base, cand = _identical(n)
    return _write(base, tmp_path / "base"), _write(cand, tmp_path / "cand")


def test_a_falling_answer_margin_is_degraded_and_named(tmp_path):
    base_dir, cand_dir = _pair(tmp_path)
    rng = np.random.default_rng(3)
    x = rng.normal(-1.0, 1.0, 400)
    _margins(base_dir, x)
    _margins(cand_dir, x + rng.normal(-0.4, 0.5, 400))  # the reference answer got less likely
    v = grade_runs(read_run(base_dir), read_run(cand_dir), GradeOptions())
    assert v.decision == "DEGRADED" and v.exit_code == ExitCode.DEGRADED
    assert any(r.startswith("answer margin on arith Δ −0.") for r in v.reasons), v.reasons
    accuracy_only = grade_runs(read_run(base_dir), read_run(cand_dir), GradeOptions(signals=("accuracy",)))
    assert accuracy_only.decision != "DEGRADED"


def test_identical_margins_never_fire_and_no_files_is_not_measured(tmp_path):
    base_dir, cand_dir = _pair(tmp_path)
    v = grade_runs(read_run(base_dir), read_run(cand_dir), GradeOptions())
    assert any("answer-margin" in n and "not measured" in n for n in v.notes)
    x = np.random.default_rng(4).normal(-1.0, 1.0, 400)
    _margins(base_dir, x)
    _margins(cand_dir, x)
    v = grade_runs(read_run(base_dir), read_run(cand_dir), GradeOptions())
    family = next(f for f in v.families if f.name == "answer-margin")
    assert family.measured and not family.fired and v.decision in ("PASS", "EQUIVALENT")


def test_margins_scored_another_way_are_not_graded(tmp_path):
    base_dir, cand_dir = _pair(tmp_path)
    x = np.zeros(400)
    _margins(base_dir, x)
    _margins(cand_dir, x - 5.0, prefix="The answer is ")
    v = grade_runs(read_run(base_dir), read_run(cand_dir), GradeOptions())
    assert v.decision != "DEGRADED" and any("NOT COMPARABLE" in n and "answer prefix" in n for n in v.notes)
