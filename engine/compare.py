"""Compare a candidate run against a baseline run, bench by bench, on items aligned by id.

Per bench: delta with a paired interval, the paired test (exact McNemar on one binary value per item,
else a sign-flip permutation test on per-item differences), its mid-p, the minimum detectable effect,
per-category rows with a stratified test, full-split reweighting for subset tiers, and two canaries
(truncation flips, generation length). Across benches: Holm, and one verdict line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np

from engine import sequential, stats
from engine.errors import NotComparable
from engine.records import SPEC_FILE, ItemRecord, Run, contract_diff, read_run

# Contract fields a user may knowingly waive (noise-floor experiments: the same model at another seed
# or in another engine configuration). Everything else keeps its items or prompts from lining up.
WAIVABLE = ("seed", "engine.backend", "engine.dtype", "engine.chunked_prefill", "engine.bs1",
            "lm_eval.prompts", "lm_eval.chat_template", "lm_eval.gen_kwargs", "lm_eval.model_type")  # fmt: skip

POWER = 0.8  # power at which the minimum detectable effect is quoted

StratumOf = Callable[[ItemRecord], "str | None"]


def category_of(record: ItemRecord) -> str | None:
    return record.category


class StratumRow(msgspec.Struct, kw_only=True):
    stratum: str
    n: int
    population: int  # items of this stratum in the full split (0: not known)
    base_acc: float
    cand_acc: float
    delta: float
    b: int
    c: int
    p_two_sided: float  # exact sign test (McNemar on binary values) within the stratum
    p_holm: float  # Holm over the strata of this bench


class Strata(msgspec.Struct, kw_only=True):
    rows: list[StratumRow]
    test: stats.StratifiedTest
    test_method: str
    moved_most: str  # stratum with the largest |delta|


class FullSplit(msgspec.Struct, kw_only=True):
    """Estimates reweighted from the tier's stratified subset back to the whole split."""

    base_acc: float
    cand_acc: float
    delta: float
    delta_se: float
    delta_ci: tuple[float, float]
    covered: float  # share of the split in strata the subset sampled


class TruncationCanary(msgspec.Struct, kw_only=True):
    base_rate: float
    cand_rate: float
    up: int  # items the candidate truncates more often than the baseline
    down: int
    p_more: float  # exact McNemar one-sided on up/down: candidate hits the cap more
    flagged: bool


class LengthCanary(msgspec.Struct, kw_only=True):
    measure: str  # "reasoning tokens" (think mode) or "completion tokens"
    shift: stats.LengthShift
    flagged: bool


class EarlyStop(msgspec.Struct, kw_only=True):
    stopped: bool
    after_items: int  # design-order prefix the decision used
    discordant: int
    losses: int
    alpha_seq: float  # level of the early looks
    p_design: float  # one-sided p of the early-stop design (used for the verdict)


class BenchComparison(msgspec.Struct, kw_only=True):
    bench: str
    n: int  # aligned items
    n_baseline: int
    samples: int
    per_item: str  # how an item's samples make its value
    avg_at_k: tuple[float, float] | None = None  # (baseline, candidate) mean sample score, beside maj@k
    binary: bool  # one 0/1 value per item in both runs
    base_acc: float
    cand_acc: float
    delta: float  # candidate - baseline, accuracy units
    delta_ci: tuple[float, float]
    ci_method: str
    both_right: int  # flip matrix (binary); ties for non-binary values go to both_right + both_wrong
    b: int  # baseline better on the item
    c: int  # candidate better on the item
    both_wrong: int
    test: str
    p_two_sided: float
    p_degraded: float
    p_improved: float
    p_two_sided_midp: float  # nan where the test has no mid-p (non-binary values)
    p_degraded_midp: float
    p_degraded_holm: float
    p_improved_holm: float
    discordance: float  # share of items that differ
    mde: float  # smallest drop detected with POWER at the bench's strictest Holm level; inf: none
    mde_alpha: float
    full_split: FullSplit | None = None
    strata: Strata | None = None
    base_trunc: float
    cand_trunc: float
    truncation: TruncationCanary
    length: LengthCanary
    early_stop: EarlyStop | None = None
    flags: list[str] = []
    verdict: str


