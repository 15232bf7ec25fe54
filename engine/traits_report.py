"""The trait table of a judged bench: pass rates per trait against their gates, and against a baseline.

Per scenario, its value is the mean verdict (PASS = 1, FAIL = 0; for a trait graded on the 1-5 score,
PASS when the score reaches the trait's threshold) over its scored samples (3 seeds);
unscored judgments (no parsable verdict) are left out, never counted as fails, and a scenario with no
scored sample in either run is left out of the pairing (counted in `unscored`). A trait's rate is the
mean of its scenarios' values; its gate (minimum rate, from the trait table, carried in the records)
is PASS when the candidate's rate reaches it. Against a baseline: per trait and overall a paired
sign-flip test on the per-scenario differences (one-sided for degradation), Holm across traits.

The overall gate verdict fails when any trait misses its gate: the command line then exits with
EXIT_GATE_FAILED, before (and apart from) the degradation verdict.
"""

from __future__ import annotations

import msgspec

from engine import stats
from engine.errors import ExitCode
from engine.judge import Agreement, agreement, judged_benches, verdicts
from engine.records import ItemRecord, Run, answered
from engine.spec import BenchSpec

EXIT_GATE_FAILED = ExitCode.GATE_FAILED


class TraitRow(msgspec.Struct, kw_only=True):
    trait: str
    name: str
    gate: float | None  # None for the overall row
    grading: str = ""  # the verdict format: "pass/fail" or "score>=N" (N of 1-5); "" for the overall row
    scenarios: int  # scenarios in the rate (paired ones against a baseline)
    cand_rate: float
    base_rate: float | None = None
    delta: float | None = None
    p_degraded: float | None = None
    p_degraded_holm: float | None = None  # Holm across traits (the overall row keeps its own p)
    gate_pass: bool | None = None
    verdict: str = ""  # "DEGRADED" | "no change detected" | "" (no baseline)


class TraitsReport(msgspec.Struct, kw_only=True):
    bench: str
    judge: str
    prompt_version: str
    rows: list[TraitRow]
    overall: TraitRow
    gates_passed: bool
    unscored_cand: int  # answers without a verdict (unparsable after re-asks, or not judged yet)
    unscored_base: int | None
    agreement: list[Agreement]  # the candidate judge's self-agreement (noise floor), if repeats were run
    method: str


def _values(
    run: Run, bench: BenchSpec
) -> tuple[dict[str, float], dict[str, str], dict[str, tuple[str, float, str]], int]:
    """(scenario -> mean verdict, scenario -> trait, trait -> (name, gate, grading), unscored answers)."""
    records = run.records.get(bench.name, [])
    found = verdicts(run.dir, run.spec, bench, records)
    by_scenario: dict[str, list[float]] = {}
    traits: dict[str, str] = {}
    table: dict[str, tuple[str, float, str]] = {}
    unscored = 0
    for rec in answered(records):
        traits[rec.item_id] = rec.category or ""
        _trait_entry(rec, table)
        verdict = found.get((rec.item_id, rec.sample))
        if verdict is None:
            unscored += 1
            continue
        by_scenario.setdefault(rec.item_id, []).append(1.0 if verdict == "PASS" else 0.0)
    return {k: stats.mean(v) for k, v in by_scenario.items()}, traits, table, unscored


def _trait_entry(rec: ItemRecord, table: dict[str, tuple[str, float, str]]) -> None:
    if "gate" in rec.extra and rec.category is not None:
        threshold = rec.extra.get("threshold")
        grading = (
            "pass/fail" if rec.extra.get("verdict", "pass_fail") == "pass_fail" else f"score>={threshold}"
        )
        table.setdefault(
            rec.category, (str(rec.extra.get("trait_name", rec.category)), float(rec.extra["gate"]), grading)
        )


def traits_report(cand: Run, base: Run | None = None, alpha: float = 0.05) -> list[TraitsReport]:
    """One report per judged bench of the candidate (graded against `base` when given; the caller has
    checked the two runs comparable, which includes the judge and its prompt version)."""
    out = []
    for bench in judged_benches(cand.spec):
        judge = bench.scoring_versions.get("judge_model", "")
        c_val, traits, table, c_unscored = _values(cand, bench)
        b_val: dict[str, float] | None = None
        b_unscored = None
        if base is not None:
            b_bench = next(b for b in base.spec.benches if b.name == bench.name)
            b_val, b_traits, b_table, b_unscored = _values(base, b_bench)
            for key, value in b_table.items():
                table.setdefault(key, value)
        ids = sorted(i for i in c_val if b_val is None or i in b_val)
        rows = []
        for trait in sorted({traits[i] for i in traits}):
            name, gate, grading = table.get(trait, (trait, None, ""))
            row = _row(trait, name, gate, [i for i in ids if traits[i] == trait], c_val, b_val)
            row.grading = grading
            rows.append(row)
        for row, p in zip(
            rows,
            stats.holm([r.p_degraded for r in rows]) if b_val is not None else [None] * len(rows),
            strict=True,
        ):
            row.p_degraded_holm = p
            if p is not None:
                row.verdict = "DEGRADED" if p < alpha else "no change detected"
        overall = _row("all", "overall", None, ids, c_val, b_val)
        if overall.p_degraded is not None:
            overall.verdict = "DEGRADED" if overall.p_degraded < alpha else "no change detected"
        method = (
            "per scenario: mean verdict over its scored samples (unscored left out; a score trait's answer "
            "passes when its 1-5 score ≥ the trait's threshold); trait rate: mean over scenarios; gate PASS "
            "when the candidate's rate ≥ the trait's gate"
        )
        if b_val is not None:
            method += f"; paired sign-flip test on per-scenario differences (one-sided), Holm across {len(rows)} traits at α={alpha}"
        out.append(
            TraitsReport(
                bench=bench.name,
                judge=judge,
                prompt_version=bench.scoring_versions.get("judge_prompt", ""),
                rows=rows,
                overall=overall,
                gates_passed=all(r.gate_pass is not False for r in rows),
                unscored_cand=c_unscored,
                unscored_base=b_unscored,
                agreement=agreement(cand.dir, cand.spec, bench, cand.records.get(bench.name, [])),
                method=method,
            )
        )
    return out


