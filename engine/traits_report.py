"""The trait table of a judged bench: pass rates per trait against their gates, and against a baseline.

Per scenario, its value is the mean verdict (PASS = 1, FAIL = 0; for a trait graded on the 1-5 score,
PASS when the score reaches the trait's threshold) over its scored samples (3 seeds); a scenario with no
scored sample in either run is left out of the pairing. A trait's rate is the mean of its scenarios'
values, kept as an exact fraction; its gate (a minimum rate: a pass count "8/9" or a fraction, from the
trait table, carried in the records) is PASS when the candidate's exact rate reaches it, FAIL when it
does not, and INCOMPLETE when any of the trait's answers has no verdict (unparsable after the re-asks,
or not judged yet): an unscored answer is never left out of a gate quietly, since leaving a FAIL out
can lift a trait over its gate. Against a baseline: per trait and overall a paired sign-flip test on
the per-scenario differences (one-sided for degradation), Holm across traits.

The overall gate verdict fails when any trait misses its gate (the command line then exits with
EXIT_GATE_FAILED, before and apart from the degradation verdict); with no trait failed but one
INCOMPLETE it exits with EXIT_INCOMPLETE.
"""

from __future__ import annotations

from fractions import Fraction

import msgspec

from engine import stats
from engine.errors import ExitCode
from engine.judge import Agreement, agreement, judged_benches, verdicts
from engine.records import ItemRecord, Run, answered
from engine.spec import BenchSpec

EXIT_GATE_FAILED = ExitCode.GATE_FAILED
EXIT_INCOMPLETE = ExitCode.INCOMPLETE


def exact_gate(gate: float | str | None) -> Fraction | None:
    """A gate as an exact fraction: "8/9" stays 8/9, 0.9 is 9/10 (its decimal text, not the binary float)."""
    if gate is None:
        return None
    return Fraction(gate) if isinstance(gate, str) else Fraction(str(gate))


class TraitRow(msgspec.Struct, kw_only=True):
    trait: str
    name: str
    gate: float | None  # None for the overall row
    gate_text: str = ""  # the gate as the trait table gives it ("8/9", "0.9")
    grading: str = ""  # the verdict format: "pass/fail" or "score>=N" (N of 1-5); "" for the overall row
    scenarios: int  # scenarios in the rate (paired ones against a baseline)
    cand_rate: float
    base_rate: float | None = None
    delta: float | None = None
    p_degraded: float | None = None
    p_degraded_holm: float | None = None  # Holm across traits (the overall row keeps its own p)
    gate_pass: bool | None = None  # None: no gate, or INCOMPLETE
    status: str = ""  # the gate: "PASS" | "FAIL" | "INCOMPLETE" (an answer of the trait has no verdict) | ""
    unscored: int = 0  # the candidate's answers of this trait without a verdict
    passes: str = ""  # the candidate's exact rate as a fraction ("8/9")
    verdict: str = ""  # "DEGRADED" | "no change detected" | "" (no baseline)


class TraitsReport(msgspec.Struct, kw_only=True):
    bench: str
    judge: str
    prompt_version: str
    rows: list[TraitRow]
    overall: TraitRow
    gates_passed: bool  # every gated trait PASS (an INCOMPLETE trait is not passed)
    unscored_cand: int  # answers without a verdict (unparsable after re-asks, or not judged yet)
    unscored_base: int | None
    agreement: list[Agreement]  # the candidate judge's self-agreement (noise floor), if repeats were run
    method: str


def _values(
    run: Run, bench: BenchSpec
) -> tuple[dict[str, Fraction], dict[str, str], dict[str, tuple[str, float | str, str]], dict[str, int]]:
    """(scenario -> mean verdict, exact; scenario -> trait; trait -> (name, gate, grading); trait ->
    answers without a verdict)."""
    records = run.records.get(bench.name, [])
    found = verdicts(run.dir, run.spec, bench, records)
    by_scenario: dict[str, list[int]] = {}
    traits: dict[str, str] = {}
    table: dict[str, tuple[str, float | str, str]] = {}
    unscored: dict[str, int] = {}
    for rec in answered(records):
        traits[rec.item_id] = rec.category or ""
        _trait_entry(rec, table)
        verdict = found.get((rec.item_id, rec.sample))
        if verdict is None:
            unscored[rec.category or ""] = unscored.get(rec.category or "", 0) + 1
            continue
        by_scenario.setdefault(rec.item_id, []).append(1 if verdict == "PASS" else 0)
    return {k: Fraction(sum(v), len(v)) for k, v in by_scenario.items()}, traits, table, unscored