class Comparison(msgspec.Struct, kw_only=True):
    baseline: str
    candidate: str
    baseline_model: str
    candidate_model: str
    alpha: float
    method: str
    waived: list[tuple[str, object, object]]
    benches: list[BenchComparison]
    degraded: bool
    verdict_line: str = ""
    flags: list[str] = []
    notes: list[str] = []  # how the runs were made, when it matters (e.g. unsandboxed code execution)


class PairedItems(msgspec.Struct, kw_only=True):
    """One bench's items present in both runs, as aligned arrays (what the statistics and plots use)."""

    bench: str
    ids: list[str]
    base: np.ndarray  # per-item value
    cand: np.ndarray
    base_trunc: np.ndarray  # per-item share of samples that hit the cap
    cand_trunc: np.ndarray
    base_len: np.ndarray  # per-item mean generation length (reasoning tokens in think mode)
    cand_len: np.ndarray
    strata: list[str]
    categories: list[str]
    n_baseline: int
    samples: int
    per_item: str
    length_measure: str
    # Mean of the sample scores (avg@k), shown beside an aggregate such as maj@k.
    base_avg: np.ndarray | None = None
    cand_avg: np.ndarray | None = None


def _grouped(records: list[ItemRecord]) -> dict[str, list[ItemRecord]]:
    grouped: dict[str, list[ItemRecord]] = {}
    for rec in records:
        grouped.setdefault(rec.item_id, []).append(rec)
    return grouped


def _aggregate_of(bench: str):
    """The bench module's `aggregate`, if any; imported runs' benches (lm-eval tasks) have no module."""
    import benches

    return getattr(benches.get_bench(bench), "aggregate", None) if bench in benches.BENCHES else None


def item_value_fn(bench: str) -> Callable[[list[ItemRecord]], float]:
    """Per-item value from an item's records: the bench's `aggregate` (maj@k), else the mean score."""
    aggregate = _aggregate_of(bench)
    return aggregate if aggregate else (lambda recs: stats.mean([r.score for r in recs]))


def per_item_values(bench: str, records: list[ItemRecord]) -> dict[str, float]:
    value = item_value_fn(bench)
    return {k: float(value(v)) for k, v in _grouped(records).items()}


def _per_item(bench: str, records: list[ItemRecord]) -> tuple[dict[str, float], dict[str, float]]:
    """item id -> per-item score, and -> share of its samples that hit the cap."""
    truncs = {k: stats.mean([float(r.truncated) for r in v]) for k, v in _grouped(records).items()}
    return per_item_values(bench, records), truncs


def pair_items(base: Run, cand: Run, bench: str, stratum_of: StratumOf = category_of) -> PairedItems:
    base_groups = _grouped(base.records.get(bench, []))
    cand_groups = _grouped(cand.records.get(bench, []))
    value = item_value_fn(bench)
    ids = [i for i in base_groups if i in cand_groups]
    think = cand.spec.think
    spec = next((b for b in cand.spec.benches if b.name == bench), None)
    samples = spec.samples if spec else 1

    def length(recs: list[ItemRecord]) -> float:
        return stats.mean([float(r.reasoning_tokens if think else r.completion_tokens) for r in recs])

    def column(groups: dict[str, list[ItemRecord]], fn) -> np.ndarray:
        return np.array([fn(groups[i]) for i in ids], dtype=float)

    has_aggregate = _aggregate_of(bench) is not None
    if has_aggregate:
        per_item = f"aggregate() of {samples} samples"
    elif samples > 1:
        per_item = f"mean of {samples} samples (avg@{samples})"
    else:
        per_item = "1 sample"
    return PairedItems(
        bench=bench,
        ids=ids,
        base=column(base_groups, value),
        cand=column(cand_groups, value),
        base_trunc=column(base_groups, lambda r: stats.mean([float(x.truncated) for x in r])),
        cand_trunc=column(cand_groups, lambda r: stats.mean([float(x.truncated) for x in r])),
        base_len=column(base_groups, length),
        cand_len=column(cand_groups, length),
        strata=[str(stratum_of(cand_groups[i][0]) or "") for i in ids],
        categories=[cand_groups[i][0].category or "" for i in ids],
        n_baseline=len(base_groups),
        samples=samples,
        per_item=per_item,
        length_measure="reasoning tokens" if think else "completion tokens",
        base_avg=column(base_groups, lambda r: stats.mean([x.score for x in r])) if has_aggregate else None,
        cand_avg=column(cand_groups, lambda r: stats.mean([x.score for x in r])) if has_aggregate else None,
    )


