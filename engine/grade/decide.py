"""grade(baseline, candidate, options, evidence) -> Verdict: the one place a decision is made.

Reads no files: the runs come loaded (records included), and everything else grade needs (noise
floor, early-stop design, the candidate's KL probe panel, judged trait tables, signals of other
helpers) comes in `Evidence`, filled by engine/grade/load.py. Every command renders the Verdict.
"""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np

from engine import sequential, stats
from engine import spec as specs
from engine.baselines import remedy, shared_benches, ungraded_benches
from engine.grade import canaries as cn
from engine.grade.bench import (
    AVG,
    BenchComparison,
    compare_bench,
    decide_bench,
    missing_of,
    record_facts,
    restrict,
)
from engine.grade.family import ACCURACY, FamilyInput, Member, combine
from engine.grade.strata import moved_most
from engine.grade.traits import TRAIT_GATES, TRAITS, TraitEvidence, trait_gates, trait_members
from engine.grade.verdict import Difference, Gate, ProbeReport, TraitTable, Verdict, exit_code_of
from engine.importers.lm_eval import MARGIN as LM_EVAL_MARGIN
from engine.importers.lm_eval import differing_documents
from engine.pairing import category_of, pair_items
from engine.records import Run

KL = "kl"
LM_EVAL = "lm-eval-margin"
ANSWER_MARGIN = "answer-margin"  # engine/margin.py: teacher-forced log p of the reference answer, paired per item
# Every signal `--signals` can name: the tested families, then the deterministic gates.
SIGNALS = (ACCURACY, cn.TRUNCATION, cn.LENGTH, cn.NO_ANSWER, cn.EPISODES, LM_EVAL, ANSWER_MARGIN, TRAITS, KL, TRAIT_GATES)
# KL tripwire defaults, aimed at collapse (docs/decision.md): on the tiny model's ladder rtn-int8 gives
# mean KL 0.003 / same top-1 97.6%, rtn-int4 0.42 / 75%, prune-30 0.46 / 74%, rtn-int3 3.06 / 28%.
KL_GATE_MEAN = 1.0
KL_GATE_TOP1 = 0.5
DEFAULT_MARGIN = 0.05  # the drop (accuracy units) a run should rule out before it reads as a plain PASS


class GradeOptions(msgspec.Struct, kw_only=True, frozen=True):
    alpha: float = 0.05
    waive: tuple[str, ...] = ()
    allow_incomplete: bool = False
    margin: float | None = None  # --margin, accuracy units: EQUIVALENT / NOT_SHOWN
    default_margin: float = DEFAULT_MARGIN  # without --margin: a wider bound is INCONCLUSIVE (exit 0)
    signals: tuple[str, ...] | None = None  # None: every signal; else only these count
    primary: str = AVG
    kl_gate_mean: float = KL_GATE_MEAN
    kl_gate_top1: float = KL_GATE_TOP1


class ProbeReading(msgspec.Struct, kw_only=True):
    """The candidate's tier-0 KL probe (probes/metrics.py Summary, the numbers the gates read)."""

    kl_mean: float
    kl_se: float
    top1_agree: float
    n_positions: int


class Evidence(msgspec.Struct, kw_only=True):
    """What grade needs beyond the two runs; engine/grade/load.py reads it from disk."""

    planned_discordance: dict[str, float] | None = None  # the baseline's noise floor (same-seed discordance)
    design: sequential.EarlyStopDesign | None = None  # the candidate's --early-stop design
    probe: ProbeReading | None = None
    probe_note: str = ""  # why there is no probe reading ("" = none was run)
    traits: list[TraitEvidence] = []  # judged benches, graded from their judgments
    invalid: list[str] = []  # a bench that could not measure: the decision is INVALID
    incomplete: list[str] = []  # a measurement still missing outside the records (a trait answer without a judge verdict)
    families: list[FamilyInput] = []  # further signal families (plug in here; see family.py)
    notes: list[str] = []


def _options_dict(options: GradeOptions) -> dict:
    return msgspec.to_builtins(options)


def _counts(options: GradeOptions, name: str) -> bool:
    return options.signals is None or name in options.signals


def _not_comparable(base: Run, cand: Run, options: GradeOptions, diffs: list[Difference], notes: list[str]) -> Verdict:
    return Verdict(
        decision="NOT_COMPARABLE", exit_code=int(exit_code_of("NOT_COMPARABLE", False)),
        headline=f"⚠ NOT COMPARABLE: {_where(cand)} cannot be graded against {_where(base)}",
        reasons=[f"{d.field}: baseline {d.baseline!r} vs candidate {d.candidate!r}" for d in diffs] + [n.strip() for n in notes],
        signals=_signals(options), baseline=_where(base), candidate=_where(cand), baseline_model=base.spec.model,
        candidate_model=cand.spec.model, alpha=options.alpha, margin=options.margin, differences=diffs, notes=notes,
        options=_options_dict(options),
    )  # fmt: skip


