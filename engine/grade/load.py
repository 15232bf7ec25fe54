"""Everything `grade` needs from disk, read in one place, and the verdict.json it leaves behind.

run, compare, report and sweep call `grade_runs` (or `load_evidence` + `grade`) and a renderer; the
decision itself (engine/grade/decide.py) reads no files.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from engine import episodes, margin, margin_stats, provenance, sequential, traits_report
from engine.baselines import check_gradable
from engine.errors import NotComparable, UserError
from engine.grade.decide import ANSWER_MARGIN, Evidence, GradeOptions, ProbeReading, comparability, grade
from engine.grade.family import FamilyInput, Member
from engine.grade.traits import TraitEvidence, TraitLine
from engine.grade.verdict import VERDICT_FILE, Verdict, encode
from engine.records import Run, atomic_write, read_noise_floor
from probes.metrics import PROBE_FILE  # the run's tier-0 panel


def read_probe(run_dir: Path) -> tuple[ProbeReading | None, str]:
    path = Path(run_dir) / PROBE_FILE
    if not path.is_file():
        return None, ""
    try:
        return msgspec.json.decode(path.read_bytes(), type=ProbeReading), ""
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UserError(f"{path}: not a probe panel ({exc}); it is written by the harness (--probe), do not edit it") from exc


def _trait_evidence(cand: Run, base: Run, alpha: float) -> list[TraitEvidence]:
    judged = {b.name for b in base.spec.benches}
    if not any("judge_prompt" in b.scoring_versions and b.name in judged for b in cand.spec.benches):
        return []
    out = []
    for report in traits_report.traits_report(cand, base, alpha):
        rows = [
            TraitLine(trait=r.trait, name=r.name, scenarios=r.scenarios, cand_rate=r.cand_rate, base_rate=r.base_rate,
                      delta=r.delta, p_degraded=r.p_degraded, gate=r.gate, gate_pass=r.gate_pass)  # fmt: skip
            for r in report.rows
        ]
        out.append(TraitEvidence(bench=report.bench, rows=rows, report=msgspec.to_builtins(report)))
    return out


def _exams_that_did_not_run(base: Run, cand: Run) -> list[str]:
    """Agent benches whose episodes mostly ended on format errors, rejected tool calls or request
    errors, on either side: such an exam measured nothing, so its "no change" would be a lie."""
    out = []
    for spec in cand.spec.benches:
        for run, side in ((base, "baseline"), (cand, "candidate")):
            bench = next((b for b in run.spec.benches if b.name == spec.name), None)
            found = episodes.health(run.records.get(spec.name, []), tool_format=bench.scoring_versions.get("tool_format") if bench else None)
            if found is not None and found.invalid:
                out.append(f"{spec.name} did not run in the {side}: {found.cause}; {found.remedy}")
    return out


def _unjudged(traits: list[TraitEvidence]) -> tuple[list[str], list[str]]:
    """(invalid, incomplete): a judged bench whose answers have no verdict at all (the judge never
    answered) measured nothing; some answers without one leave their trait INCOMPLETE, never a pass."""
    invalid, incomplete = [], []
    for t in traits:
        report = msgspec.convert(t.report, traits_report.TraitsReport)
        answers = sum(r.scenarios for r in report.rows)
        if report.unscored_cand and report.unscored_cand >= answers:
            invalid.append(f"{t.bench}: no answer of the candidate has a judge verdict (the judge never answered); "
                           f"run `python -m engine judge RUN --judge MODEL|URL`")  # fmt: skip
        elif report.unscored_cand or report.unscored_base:
            open_traits = [r.trait for r in report.rows if r.status == "INCOMPLETE"]
            incomplete.append(f"{t.bench}: {report.unscored_cand} candidate and {report.unscored_base or 0} baseline answer(s) without a judge verdict"
                              + (f" (traits {', '.join(open_traits)})" if open_traits else "")
                              + "; rerun `python -m engine judge RUN` to finish judging")  # fmt: skip
    return invalid, incomplete


def _answer_margin(base: Run, cand: Run, alpha: float) -> tuple[FamilyInput, list[str]]:
    """The answer-margin family from the margin files beside both runs (`python -m engine margin RUN`);
    no members (not measured) where either side has none. Margins scored differently (another answer
    prefix or margin version) are not graded: said in a note, never a number."""
    method = "paired t on the per-item answer margin (log p of the reference answer vs the alternatives), two-sided"
    try:
        base_margins, cand_margins = margin.paired_margins(base.dir, cand.dir)
    except NotComparable as exc:
        return FamilyInput(name=ANSWER_MARGIN, method=method, members=[]), [str(exc)]
    members = [
        # Identical margins (the same weights, a deterministic pass) can never fire: p_min 1, no share of α.
        Member(name=t.bench, effect=t.effect, interval=t.interval, p=t.p, p_min=1.0 if t.identical else t.p_min, adverse=t.effect < 0,
               line=f"answer margin on {t.bench} {margin_stats.format_margin_test(t).removeprefix('answer margin ')}")  # fmt: skip
        for t in margin_stats.margin_tests(base_margins, cand_margins, alpha)
    ]
    return FamilyInput(name=ANSWER_MARGIN, method=method, members=members), []


def load_evidence(base: Run, cand: Run, options: GradeOptions) -> Evidence:
    """The noise floor beside the baseline, the candidate's early-stop design and probe panel, and the
    judged benches' trait tables (only for a comparable pair: otherwise nothing is read)."""
    if comparability(base, cand, options.waive)[0]:
        return Evidence()
    floor = read_noise_floor(base.dir)
    probe, note = read_probe(cand.dir)
    traits = _trait_evidence(cand, base, options.alpha)
    unjudged, unfinished = _unjudged(traits)
    answer_margin, margin_notes = _answer_margin(base, cand, options.alpha)
    return Evidence(
        families=[answer_margin],
        notes=margin_notes,
        invalid=_exams_that_did_not_run(base, cand) + unjudged,
        incomplete=unfinished,
        planned_discordance={name: b.same_seed for name, b in floor.benches.items()} if floor is not None else None,
        design=sequential.read_design(cand.dir),
        probe=probe,
        probe_note=note,
        traits=traits,
    )


def grade_runs(base: Run, cand: Run, options: GradeOptions) -> Verdict:
    """Refuse a run in progress or without records (UserError), load the evidence, grade."""
    check_gradable(base, "baseline")
    check_gradable(cand, "candidate")
    verdict = grade(base, cand, options, load_evidence(base, cand, options))
    # Where the numbers came from (date, versions, commit, hardware, command): the only part of the
    # verdict that differs between two gradings of the same pair.
    verdict.provenance = provenance.collect(cand, base)
    return verdict


def write_verdict(run_dir: Path, verdict: Verdict) -> Path:
    """verdict.json in the candidate's run dir, atomically (a reader never sees half a file)."""
    path = Path(run_dir) / VERDICT_FILE
    atomic_write(path, encode(verdict))
    return path