def check_comparable(base: Run, cand: Run, waive: tuple[str, ...] = ()) -> list[tuple[str, object, object]]:
    """Raise NotComparable listing every differing contract field; return the waived differences."""
    bad = [w for w in waive if w not in WAIVABLE]
    if bad:
        raise NotComparable(f"--allow-differ {','.join(bad)}: only {', '.join(WAIVABLE)} can be waived")
    diffs = contract_diff(base.spec, cand.spec)
    blocking = [d for d in diffs if d[0] not in waive]
    if blocking:
        lines = [f"⚠ NOT COMPARABLE: {cand.dir} cannot be graded against {base.dir}"]
        lines += [f"  {field}: baseline {bval!r} vs candidate {cval!r}" for field, bval, cval in blocking]
        if base.spec.source == cand.spec.source == "lm-eval":
            from engine.importers.lm_eval import differing_documents

            lines += differing_documents(base, cand)
        raise NotComparable("\n".join(lines))
    return [d for d in diffs if d[0] in waive]


def _strata(items: PairedItems, strata_sizes: dict[str, int]) -> Strata | None:
    names = sorted(set(items.strata))
    if len(names) < 2:
        return None
    labels = np.array(items.strata)
    rows: list[StratumRow] = []
    for name in names:
        mask = labels == name
        x, y = items.base[mask], items.cand[mask]
        b, c = int(np.sum(x > y)), int(np.sum(y > x))
        rows.append(
            StratumRow(
                stratum=name,
                n=int(mask.sum()),
                population=strata_sizes.get(name, 0),
                base_acc=float(x.mean()),
                cand_acc=float(y.mean()),
                delta=float(y.mean() - x.mean()),
                b=b,
                c=c,
                p_two_sided=stats.mcnemar_exact(b, c).p_two_sided,
                p_holm=1.0,
            )
        )
    for row, p in zip(rows, stats.holm([r.p_two_sided for r in rows]), strict=True):
        row.p_holm = p
    bs, cs = [r.b for r in rows], [r.c for r in rows]
    if strata_sizes and all(r.population > 0 for r in rows):
        test = stats.cmh_matched_pairs(bs, cs, weights=[r.population for r in rows], n_by_stratum=[r.n for r in rows])
        method = "CMH for matched pairs, strata weighted to the full split"
    else:
        test = stats.cmh_matched_pairs(bs, cs)
        method = "CMH for matched pairs"
    moved = max(rows, key=lambda r: (abs(r.delta), -r.p_two_sided))
    return Strata(rows=rows, test=test, test_method=method, moved_most=moved.stratum)


def _full_split(items: PairedItems, strata_sizes: dict[str, int], level: float) -> FullSplit | None:
    if not strata_sizes:
        return None
    labels = np.array(items.categories)

    def by_category(values: np.ndarray) -> dict[str, np.ndarray]:
        return {name: values[labels == name] for name in strata_sizes}

    base = stats.stratified_mean(by_category(items.base), strata_sizes, level)
    cand = stats.stratified_mean(by_category(items.cand), strata_sizes, level)
    delta = stats.stratified_mean(by_category(items.cand - items.base), strata_sizes, level)
    return FullSplit(
        base_acc=base.estimate,
        cand_acc=cand.estimate,
        delta=delta.estimate,
        delta_se=delta.se,
        delta_ci=delta.ci,
        covered=delta.covered,
    )


def _early_stop(items: PairedItems, design: sequential.EarlyStopDesign, seed: int) -> EarlyStop:
    # Recomputed from the records (not from the runner's note), so a run killed between reaching the
    # boundary and writing its note still reads right, and a finished run gets its end-of-run look.
    order = sorted(items.ids, key=lambda i: sequential.order_key(seed, items.bench, i))
    base = dict(zip(items.ids, items.base.tolist(), strict=True))
    cand = dict(zip(items.ids, items.cand.tolist(), strict=True))
    path, at, prefix = sequential.loss_path(order, base, cand)
    p, stop = stats.sequential_p_value(path, design.alpha_seq, design.prior_a)
    used = path[:stop] if stop is not None else path
    return EarlyStop(
        stopped=stop is not None,
        after_items=at[stop - 1] if stop is not None else prefix,
        discordant=len(used),
        losses=int(sum(used)),
        alpha_seq=design.alpha_seq,
        p_design=p,
    )