def _trait_entry(rec: ItemRecord, table: dict[str, tuple[str, float | str, str]]) -> None:
    if "gate" in rec.extra and rec.category is not None:
        threshold = rec.extra.get("threshold")
        grading = (
            "pass/fail" if rec.extra.get("verdict", "pass_fail") == "pass_fail" else f"score>={threshold}"
        )
        table.setdefault(
            rec.category, (str(rec.extra.get("trait_name", rec.category)), rec.extra["gate"], grading)
        )


def traits_report(cand: Run, base: Run | None = None, alpha: float = 0.05) -> list[TraitsReport]:
    """One report per judged bench of the candidate (graded against `base` when given; the caller has
    checked the two runs comparable, which includes the judge and its prompt version)."""
    out = []
    for bench in judged_benches(cand.spec):
        judge = bench.scoring_versions.get("judge_model", "")
        c_val, traits, table, c_unscored = _values(cand, bench)
        b_val: dict[str, Fraction] | None = None
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
            row = _row(trait, name, gate, [i for i in ids if traits[i] == trait], c_val, b_val, c_unscored.get(trait, 0))
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
            "per scenario: mean verdict over its scored samples (a score trait's answer passes when its 1-5 "
            "score ≥ the trait's threshold); trait rate: mean over scenarios, exact; gate PASS when the "
            "candidate's rate ≥ the trait's gate, INCOMPLETE when any of its answers has no verdict"
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
                gates_passed=all(r.status in ("PASS", "") for r in rows),
                unscored_cand=sum(c_unscored.values()),
                unscored_base=None if b_unscored is None else sum(b_unscored.values()),
                agreement=agreement(cand.dir, cand.spec, bench, cand.records.get(bench.name, [])),
                method=method,
            )
        )
    return out


def _row(
    trait: str,
    name: str,
    gate: float | str | None,
    ids: list[str],
    cand: dict[str, Fraction],
    base: dict[str, Fraction] | None,
    unscored: int = 0,
) -> TraitRow:
    c = [cand[i] for i in ids]
    exact = sum(c, Fraction(0)) / len(c) if c else Fraction(0)
    required = exact_gate(gate)
    row = TraitRow(
        trait=trait,
        name=name,
        gate=None if required is None else float(required),
        gate_text="" if gate is None else str(gate),
        scenarios=len(ids),
        cand_rate=float(exact),
        unscored=unscored,
        passes=f"{exact.numerator}/{exact.denominator}" if c else "",
    )
    if required is not None:
        # A gate is passed on evidence: a trait without one scored scenario, or with an answer the judge
        # never scored, is not passed.
        if unscored or not ids:
            row.status = "INCOMPLETE"
        else:
            row.gate_pass = exact >= required
            row.status = "PASS" if row.gate_pass else "FAIL"
    if base is not None:
        b = [base[i] for i in ids]
        row.base_rate = float(sum(b, Fraction(0)) / len(b)) if b else 0.0
        row.delta = row.cand_rate - row.base_rate
        row.p_degraded = (
            stats.sign_flip_test([float(x - y) for x, y in zip(c, b, strict=True)]).p_degraded if ids else 1.0
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
    gate = row.gate_text if row.gate_text and "/" in row.gate_text else _pct(row.gate)
    cells |= {"gate": gate, "verdict": row.status + ("  DEGRADED" if row.verdict == "DEGRADED" else "")}
    return cells


def column_header(column: str) -> str:
    return _COLUMNS[column][0]


def title_line(report: TraitsReport) -> str:
    return f"{report.bench}: judged by {report.judge} (judge prompt v{report.prompt_version})"


def unscored_line(report: TraitsReport) -> str:
    unscored = f"unscored answers: candidate {report.unscored_cand}"
    if report.unscored_base is not None:
        unscored += f", baseline {report.unscored_base}"
    return unscored + " (a trait with one is INCOMPLETE: its gate is neither passed nor failed)"


def gates_line(report: TraitsReport) -> str:
    if report.gates_passed:
        return "GATES PASSED"
    failed = [r.trait for r in report.rows if r.status == "FAIL"]
    incomplete = [r.trait for r in report.rows if r.status == "INCOMPLETE"]
    parts = (["FAILED: " + ", ".join(failed)] if failed else []) + (
        ["INCOMPLETE (unscored answers): " + ", ".join(incomplete)] if incomplete else []
    )
    return "GATES " + "; ".join(parts)


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
    """EXIT_GATE_FAILED when a trait failed its gate; else EXIT_INCOMPLETE when one is INCOMPLETE; else 0."""
    rows = [row for report in reports for row in report.rows]
    if any(row.status == "FAIL" for row in rows):
        return EXIT_GATE_FAILED
    return EXIT_INCOMPLETE if any(row.status == "INCOMPLETE" for row in rows) else 0