def _where(run: Run) -> str:
    # Absolute (no file is touched): the same pair reads the same from any command and directory.
    return str(Path(run.dir).absolute())


def _signals(options: GradeOptions) -> list[str]:
    return list(SIGNALS if options.signals is None else options.signals)


def comparability(base: Run, cand: Run, waive: tuple[str, ...]) -> tuple[list[Difference], list[Difference], list[str]]:
    """(blocking differences, waived ones, notes); no blocking difference = comparable."""
    specs.expand_waivers(list(waive))  # an unknown name is bad input (UserError), not a difference
    if base.spec.source != cand.spec.source:
        return [Difference(field="source", baseline=base.spec.source, candidate=cand.spec.source,
                           remedy="compare runs made the same way (both by this harness, or both imported)")], [], []  # fmt: skip
    shared = set(shared_benches(base, cand))
    if not shared:
        note = (f"no bench in common (baseline: {', '.join(b.name for b in base.spec.benches)}; "
                f"candidate: {', '.join(b.name for b in cand.spec.benches)})")  # fmt: skip
        return [Difference(field="benches", baseline=[b.name for b in base.spec.benches],
                           candidate=[b.name for b in cand.spec.benches], remedy="run the candidate on the baseline's benches")], [], [note]  # fmt: skip
    diffs = [Difference(field=d.field, baseline=d.baseline, candidate=d.candidate, remedy=remedy(d.field, d.baseline, d.candidate))
             for d in specs.diff(base.spec, cand.spec, only_benches=shared)]  # fmt: skip
    blocking = [d for d in diffs if d.field not in waive]
    notes = []
    if blocking and base.spec.source == cand.spec.source == "lm-eval":
        notes = differing_documents(base, cand)  # which documents differ, by doc_id
    return blocking, [d for d in diffs if d.field in waive], notes


def _judged(run: Run) -> set[str]:
    # The same rule as engine/judge.py judged_benches (not imported: it brings the backends along).
    return {b.name for b in run.spec.benches if "judge_prompt" in b.scoring_versions}


def _accuracy_rows(base: Run, cand: Run, options: GradeOptions, evidence: Evidence, names: list[str]) -> list[BenchComparison]:
    rows = []
    design = evidence.design
    for spec in cand.spec.benches:
        if spec.name not in names:
            continue
        items = pair_items(base, cand, spec.name, category_of)
        missing, complete = missing_of(base, cand, spec.name)
        items = restrict(items, complete)
        unparsed, within, identical = record_facts(base, cand, spec.name, items.ids)
        row = compare_bench(
            items, alpha=options.alpha, family=len(names), strata_sizes=spec.strata_sizes, design=design,
            seed=design.seed if design is not None else cand.spec.seed, primary=options.primary, margin=options.margin,
            planned_discordance=(evidence.planned_discordance or {}).get(spec.name), unparsed=unparsed,
            within_var=within if items.samples > 1 else None, identical=identical and missing.cand_samples == 0,
        )  # fmt: skip
        if missing.any:
            if row.early_stop is not None and row.early_stop.stopped:
                missing.excused = "stopped early by design (--early-stop)"
            elif options.allow_incomplete:
                missing.excused = "--allow-incomplete"
            row.missing = missing
        row.canaries_measured = not any(
            r.extra.get("no_token_counts") or r.extra.get("no_finish_reason")
            for run in (base, cand)
            for r in run.records.get(spec.name, [])[:1]
        )
        rows.append(row)
    return rows


def _blocked(row: BenchComparison) -> bool:
    return row.missing is not None and row.missing.any and not row.missing.excused


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def _accuracy_member(row: BenchComparison) -> Member:
    # An incomplete bench stays in the family (it counts) but never frees alpha for the others.
    blocked = _blocked(row)
    return Member(
        name=row.bench, effect=row.delta, interval=row.delta_ci, p=1.0 if blocked else row.p_two_sided,
        p_min=0.0 if blocked else row.p_min, adverse=row.delta < 0 or (row.early_stop is not None and row.early_stop.stopped),
        line=f"accuracy on {row.bench} {_pct(row.base_acc)} → {_pct(row.cand_acc)}",
    )  # fmt: skip