def compare_bench(
    items: PairedItems,
    *,
    alpha: float,
    family: int,
    strata_sizes: dict[str, int] | None = None,
    design: sequential.EarlyStopDesign | None = None,
    seed: int = 0,
) -> BenchComparison:
    """Every per-bench statistic; Holm columns are filled in by compare_runs."""
    strata_sizes = strata_sizes or {}
    level = 1 - alpha
    x, y = items.base, items.cand
    n = len(items.ids)
    binary = bool(np.all(np.isin(x, (0.0, 1.0))) and np.all(np.isin(y, (0.0, 1.0))))
    b, c = int(np.sum(x > y)), int(np.sum(y > x))
    ties = n - b - c
    both_right = int(np.sum((x == y) & (x == 1.0))) if binary else ties
    both_wrong = ties - both_right
    mde_alpha = alpha / family  # Holm's first step: what a bench must beat when it alone moved
    diffs = y - x
    if binary:
        exact = stats.mcnemar_exact(b, c)
        test = "exact McNemar"
        p_two, p_deg, p_imp = exact.p_two_sided, exact.p_degraded, exact.p_improved
        mid_two, mid_deg = exact.p_two_sided_midp, exact.p_degraded_midp
        ci = stats.newcombe_paired_ci(both_right, b, c, both_wrong, level) if n else (float("nan"),) * 2
        ci_method = "Newcombe hybrid score (paired)"
        mde = stats.mde_mcnemar(n, (b + c) / n, mde_alpha, POWER) if n else float("inf")
    else:
        flip = stats.sign_flip_test(diffs)
        test = f"sign-flip permutation ({'exact' if flip.exact else f'{flip.n_resamples} draws'})"
        p_two, p_deg, p_imp = flip.p_two_sided, flip.p_degraded, flip.p_improved
        mid_two = mid_deg = float("nan")
        ci = stats.paired_bootstrap_ci(diffs, level)
        ci_method = "paired bootstrap percentile"
        sd = float(diffs.std(ddof=1)) if n > 1 else 0.0
        # No differences at all leave no spread to plan with: fall back to the binary-flip figure.
        mde = stats.mde_paired_t(n, sd, mde_alpha, POWER) if sd > 0 else stats.mde_mcnemar(n, 0.0, mde_alpha, POWER)
    early = None
    if design is not None and items.bench in design.benches:
        early = _early_stop(items, design, seed)
        test = (
            f"early-stop design (always-valid McNemar looks after every item at α={early.alpha_seq:.3g}, "
            f"end-of-run look with the α they left; stagewise p)"
        )
        p_deg = early.p_design
        mid_two = mid_deg = float("nan")  # the fixed-n mid-p does not apply to a design that looked early
        if early.stopped:
            p_imp = 1.0  # the design only ever looks for degradation; a stopped bench says nothing more
    full = _full_split(items, strata_sizes, level)
    if full is not None:
        ci, ci_method = full.delta_ci, "stratified normal, reweighted to the full split"
    trunc_up = int(np.sum(items.cand_trunc > items.base_trunc))
    trunc_down = int(np.sum(items.cand_trunc < items.base_trunc))
    p_trunc = stats.mcnemar_exact(trunc_up, trunc_down).p_degraded
    base_trunc, cand_trunc = (float(items.base_trunc.mean()), float(items.cand_trunc.mean())) if n else (float("nan"),) * 2
    truncation = TruncationCanary(
        base_rate=base_trunc,
        cand_rate=cand_trunc,
        up=trunc_up,
        down=trunc_down,
        p_more=p_trunc,
        flagged=p_trunc < alpha and cand_trunc > base_trunc,
    )
    shift = stats.length_shift(items.base_len, items.cand_len)
    length = LengthCanary(
        measure=items.length_measure,
        shift=shift,
        # The mean, not only the median: a candidate that loops on a fifth of the items leaves the
        # median ratio at 1 while those items run to the cap.
        flagged=shift.p_longer < alpha and (shift.median_ratio > 1 or shift.cand_mean > shift.base_mean),
    )
    flags = []
    if truncation.flagged:
        flags.append(
            f"{items.bench}: candidate hits the cap more often ({100 * base_trunc:.1f}% → {100 * cand_trunc:.1f}%, "
            f"{trunc_up} items up / {trunc_down} down, p={p_trunc:.2g})"
        )
    if length.flagged:
        flags.append(
            f"{items.bench}: candidate {items.length_measure} longer (mean {shift.base_mean:.0f} → {shift.cand_mean:.0f}, "
            f"median per-item ratio ×{shift.median_ratio:.2f}, Wilcoxon p={shift.p_longer:.2g})"
        )
    return BenchComparison(
        bench=items.bench,
        n=n,
        n_baseline=items.n_baseline,
        samples=items.samples,
        per_item=items.per_item,
        avg_at_k=(float(items.base_avg.mean()), float(items.cand_avg.mean())) if items.base_avg is not None and n else None,
        binary=binary,
        base_acc=float(x.mean()) if n else float("nan"),
        cand_acc=float(y.mean()) if n else float("nan"),
        delta=float(diffs.mean()) if n else float("nan"),
        delta_ci=(float(ci[0]), float(ci[1])),
        ci_method=ci_method,
        both_right=both_right,
        b=b,
        c=c,
        both_wrong=both_wrong,
        test=test,
        p_two_sided=p_two,
        p_degraded=p_deg,
        p_improved=p_imp,
        p_two_sided_midp=mid_two,
        p_degraded_midp=mid_deg,
        p_degraded_holm=p_deg,
        p_improved_holm=p_imp,
        discordance=(b + c) / n if n else float("nan"),
        mde=mde,
        mde_alpha=mde_alpha,
        full_split=full,
        strata=_strata(items, strata_sizes),
        base_trunc=base_trunc,
        cand_trunc=cand_trunc,
        truncation=truncation,
        length=length,
        early_stop=early,
        flags=flags,
        verdict="",
    )


