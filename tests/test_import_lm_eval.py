"""Importing lm-evaluation-harness runs (engine/importers/lm_eval.py) and grading them with our statistics.

The fixtures are real lm-eval output, not hand-made: tests/fixtures/lm_eval/make_fixtures.sh ran
lm-eval 0.4.13 (`lm_eval[hf]` from PyPI, its `hf` model, float32 on CPU, --seed 1234, --log_samples)
on the tiny model (smollm2-135m, `python -m engine model`) -> base/, and on its rtn-int3 candidate
(`python -m engine degrade --method rtn-int3`) -> rtn-int3/. Each run is two lm-eval invocations into
one folder: `gsm8k_local` (lm-eval's gsm8k task read from ../shared/data, zero-shot, chat template,
max_gen_toks 96, --limit 10, filters strict-match and flexible-extract) and the group
`mmlu_pro_local` (multiple choice by log-likelihood over MMLU-Pro option texts, no chat template,
subtasks business and other, --limit 15 each). base-repeats/ holds `gsm8k_local_sampled` of the base
model (repeats 3 at T=0.7, majority vote and first-repeat filters, max_gen_toks 64, --limit 3). The task YAMLs are in
tests/fixtures/lm_eval/tasks/. Only results_*.json and samples_*.jsonl were kept, unedited.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.__main__ import main
from engine.compare import compare_runs
from engine.importers import lm_eval
from engine.records import read_run
from engine.spec import backend_name

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lm_eval"
BASE = FIXTURES / "base"
INT3 = FIXTURES / "rtn-int3"
ROOT = Path(__file__).resolve().parent.parent


def _import(src: Path, out: Path, *extra: str) -> Path:
    assert main(["import", "lm-eval", str(src), "--out", str(out), *extra]) == 0
    return out


def _samples_file(run: Path, task: str) -> Path:
    (path,) = run.rglob(f"samples_{task}_*.jsonl")
    return path


def _results(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run.rglob("results_*.json"))]


def test_import_writes_an_ordinary_run(tmp_path):
    run = read_run(_import(BASE, tmp_path / "base"))
    assert run.spec.source == "lm-eval" and run.spec.tier == "lm-eval" and backend_name(run.spec.engine) == "lm-eval"
    assert run.spec.model.endswith("smollm2-135m")
    assert {b.name for b in run.spec.benches} == {"gsm8k_local:strict-match", "gsm8k_local:flexible-extract", "mmlu_pro_local"}
    gsm = run.records["gsm8k_local:flexible-extract"]
    assert [r.item_id for r in gsm] == [str(i) for i in range(10)]
    assert all(r.extra["no_token_counts"] and r.extra["no_finish_reason"] for r in gsm)
    mc = run.records["mmlu_pro_local"]
    assert len(mc) == 30
    assert {r.category for r in mc} == {"mmlu_pro_local_business", "mmlu_pro_local_other"}
    # The imported per-document scores reproduce lm-eval's own aggregates, metric by metric.
    results = {task: values for r in _results(BASE) for task, values in r["results"].items()}
    for flt in ("strict-match", "flexible-extract"):
        recs = run.records[f"gsm8k_local:{flt}"]
        assert sum(r.score for r in recs) / len(recs) == pytest.approx(results["gsm8k_local"][f"exact_match,{flt}"])
    for task in ("mmlu_pro_local_business", "mmlu_pro_local_other"):
        recs = [r for r in mc if r.category == task]
        for metric in ("acc", "acc_norm"):
            mean = sum(r.scores[metric] for r in recs) / len(recs)
            assert mean == pytest.approx(results[task][f"{metric},none"])
        assert all(r.score == r.scores["acc"] for r in recs)
    # The margin is positive exactly when the correct choice has the highest log-likelihood (acc).
    for r in mc:
        assert (r.scores[lm_eval.MARGIN] > 0) == (r.scores["acc"] == 1.0)


def _results_file_of(run: Path, task: str) -> Path:
    (path,) = [p for p in run.rglob("results_*.json") if task in json.loads(p.read_text())["configs"]]
    return path


def test_metric_flag_picks_the_score_and_rejects_unknown_names(tmp_path, capsys):
    # One results file (the multiple-choice invocation) imports on its own, scored by --metric.
    run = read_run(_import(_results_file_of(BASE, "mmlu_pro_local_other"), tmp_path / "norm", "--metric", "acc_norm"))
    assert [b.name for b in run.spec.benches] == ["mmlu_pro_local"]
    assert all(r.score == r.scores["acc_norm"] for r in run.records["mmlu_pro_local"])
    acc = read_run(_import(_results_file_of(BASE, "mmlu_pro_local_other"), tmp_path / "acc", "--metric", "acc"))
    assert acc.spec.benches[0].version != run.spec.benches[0].version  # another score: another contract
    # The margin is no score in [0, 1]: it stays in the records' scores, tested beside the primary one.
    capsys.readouterr()
    assert main(["import", "lm-eval", str(BASE), "--out", str(tmp_path / "m"), "--metric", "ll_margin"]) == 2
    assert "stay in every record's scores" in capsys.readouterr().err
    # gsm8k has no acc_norm: a one-line error naming the file and what exists.
    capsys.readouterr()
    assert main(["import", "lm-eval", str(BASE), "--out", str(tmp_path / "bad"), "--metric", "acc_norm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "samples_gsm8k_local_" in err and "exact_match" in err


def test_same_run_twice_is_no_change(tmp_path, capsys):
    a = _import(BASE, tmp_path / "a")
    b = _import(BASE, tmp_path / "b")
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    # Bit-identical, but 10-30 documents cannot rule out a 5-pt drop: said, exit 0 (no --margin).
    assert "NOT COMPARABLE" not in out and "verdict: INCONCLUSIVE: too small to rule out" in out
    # Re-importing into the same directory adds nothing and keeps what is there.
    before = {p.name: p.read_bytes() for p in (a / "records").iterdir()}
    _import(BASE, a)
    assert before == {p.name: p.read_bytes() for p in (a / "records").iterdir()}


def test_tampered_doc_hash_is_not_comparable_naming_the_document(tmp_path, capsys):
    copy = tmp_path / "tampered-src"
    shutil.copytree(BASE, copy)
    samples = _samples_file(copy, "gsm8k_local")
    lines = samples.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        sample = json.loads(line)
        if sample["doc_id"] == 7:
            sample["doc_hash"] = "0" * 64
            lines[i] = json.dumps(sample, ensure_ascii=False) + "\n"
    samples.write_text("".join(lines))
    a = _import(BASE, tmp_path / "a")
    b = _import(copy, tmp_path / "b")
    assert "do not hash to their logged doc_hash" in capsys.readouterr().err
    assert main(["compare", str(a), str(b)]) == 3
    out = capsys.readouterr().out
    assert "NOT COMPARABLE" in out
    assert "gsm8k_local:strict-match: doc_hash differs for doc_id 7" in out
    assert "mmlu_pro_local: " not in out  # the untouched task is not blamed


def test_prompt_difference_blocks_unless_waived(tmp_path, capsys):
    copy = tmp_path / "other-prompts"
    shutil.copytree(BASE, copy)
    samples = _samples_file(copy, "mmlu_pro_local_other")
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    lines[0]["prompt_hash"] = "f" * 64
    samples.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in lines))
    a, b = _import(BASE, tmp_path / "a"), _import(copy, tmp_path / "b")
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 3
    assert "lm_eval.prompts" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--allow-differ", "lm_eval.prompts"]) == 0
    assert "compared despite differing lm_eval.prompts" in capsys.readouterr().out


def test_truncated_samples_file_is_a_one_line_error(tmp_path, capsys):
    for cut in ("mid-line", "whole-line"):
        copy = tmp_path / cut
        shutil.copytree(BASE, copy)
        samples = _samples_file(copy, "mmlu_pro_local_business")
        data = samples.read_bytes()
        last_start = data.rstrip(b"\n").rfind(b"\n") + 1
        samples.write_bytes(data[: last_start + 100] if cut == "mid-line" else data[:last_start])
        assert main(["import", "lm-eval", str(copy), "--out", str(tmp_path / f"run-{cut}")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("error: ") and samples.name in err and "truncated" in err
        assert not (tmp_path / f"run-{cut}" / "records").exists()  # nothing half-written


def test_imported_run_never_grades_against_a_native_one(tmp_path, capsys):
    native = ROOT / "baselines" / "smollm2-135m" / "smoke-nothink-s0"
    imported = _import(BASE, tmp_path / "imp")
    capsys.readouterr()
    assert main(["compare", str(native), str(imported)]) == 3
    assert "source: baseline 'native' vs candidate 'lm-eval'" in capsys.readouterr().out


def test_int3_candidate_is_flagged(tmp_path, capsys):
    base = read_run(_import(BASE, tmp_path / "base"))
    cand = read_run(_import(INT3, tmp_path / "int3"))
    cmp = compare_runs(base, cand)
    rows = {r.bench: r for r in cmp.benches}
    assert set(rows) == {"gsm8k_local:strict-match", "gsm8k_local:flexible-extract", "mmlu_pro_local"}
    assert rows["mmlu_pro_local"].binary and rows["mmlu_pro_local"].test.startswith("exact McNemar")
    assert rows["mmlu_pro_local"].strata is not None  # subtasks are the categories
    # The log-likelihood margin sees what the binary flips of a near-chance task cannot.
    (margin,) = lm_eval.margin_tests(base, cand)
    assert margin.bench == "mmlu_pro_local" and margin.n == 30
    assert margin.delta < 0 and margin.p_degraded < 0.05
    # The margin family counts in the decision (it used to be a note beside "no degradation", exit 0).
    assert cmp.decision == "DEGRADED"
    assert any(r.startswith("log-likelihood margin of the correct choice on mmlu_pro_local") for r in cmp.reasons)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "int3")]) == 1
    out = capsys.readouterr().out
    assert "verdict: DEGRADED: log-likelihood margin of the correct choice on mmlu_pro_local" in out
    assert "truncation, length: n/a" in out  # lm-eval records no finish reasons or token counts


def test_repeats_give_one_record_per_repeat(tmp_path):
    run = read_run(_import(FIXTURES / "base-repeats", tmp_path / "rep"))
    assert {b.name for b in run.spec.benches} == {"gsm8k_local_sampled:maj@3", "gsm8k_local_sampled:first"}
    assert all(b.samples == 3 and b.n_items == 3 for b in run.spec.benches)
    samples = [json.loads(line) for line in _samples_file(FIXTURES / "base-repeats", "gsm8k_local_sampled").read_text().splitlines()]
    for flt in ("maj@3", "first"):
        recs = run.records[f"gsm8k_local_sampled:{flt}"]
        assert len(recs) == 9 and {r.sample for r in recs} == {0, 1, 2}
        for s in (s for s in samples if s["filter"] == flt):
            mine = sorted((r for r in recs if r.item_id == str(s["doc_id"])), key=lambda r: r.sample)
            assert [r.completion for r in mine] == s["resps"][0]  # each repeat keeps its own text
            # lm-eval scores the document once (majority vote / first repeat): every repeat carries it.
            assert all(r.score == s["exact_match"] and r.extra["doc_level_score"] for r in mine)