def _margin_members(base: Run, cand: Run, names: list[str]) -> list[Member]:
    """lm-eval: the correct choice's log-likelihood margin per document, a paired t per task (its
    interval inverts the same test: audit defect 5's bootstrap interval could disagree with its p)."""
    def margins(run: Run, name: str) -> dict[str, float]:
        per: dict[str, list[float]] = {}
        for r in run.records.get(name, []):
            if LM_EVAL_MARGIN in r.scores:
                per.setdefault(r.item_id, []).append(float(r.scores[LM_EVAL_MARGIN]))
        return {k: float(np.mean(v)) for k, v in per.items()}

    out = []
    for name in names:
        bm, cm = margins(base, name), margins(cand, name)
        ids = sorted(i for i in bm if i in cm)
        if len(ids) < 2:
            continue
        diffs = np.array([cm[i] - bm[i] for i in ids])
        test = stats.paired_t(diffs)
        lo, hi = test.interval(0.95) if test.scale > 0 else (test.estimate, test.estimate)
        out.append(Member(
            name=name, effect=test.estimate, interval=None, p=test.p_two, p_min=test.p_min, adverse=test.estimate < 0,
            line=f"log-likelihood margin of the correct choice on {name} {np.mean([bm[i] for i in ids]):.3f} → "
                 f"{np.mean([cm[i] for i in ids]):.3f} nats (Δ {test.estimate:+.3f}, 95% [{lo:+.3f}, {hi:+.3f}], n {len(ids)})",
        ))  # fmt: skip
    return out


def _probe(evidence: Evidence, options: GradeOptions) -> ProbeReport:
    reading = evidence.probe
    if reading is None:
        return ProbeReport(measured=False, note=evidence.probe_note or "not measured: the candidate's run has no KL probe (run with --probe REF)")
    gates = []
    if _counts(options, KL):
        gates = [
            Gate(name="kl mean", value=reading.kl_mean, threshold=options.kl_gate_mean, failed=not reading.kl_mean <= options.kl_gate_mean,
                 line=f"KL tripwire: mean {reading.kl_mean:.4g} > {options.kl_gate_mean:g}"),
            Gate(name="kl top-1", value=reading.top1_agree, threshold=options.kl_gate_top1,
                 failed=not reading.top1_agree >= options.kl_gate_top1,
                 line=f"KL tripwire: same top-1 {100 * reading.top1_agree:.1f}% < {100 * options.kl_gate_top1:g}%"),
        ]  # fmt: skip
    return ProbeReport(measured=True, kl_mean=reading.kl_mean, kl_se=reading.kl_se, top1_agree=reading.top1_agree,
                       n_positions=reading.n_positions, gates=gates)  # fmt: skip


def _items_for(row: BenchComparison, margin: float) -> int:
    """Rough count of items whose bound would be `margin`: from the planner's figure where the baseline
    has a noise floor (the margin an unchanged candidate shows with 80% power at this n), else from
    this run's bound; it shrinks as 1/n with no discordant item, as 1/sqrt(n) otherwise."""
    if not row.n or not row.drop_bound > 0:
        return row.n
    planned = row.planned.margin if row.planned is not None and 0 < row.planned.margin < math.inf else None
    ratio = (planned if planned is not None else row.drop_bound) / margin
    need = row.n * (ratio if row.b + row.c == 0 and planned is None else ratio**2)
    return int(math.ceil(need / 10) * 10)


def _run_notes(base: Run, cand: Run, rows: list[BenchComparison]) -> list[str]:
    notes = [
        f"⚠ {bench}: the {side}'s model-written code ran UNSANDBOXED (--sandbox none)"
        for run, side in ((base, "baseline"), (cand, "candidate"))
        for bench, records in run.records.items()
        if any(r.extra.get("sandbox") == "none" for r in records)
    ]
    ungraded = ungraded_benches(base, cand)
    if ungraded:
        notes.append(f"ungraded (not in the baseline): {', '.join(ungraded)}")
    notes += [f"{r.bench}: graded despite missing data ({r.missing.excused}): {r.missing.describe()}" for r in rows if r.missing and r.missing.excused]
    for run, side in ((base, "baseline"), (cand, "candidate")):
        for bench, records in run.records.items():
            if errors := sum("scorer_error" in r.extra for r in records):
                notes.append(f"⚠ {bench}: {errors} scorer error(s) in the {side}, scored as wrong (extra.scorer_error)")
    if base.manifest or cand.manifest:
        notes.append(
            "records: " + "; ".join(
                f"{side} manifest {run.manifest}" + (" (run not completed)" if run.manifest == "absent" else "")
                for run, side in ((base, "baseline"), (cand, "candidate")) if run.manifest
            )
        )  # fmt: skip
    return notes