def _verdict(row: BenchComparison, alpha: float) -> str:
    if row.n == 0:
        return "no aligned items"
    if row.p_degraded_holm < alpha:
        if row.early_stop is not None and row.early_stop.stopped:
            return f"DEGRADED (stopped early after {row.early_stop.after_items} items)"
        return "DEGRADED"
    if row.p_improved_holm < alpha:
        return "IMPROVED"
    if row.mde == float("inf"):
        return "no change detected (too few items to detect any drop)"
    return f"no change detected (could have seen ≥ {100 * row.mde:.1f} pts)"


def compare_runs(
    base: Run, cand: Run, alpha: float = 0.05, waive: tuple[str, ...] = (), stratum_of: StratumOf = category_of
) -> Comparison:
    waived = check_comparable(base, cand, waive)
    design = sequential.read_design(cand.dir)
    names = [b.name for b in cand.spec.benches]
    rows = [
        compare_bench(
            pair_items(base, cand, spec.name, stratum_of),
            alpha=alpha,
            family=len(names),
            strata_sizes=spec.strata_sizes,
            design=design,
            seed=design.seed if design is not None else cand.spec.seed,
        )
        for spec in cand.spec.benches
    ]
    # Holm over the benches of this run, separately for each one-sided direction.
    for row, p in zip(rows, stats.holm([r.p_degraded for r in rows]), strict=True):
        row.p_degraded_holm = p
    for row, p in zip(rows, stats.holm([r.p_improved for r in rows]), strict=True):
        row.p_improved_holm = p
    for row in rows:
        row.verdict = _verdict(row, alpha)
    degraded = [r.bench for r in rows if r.verdict.startswith("DEGRADED")]
    improved = [r.bench for r in rows if r.verdict == "IMPROVED"]
    method = (
        f"per bench: exact McNemar on one binary value per item, else sign-flip permutation test on per-item "
        f"differences; one-sided for degradation, Holm over the {len(rows)} bench(es) of the run at α={alpha}; "
        f"Δ interval {100 * (1 - alpha):.0f}%; MDE at {100 * POWER:.0f}% power, one-sided exact test at α/{len(rows)}"
    )
    if design is not None:
        method += f"; early-stop design (share {design.share} of α/{design.family} on always-valid looks)"
    if degraded:
        line = f"DEGRADED: {', '.join(degraded)} ({len(degraded)} of {len(rows)} benches)"
    else:
        line = f"no degradation detected on {len(rows)} bench(es)"
    if improved:
        line += f"; improved: {', '.join(improved)}"
    flags = [f for r in rows for f in r.flags]
    notes = [
        f"⚠ {bench}: the {side}'s model-written code ran UNSANDBOXED (--sandbox none)"
        for run, side in ((base, "baseline"), (cand, "candidate"))
        for bench, records in run.records.items()
        if any(r.extra.get("sandbox") == "none" for r in records)
    ]
    return Comparison(
        baseline=str(base.dir),
        candidate=str(cand.dir),
        baseline_model=base.spec.model,
        candidate_model=cand.spec.model,
        alpha=alpha,
        method=method,
        waived=waived,
        benches=rows,
        degraded=bool(degraded),
        verdict_line=line,
        flags=flags,
        notes=notes,
    )


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return "-" if x != x else f"{100 * x:+.1f}"