def _row(
    trait: str,
    name: str,
    gate: float | None,
    ids: list[str],
    cand: dict[str, float],
    base: dict[str, float] | None,
) -> TraitRow:
    c = [cand[i] for i in ids]
    cand_rate = stats.mean(c)
    row = TraitRow(
        trait=trait,
        name=name,
        gate=gate,
        scenarios=len(ids),
        cand_rate=cand_rate,
        # A gate is passed on evidence: a trait without one scored scenario does not pass it.
        gate_pass=None if gate is None else bool(ids) and cand_rate >= gate - 1e-12,
    )
    if base is not None:
        b = [base[i] for i in ids]
        row.base_rate = stats.mean(b)
        row.delta = cand_rate - row.base_rate
        row.p_degraded = (
            stats.sign_flip_test([x - y for x, y in zip(c, b, strict=True)]).p_degraded if ids else 1.0
        )
    return row


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.0f}%"


# Column: (header, width, left-aligned); the terminal table pads to the width, the HTML report
# (engine/report.py) shows the same texts in cells.
_COLUMNS = {
    "trait": ("trait", 6, True),
    "name": ("name", 20, True),
    "grading": ("grading", 9, True),
    "n": ("n", 3, False),
    "base": ("base", 5, False),
    "cand": ("cand", 5, False),
    "rate": ("rate", 5, False),
    "delta": ("Δ pts", 6, False),
    "p": ("p(holm)", 8, False),
    "gate": ("gate", 5, False),
    "verdict": ("verdict", 0, True),
}


def row_cells(row: TraitRow, with_base: bool) -> dict[str, str]:
    """One row of the trait table as texts, by column: the terminal table and the HTML report show these."""
    cells = {"trait": row.trait, "name": row.name[:20], "grading": row.grading, "n": str(row.scenarios)}
    if with_base:
        p = row.p_degraded_holm if row.p_degraded_holm is not None else row.p_degraded
        cells |= {
            "base": _pct(row.base_rate),
            "cand": _pct(row.cand_rate),
            "delta": "-" if row.delta is None else f"{100 * row.delta:+.1f}",
            "p": "-" if p is None else f"{p:.3f}",
        }
    else:
        cells["rate"] = _pct(row.cand_rate)
    gate = "" if row.gate_pass is None else ("PASS" if row.gate_pass else "FAIL")
    cells |= {"gate": _pct(row.gate), "verdict": gate + ("  DEGRADED" if row.verdict == "DEGRADED" else "")}
    return cells


def column_header(column: str) -> str:
    return _COLUMNS[column][0]


def title_line(report: TraitsReport) -> str:
    return f"{report.bench}: judged by {report.judge} (judge prompt v{report.prompt_version})"


def unscored_line(report: TraitsReport) -> str:
    unscored = f"unscored answers: candidate {report.unscored_cand}"
    if report.unscored_base is not None:
        unscored += f", baseline {report.unscored_base}"
    return unscored + " (left out, never counted as fails)"


def gates_line(report: TraitsReport) -> str:
    failed = [r.trait for r in report.rows if r.gate_pass is False]
    return f"GATES {'PASSED' if report.gates_passed else 'FAILED: ' + ', '.join(failed)}"


def agreement_cells(a: Agreement) -> dict[str, str]:
    """One trait's self-agreement: raw and κ on PASS/FAIL; for score traits also the exact-score share."""
    cells = {
        "trait": a.trait,
        "pairs": str(a.pairs),
        "agreement": f"{100 * a.agreement:.0f}%",
        "kappa": "-" if a.kappa != a.kappa else f"{a.kappa:.2f}",
        "same score": "-",
    }
    if a.score_agreement is not None:
        cells["same score"] = f"{100 * a.score_agreement:.0f}% (n={a.score_pairs})"
    return cells


def agreement_cell(a: Agreement) -> str:
    c = agreement_cells(a)
    cell = f"{c['trait']} {c['agreement']} κ {c['kappa']} (n={c['pairs']})"
    if a.score_agreement is not None:
        cell += f", same score {c['same score']}"
    return cell


def format_report(report: TraitsReport) -> str:
    with_base = report.overall.base_rate is not None

    def line(texts: dict[str, str]) -> str:
        parts = []
        for column, text in texts.items():
            _, width, left = _COLUMNS[column]
            gap = " " if column == "verdict" else ""  # the verdict stands apart from the numbers
            parts.append(gap + (f"{text:<{width}}" if left else f"{text:>{width}}"))
        return " ".join(parts).rstrip()

    columns = row_cells(report.overall, with_base)
    lines = [title_line(report), line({c: column_header(c) for c in columns})]
    lines += [line(row_cells(row, with_base)) for row in [*report.rows, report.overall]]
    lines.append(unscored_line(report))
    if report.agreement:
        lines.append(
            "judge self-agreement (noise floor): " + " · ".join(map(agreement_cell, report.agreement))
        )
    lines.append(gates_line(report))
    lines.append(f"method: {report.method}")
    return "\n".join(lines)


def gates_exit(reports: list[TraitsReport]) -> int:
    return EXIT_GATE_FAILED if any(not r.gates_passed for r in reports) else 0