def grade(base: Run, cand: Run, options: GradeOptions, evidence: Evidence) -> Verdict:
    """Decide cand against base: every measured signal family at its share of alpha, the gates, and
    the whole decision with one exit code. Reads no files."""
    blocking, waived, cmp_notes = comparability(base, cand, options.waive)
    if blocking:
        return _not_comparable(base, cand, options, blocking, cmp_notes)
    alpha = options.alpha
    judged = _judged(cand)
    names = [n for n in shared_benches(base, cand) if n not in judged]
    rows = _accuracy_rows(base, cand, options, evidence, names)
    inputs: list[FamilyInput] = []

    def add(name: str, method: str, members: list[Member]) -> None:
        if _counts(options, name):
            inputs.append(FamilyInput(name=name, method=method, members=members))

    add(ACCURACY, "per bench a two-sided test of Δ = 0 (exact McNemar; weighted McNemar on subset tiers; paired t "
        "on non-binary values), Holm over the benches that can reach their level", [_accuracy_member(r) for r in rows])  # fmt: skip
    measured = [r for r in rows if r.canaries_measured and r.n]
    add(cn.TRUNCATION, "exact McNemar one-sided on items truncated more / less often", [cn.truncation_member(r.bench, r.truncation) for r in measured])
    add(cn.LENGTH, "Wilcoxon signed-rank one-sided (candidate longer)", [cn.length_member(r.bench, r.length) for r in measured])
    add(cn.NO_ANSWER, "exact McNemar one-sided on items with more / fewer unanswered samples",
        [cn.unparsed_member(r.bench, r.unparsed) for r in rows if r.n])  # fmt: skip
    episode_members, episode_notes = [], []
    for name in names:
        members, found = cn.episode_members(name, base.records.get(name, []), cand.records.get(name, []))
        episode_members += members
        if found is not None:
            episode_notes.append(found)
    add(cn.EPISODES, "turns / tool errors / format errors: Wilcoxon one-sided; bad stop reasons: exact McNemar one-sided", episode_members)
    if base.spec.source == cand.spec.source == "lm-eval":
        add(LM_EVAL, "paired t on the per-document log-likelihood margin of the correct choice (two-sided)", _margin_members(base, cand, names))
    add(TRAITS, "paired sign-flip test per trait (one-sided), against the baseline", trait_members(evidence.traits))
    for extra in evidence.families:
        add(extra.name, extra.method, extra.members)
    families = combine(inputs, alpha)
    by_name = {f.name: f for f in families}

    # The accuracy rows take their family's decision (interval at the level that decided each bench).
    accuracy = by_name.get(ACCURACY)
    for i, row in enumerate(rows):
        if accuracy is not None and accuracy.measured:
            m = accuracy.members[i]
            row.in_family, row.p_holm = m.tested, m.p_adjusted
            decide_bench(row, rejected=m.rejected, level=1 - m.level, margin=options.margin, family_k=accuracy.tarone_k)
        else:
            row.in_family, row.p_holm = False, 1.0
            decide_bench(row, rejected=False, level=1 - alpha, margin=options.margin, family_k=1)
    for family_name, attr in ((cn.TRUNCATION, "truncation"), (cn.LENGTH, "length"), (cn.NO_ANSWER, "unparsed")):
        family = by_name.get(family_name)
        members = {m.name: m for m in family.members} if family is not None else {}
        for row in rows:
            canary = getattr(row, attr)
            m = members.get(row.bench)
            canary.p_holm, canary.flagged = (m.p_adjusted, m.fired) if m is not None else (1.0, False)
    category_rows = [s for r in rows if r.strata is not None for s in r.strata.rows]
    for s, p in zip(category_rows, stats.holm([s.p_two_sided for s in category_rows]), strict=True):
        s.p_holm = p
    for r in rows:
        if r.strata is not None:
            r.strata.moved_most = moved_most(r.strata, alpha)

    probe = _probe(evidence, options)
    gates = list(probe.gates)
    if _counts(options, TRAIT_GATES):
        gates += trait_gates(evidence.traits)
    reasons = []
    for family in families:
        for m in family.members:
            if m.fired:
                reasons.append(f"{m.line} (p {m.p:.2g}, adjusted {m.p_adjusted:.2g})")
    reasons += [g.line for g in gates if g.failed]
    improved = [r.bench for r in rows if r.verdict == "IMPROVED"]
    incomplete = [r.bench for r in rows if _blocked(r)]
    missing = [f"{r.bench}: {r.missing.describe()}" for r in rows if r.missing is not None and r.missing.any]
    trait_gate_failed = any(g.failed for g in gates if g.name.startswith("trait "))
    degraded = any(f.fired for f in families) or any(g.failed for g in gates if g.name.startswith("kl "))
    margin = options.margin
    if trait_gate_failed:
        decision, headline = "GATE_FAILED", "GATE_FAILED: " + "; ".join(reasons)
    elif degraded:
        decision, headline = "DEGRADED", "DEGRADED: " + "; ".join(reasons)
    elif evidence.invalid:
        decision, headline = "INVALID", "INVALID: " + "; ".join(evidence.invalid)
    elif incomplete or evidence.incomplete:
        decision = "INCOMPLETE"
        headline = "INCOMPLETE: " + "; ".join(
            ([f"{', '.join(incomplete)} lack items or samples (rerun to finish, or --allow-incomplete)"] if incomplete else [])
            + list(evidence.incomplete)
        )
    else:
        graded = [r for r in rows if r.n]
        limit = margin if margin is not None else options.default_margin
        wide = [r for r in graded if not (r.drop_bound < limit and (margin is None or r.delta_ci[1] < margin))]
        if margin is not None and graded and not wide:
            decision = "EQUIVALENT"
            headline = f"EQUIVALENT within ±{100 * margin:.1f} pts on {len(graded)} bench(es) (TOST at each bench's level)"
        elif wide:
            decision = "INCONCLUSIVE"
            worst = max(wide, key=lambda r: r.drop_bound)
            what = f"the {100 * margin:.1f}-pt margin" if margin is not None else f"the {100 * limit:.1f}-pt default margin; set --margin"
            headline = (
                f"INCONCLUSIVE: too small to rule out drops below {100 * worst.drop_bound:.1f} pts on "
                + ", ".join(f"{r.bench} ({100 * r.drop_bound:.1f})" for r in wide)
                + f" ({what}); ~{_items_for(worst, limit)} items of {worst.bench} would"
            )
            if margin is not None and any(r.drop_bound < margin for r in wide):
                headline += " (equivalence needs both sides: a rise beyond the margin is not excluded either)"
        else:
            decision = "PASS"
            bound = max((r.drop_bound for r in graded), default=float("nan"))
            headline = f"PASS: no degradation detected on {len(graded)} bench(es)" + (f"; no drop > {100 * bound:.1f} pts" if graded else "")
    if improved:
        headline += f"; improved: {', '.join(improved)}"
    if decision in ("DEGRADED", "GATE_FAILED") and incomplete:
        headline += f"; INCOMPLETE: {', '.join(incomplete)}"
    not_measured = [f.name for f in families if not f.measured]
    if not probe.measured and _counts(options, KL):
        not_measured.append("KL probe")
    notes = list(evidence.notes) + cmp_notes + _run_notes(base, cand, rows)
    if not_measured:
        notes.append(f"not measured (no data, counted neither way): {', '.join(not_measured)}")
    for found in episode_notes:
        notes.append(f"{found.bench} episodes: {found.n} paired items")
    untested = [f"{f.name}/{m.name}" for f in families if f.measured for m in f.members if not m.tested and f.name == TRAITS]
    if untested:
        notes.append(f"traits too small to be flagged at their level (too few scenarios): {', '.join(untested)}")
    method = (
        f"each signal family decides within itself (Holm over the members that can reach their level, Tarone); the families "
        f"share α={alpha} by weighted Holm (accuracy {100 * 0.8:.0f}% when another family can reach its level, the rest "
        f"split equally; a family that cannot reach its level takes no share); gates (KL tripwire, trait gates) are not "
        f"tests and sit outside α; each Δ interval inverts its bench's test at the level that decided it"
    )
    if evidence.design is not None:
        method += f"; early-stop design (share {evidence.design.share} of α/{evidence.design.family} on always-valid looks)"
    return Verdict(
        decision=decision, exit_code=int(exit_code_of(decision, margin is not None)), headline=headline, reasons=reasons,
        signals=_signals(options), baseline=_where(base), candidate=_where(cand), baseline_model=base.spec.model,
        candidate_model=cand.spec.model, alpha=alpha, margin=margin, method=method, families=families, benches=rows,
        traits=[TraitTable(bench=t.bench, report=t.report) for t in evidence.traits], probe=probe, gates=gates,
        waived=waived, missing=missing, invalid=list(evidence.invalid), notes=notes, options=_options_dict(options),
    )  # fmt: skip