def _p(x: float) -> str:
    return "-" if x != x else f"{x:.3g}"


def format_table(cmp: Comparison) -> str:
    lines = [
        f"baseline  {cmp.baseline_model}  ({cmp.baseline})",
        f"candidate {cmp.candidate_model}  ({cmp.candidate})",
    ]
    for field, bval, cval in cmp.waived:
        lines.append(f"⚠ compared despite differing {field}: baseline {bval!r} vs candidate {cval!r} (--allow-differ)")
    lines += cmp.notes
    ci_head = f"Δ pts [{100 * (1 - cmp.alpha):.0f}% CI]"
    header = (
        f"{'bench':<10} {'n':>9} {'base':>6} {'cand':>6} {ci_head:>22} {'b/c':>9} {'p':>8} {'p Holm':>8} "
        f"{'mid-p':>8} {'MDE':>5} {'trunc base→cand':>16}  verdict"
    )
    lines += [header, "-" * len(header)]
    for r in cmp.benches:
        n = f"{r.n}" if r.n == r.n_baseline else f"{r.n}/{r.n_baseline}"
        base_acc, cand_acc, delta = r.base_acc, r.cand_acc, r.delta
        mark = ""
        if r.full_split is not None:
            base_acc, cand_acc, delta, mark = r.full_split.base_acc, r.full_split.cand_acc, r.full_split.delta, "ʷ"
        ci = f"{_pts(delta)} [{_pts(r.delta_ci[0])}, {_pts(r.delta_ci[1])}]{mark}"
        trunc = f"{_pct(r.base_trunc)}→{_pct(r.cand_trunc)}{'⚠' if r.truncation.flagged else ''}"
        mde = "inf" if r.mde == float("inf") else f"{100 * r.mde:.1f}"
        lines.append(
            f"{r.bench:<10} {n:>9} {_pct(base_acc):>6} {_pct(cand_acc):>6} {ci:>22} {f'{r.b}/{r.c}':>9} "
            f"{_p(r.p_degraded):>8} {_p(r.p_degraded_holm):>8} {_p(r.p_degraded_midp):>8} {mde:>5} {trunc:>16}  {r.verdict}"
        )
    if any(r.full_split is not None for r in cmp.benches):
        lines.append("ʷ reweighted to the full split from the tier's stratified subset (stratified standard errors)")
    lines.append("p: one-sided (candidate worse); b/c: items the baseline / the candidate did better on; MDE: pts")
    for r in cmp.benches:
        lines += _bench_details(r)
    lines.append(f"verdict: {cmp.verdict_line} at α={cmp.alpha}")
    for flag in cmp.flags:
        lines.append(f"⚠ canary: {flag}")
    lines.append(f"method: {cmp.method}")
    incomplete = [r.bench for r in cmp.benches if r.n < r.n_baseline and not (r.early_stop and r.early_stop.stopped)]
    if incomplete:
        lines.append(f"note: candidate has not covered every baseline item of {', '.join(incomplete)}")
    return "\n".join(lines)


def _bench_details(r: BenchComparison) -> list[str]:
    lines = [f"\n{r.bench}: {r.test}; per item: {r.per_item}; Δ interval: {r.ci_method}"]
    if r.avg_at_k is not None:
        lines.append(f"  avg@{r.samples} (mean over samples): base {_pct(r.avg_at_k[0])} cand {_pct(r.avg_at_k[1])}")
    if r.binary:
        lines.append(
            f"  flips: both right {r.both_right}, baseline only {r.b}, candidate only {r.c}, both wrong {r.both_wrong} "
            f"(discordance {_pct(r.discordance)}); p two-sided {_p(r.p_two_sided)}, mid-p {_p(r.p_two_sided_midp)}"
        )
    else:
        lines.append(
            f"  per-item differences: baseline better {r.b}, candidate better {r.c}, equal {r.both_right}; "
            f"p two-sided {_p(r.p_two_sided)}"
        )
    if r.full_split is not None:
        fs = r.full_split
        lines.append(
            f"  full split: base {_pct(fs.base_acc)} cand {_pct(fs.cand_acc)} Δ {_pts(fs.delta)} ± {100 * fs.delta_se:.1f} (SE), "
            f"strata cover {_pct(fs.covered)} of the split; unweighted subset Δ {_pts(r.delta)}"
        )
    if r.early_stop is not None:
        es = r.early_stop
        state = f"stopped after {es.after_items} items" if es.stopped else f"ran to the end ({es.after_items} items in order)"
        lines.append(
            f"  early stop: {state}, {es.losses} losses of {es.discordant} discordant pairs, design p {_p(es.p_design)}"
            + (" (Δ and its interval are biased away from 0 by stopping)" if es.stopped else "")
        )
    if r.strata is not None:
        st = r.strata
        lines.append(
            f"  per category ({st.test_method}: χ²={st.test.statistic:.2f}, p two-sided {_p(st.test.p_two_sided)}, "
            f"p degraded {_p(st.test.p_degraded)}); moved most: {st.moved_most}"
        )
        lines.append(f"    {'category':<22} {'n':>5} {'base':>6} {'cand':>6} {'Δ pts':>7} {'b/c':>7} {'p':>8} {'p Holm':>8}")
        for s in st.rows:
            mark = " ◀" if s.stratum == st.moved_most else ""
            lines.append(
                f"    {s.stratum[:22]:<22} {s.n:>5} {_pct(s.base_acc):>6} {_pct(s.cand_acc):>6} {_pts(s.delta):>7} "
                f"{f'{s.b}/{s.c}':>7} {_p(s.p_two_sided):>8} {_p(s.p_holm):>8}{mark}"
            )
    t, ln = r.truncation, r.length
    lines.append(
        f"  truncation: {_pct(t.base_rate)} → {_pct(t.cand_rate)} ({t.up} items up, {t.down} down, p {_p(t.p_more)})"
        + ("  ⚠ FLAG" if t.flagged else "")
    )
    sh = ln.shift
    lines.append(
        f"  {ln.measure}: median {sh.base_median:.0f} → {sh.cand_median:.0f}, mean {sh.base_mean:.0f} → {sh.cand_mean:.0f}, "
        f"median per-item ratio ×{sh.median_ratio:.2f}, "
        f"Wilcoxon p longer {_p(sh.p_longer)}" + ("  ⚠ FLAG" if ln.flagged else "")
    )
    return lines


def print_comparison(cmp: Comparison, as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(cmp), indent=1).decode() + "\n")
    else:
        print(format_table(cmp))


def baselines_root() -> Path:
    """`baselines/` of the working directory, else the one committed beside the package."""
    here = Path("baselines")
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "baselines"


def find_baseline(names: list[str], cand: Run) -> Run | None:
    """The committed baseline run under baselines/<name>/ whose contract matches the candidate.

    None when no baseline exists for any of the names; NotComparable (with the closest run's
    differences) when some exist but none matches.
    """
    closest: tuple[int, Run, list] | None = None
    for name in dict.fromkeys(n for n in names if n):
        folder = baselines_root() / name
        if not folder.is_dir():
            continue
        for spec_path in sorted(folder.glob(f"*/{SPEC_FILE}")):
            base = read_run(spec_path.parent)
            diffs = contract_diff(base.spec, cand.spec)
            if not diffs:
                return base
            if closest is None or len(diffs) < closest[0]:
                closest = (len(diffs), base, diffs)
    if closest is None:
        return None
    _, base, diffs = closest
    lines = [f"⚠ NOT COMPARABLE: no baseline under {baselines_root()} matches this run; closest is {base.dir}:"]
    lines += [f"  {field}: baseline {bval!r} vs candidate {cval!r}" for field, bval, cval in diffs]
    raise NotComparable("\n".join(lines))
