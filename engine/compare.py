"""Compare a candidate run against a baseline run, bench by bench, on items aligned by id.

Per bench: delta with the interval that inverts the deciding test, the paired test (exact McNemar on
one binary value per item; on subset tiers the weighted statistic the table shows; a paired t on
non-binary values), its mid-p, a non-inferiority bound, per-category rows, full-split reweighting, and
three canaries (truncation flips, generation length, unparsed answers / scorer failures). Across
benches: one two-sided Holm decision over the benches that can reach their level, Holm within each
canary family and over the categories, missing items or samples as INCOMPLETE, and one verdict line.
"""

from __future__ import annotations

import sys

import msgspec
import numpy as np

from engine import episodes, sequential, stats
from engine.baselines import check_comparable, shared_benches, ungraded_benches
from engine.pairing import PairedItems, StratumOf, category_of, grouped, pair_items, per_item_values
from engine.records import ItemRecord, Run, read_noise_floor

POWER = 0.8  # power at which planned sensitivity is quoted

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
    p_holm: float  # Holm over every category row of the run's benches


class Strata(msgspec.Struct, kw_only=True):
    rows: list[StratumRow]
    test: stats.StratifiedTest
    test_method: str
    moved_most: str  # largest |delta| among categories whose own test survives Holm; "" when none does


class FullSplit(msgspec.Struct, kw_only=True):
    """Estimates reweighted from the tier's stratified subset back to the whole split."""

    base_acc: float
    cand_acc: float
    delta: float
    delta_se: float  # stratified, no finite-population correction
    covered: float  # share of the split in strata the subset sampled


class TruncationCanary(msgspec.Struct, kw_only=True):
    base_rate: float
    cand_rate: float
    up: int  # items the candidate truncates more often than the baseline
    down: int
    p_more: float  # exact McNemar one-sided on up/down: candidate hits the cap more
    p_holm: float = 1.0  # Holm over the run's benches (this canary's family)
    flagged: bool


class LengthCanary(msgspec.Struct, kw_only=True):
    measure: str  # "reasoning tokens" (think mode) or "completion tokens"
    shift: stats.LengthShift
    p_holm: float = 1.0
    flagged: bool


class UnparsedCanary(msgspec.Struct, kw_only=True):
    """Items with no extracted answer or a scorer timeout/error, paired: a format regression must not
    read as lost knowledge."""

    base_rate: float  # share of samples without an answer or with a scorer failure
    cand_rate: float
    up: int  # items where the candidate has more such samples than the baseline
    down: int
    p_more: float  # exact McNemar one-sided on up/down
    p_holm: float = 1.0
    flagged: bool


class Missing(msgspec.Struct, kw_only=True):
    """Items and samples absent against the spec (n_items x samples) and the baseline's item ids."""

    cand_items: int  # baseline items the candidate lacks
    cand_samples: int  # records missing from candidate items that are present
    base_items: int  # items the baseline lacks against its spec
    base_samples: int
    potential_losses: int  # of the candidate's missing items: the baseline scored them above 0
    potential_wins: int  # ... below 1
    excused: str = ""  # why the gap does not make the bench INCOMPLETE ("" = it does, when any)

    @property
    def any(self) -> bool:
        return bool(self.cand_items or self.cand_samples or self.base_items or self.base_samples)

    def describe(self) -> str:
        parts = []
        if self.cand_items or self.cand_samples:
            parts.append(
                f"candidate lacks {self.cand_items} item(s) and {self.cand_samples} sample(s) "
                f"(missing items: baseline above 0 on {self.potential_losses}, below 1 on {self.potential_wins})"
            )
        if self.base_items or self.base_samples:
            parts.append(f"baseline lacks {self.base_items} item(s) and {self.base_samples} sample(s) against its spec")
        return "; ".join(parts)


class EarlyStop(msgspec.Struct, kw_only=True):
    stopped: bool
    after_items: int  # design-order prefix the decision used
    discordant: int
    losses: int
    alpha_seq: float  # level of the early looks
    p_design: float  # one-sided p of the early-stop design (used for the verdict)


class Planned(msgspec.Struct, kw_only=True):
    """Sensitivity planned from a discordance measured before the comparison (the baseline's A/A)."""

    discordance: float
    churn: float
    mde: float  # smallest drop the decision finds with POWER (inf: none)
    margin: float  # non-inferiority margin an unchanged candidate shows with POWER


class BenchComparison(msgspec.Struct, kw_only=True):
    bench: str
    # False where the records carry no finish reasons or token counts (an imported lm-eval run): the
    # truncation and length canaries are n/a there, never 0.
    canaries_measured: bool = True
    n: int  # aligned items
    n_baseline: int
    samples: int
    per_item: str  # how an item's samples make its value
    avg_at_k: tuple[float, float] | None = None  # (baseline, candidate) mean sample score, beside maj@k
    maj_at_k: tuple[float, float] | None = None  # (baseline, candidate) maj@k, beside avg@k
    within_item_var: tuple[float, float] | None = None  # mean over items of the sample variance of the scores
    binary: bool  # one 0/1 value per item in both runs
    base_acc: float
    cand_acc: float
    delta: float  # candidate - baseline, accuracy units (full-split estimate on subset tiers)
    delta_ci: tuple[float, float]  # inverts the deciding test at ci_level
    ci_level: float
    ci_method: str
    delta_test: stats.DeltaTest
    both_right: int  # flip matrix (binary); ties for non-binary values go to both_right + both_wrong
    b: int  # baseline better on the item
    c: int  # candidate better on the item
    both_wrong: int
    identical: bool = False  # every paired completion is the same text
    test: str
    p_two_sided: float  # the deciding p
    p_degraded: float
    p_improved: float
    p_two_sided_midp: float  # nan where the test has no mid-p
    p_degraded_midp: float
    p_holm: float  # two-sided, Holm over the family (1.0 outside it)
    p_min: float  # smallest p attainable with these discordant items
    in_family: bool = True
    discordance: float  # share of items that differ
    drop_bound: float  # no drop larger than this (one-sided bound of the interval), accuracy units
    planned: Planned | None = None
    full_split: FullSplit | None = None
    strata: Strata | None = None
    base_trunc: float
    cand_trunc: float
    truncation: TruncationCanary
    length: LengthCanary
    unparsed: UnparsedCanary
    missing: Missing | None = None
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
    incomplete: bool = False  # some bench lacks items or samples (exit code 5)
    margin: float | None = None  # --margin, accuracy units
    family: int = 0  # benches in the Holm family
    verdict_line: str = ""
    flags: list[str] = []
    notes: list[str] = []  # how the runs were made, when it matters (e.g. unsandboxed code execution)


def _strata(items: PairedItems, x: np.ndarray, y: np.ndarray, strata_sizes: dict[str, int]) -> Strata | None:
    names = sorted(set(items.strata))
    if len(names) < 2:
        return None
    labels = np.array(items.strata)
    rows: list[StratumRow] = []
    for name in names:
        mask = labels == name
        xs, ys = x[mask], y[mask]
        b, c = int(np.sum(xs > ys)), int(np.sum(ys > xs))
        rows.append(
            StratumRow(
                stratum=name,
                n=int(mask.sum()),
                population=strata_sizes.get(name, 0),
                base_acc=float(xs.mean()),
                cand_acc=float(ys.mean()),
                delta=float(ys.mean() - xs.mean()),
                b=b,
                c=c,
                p_two_sided=stats.mcnemar_exact(b, c).p_two_sided,
                p_holm=1.0,
            )
        )
    # Holm within the bench until compare_runs puts every category of the run in one family.
    for row, p in zip(rows, stats.holm([r.p_two_sided for r in rows]), strict=True):
        row.p_holm = p
    bs, cs = [r.b for r in rows], [r.c for r in rows]
    if strata_sizes and all(r.population > 0 for r in rows):
        test = stats.cmh_matched_pairs(bs, cs, weights=[r.population for r in rows], n_by_stratum=[r.n for r in rows])
        method = "CMH for matched pairs, strata weighted to the full split"
    else:
        test = stats.cmh_matched_pairs(bs, cs)
        method = "CMH for matched pairs"
    return Strata(rows=rows, test=test, test_method=method, moved_most="")


def _moved_most(strata: Strata, alpha: float) -> str:
    """Name a category only when its own test survives the correction: otherwise the largest |delta|
    of 5-item categories is noise (it named one in 48% of A/A runs)."""
    moved = [r for r in strata.rows if r.p_holm < alpha]
    return max(moved, key=lambda r: (abs(r.delta), -r.p_two_sided)).stratum if moved else ""


def _item_weights(items: PairedItems, strata_sizes: dict[str, int]) -> np.ndarray | None:
    """Each item's weight in the full-split estimate, W_s / (N n_s) over the sampled strata; None when
    the whole split ran or the subset is proportional (every weight equal: the plain mean)."""
    if not strata_sizes or not items.ids:
        return None
    labels = np.array(items.categories)
    sampled = {name: int(np.sum(labels == name)) for name in strata_sizes}
    total = sum(size for name, size in strata_sizes.items() if sampled[name])
    if total == 0:
        return None
    weights = np.array([strata_sizes[c] / (total * sampled[c]) if c in strata_sizes and sampled[c] else 0.0 for c in items.categories])
    if np.allclose(weights, weights[0], rtol=1e-9, atol=0):
        return None
    return weights


def _full_split(items: PairedItems, x: np.ndarray, y: np.ndarray, strata_sizes: dict[str, int]) -> FullSplit | None:
    if not strata_sizes:
        return None
    labels = np.array(items.categories)

    def by_category(values: np.ndarray) -> dict[str, np.ndarray]:
        return {name: values[labels == name] for name in strata_sizes}

    base = stats.stratified_mean(by_category(x), strata_sizes)
    cand = stats.stratified_mean(by_category(y), strata_sizes)
    delta = stats.stratified_mean(by_category(y - x), strata_sizes)
    return FullSplit(base_acc=base.estimate, cand_acc=cand.estimate, delta=delta.estimate, delta_se=delta.se, covered=delta.covered)


def _early_stop(items: PairedItems, design: sequential.EarlyStopDesign, seed: int) -> EarlyStop:
    # Recomputed from the records (not from the runner's note), so a run killed between reaching the
    # boundary and writing its note still reads right, and a finished run gets its end-of-run look.
    # The design's per-item value is the bench's (maj@k where it has one): what the runner monitored.
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


def _paired_canary(base: np.ndarray, cand: np.ndarray) -> tuple[int, int, float]:
    up, down = int(np.sum(cand > base)), int(np.sum(cand < base))
    return up, down, stats.mcnemar_exact(up, down).p_degraded


AVG = "avg@k"
MAJ = "maj@k"


def compare_bench(
    items: PairedItems,
    *,
    alpha: float,
    family: int = 1,
    strata_sizes: dict[str, int] | None = None,
    design: sequential.EarlyStopDesign | None = None,
    seed: int = 0,
    primary: str = AVG,
    margin: float | None = None,
    planned_discordance: float | None = None,
    unparsed: tuple[np.ndarray, np.ndarray] | None = None,
    within_var: tuple[np.ndarray, np.ndarray] | None = None,
    identical: bool = False,
) -> BenchComparison:
    """Every per-bench statistic, decided as if the bench were tested at alpha / family; compare_runs
    replaces the decision with the run's (Holm family, canary families, categories, missingness).

    primary: where a bench draws k > 1 samples and has a maj@k `aggregate`, avg@k (the mean of the k
    sample scores, the default: it keeps every sample's information, so more power) or maj@k.
    unparsed: per item, share of samples without an answer or with a scorer failure (baseline, candidate).
    within_var: per item, the sample variance of the k scores (baseline, candidate).
    """
    strata_sizes = strata_sizes or {}
    n = len(items.ids)
    x, y = items.base, items.cand
    per_item = items.per_item
    avg_at_k = maj_at_k = None
    if items.base_avg is not None and items.cand_avg is not None:
        if primary == AVG and items.samples > 1:
            x, y = items.base_avg, items.cand_avg
            per_item = f"mean of {items.samples} samples (avg@{items.samples}); maj@{items.samples} beside"
            maj_at_k = (float(items.base.mean()), float(items.cand.mean())) if n else None
        else:
            avg_at_k = (float(items.base_avg.mean()), float(items.cand_avg.mean())) if n else None
    binary = bool(np.all(np.isin(x, (0.0, 1.0))) and np.all(np.isin(y, (0.0, 1.0))))
    b, c = int(np.sum(x > y)), int(np.sum(y > x))
    ties = n - b - c
    both_right = int(np.sum((x == y) & (x == 1.0))) if binary else ties
    both_wrong = ties - both_right
    diffs = y - x
    weights = _item_weights(items, strata_sizes)
    mid_two = mid_deg = float("nan")
    if binary and weights is None:
        delta_test = stats.exact_mcnemar_test(b, c, n)
        exact = stats.mcnemar_exact(b, c)
        mid_two, mid_deg = exact.p_two_sided_midp, exact.p_degraded_midp
        test = "exact McNemar (two-sided)"
        ci_method = "exact: Clopper-Pearson on the discordant pairs, least favourable discordance"
    elif binary:
        delta_test = stats.weighted_mcnemar(diffs, weights, items.categories)
        test = "McNemar weighted to the full split (score test, continuity-corrected, two-sided)"
        ci_method = "inverted weighted McNemar, reweighted to the full split"
    else:
        delta_test = stats.paired_t(diffs, weights, items.categories if weights is not None else None)
        test = "paired t on per-item differences" + (", strata weighted to the full split" if weights is not None else "")
        ci_method = "inverted paired t" + (" (stratified, Satterthwaite df)" if weights is not None else "")
    p_two, p_deg, p_imp = delta_test.p_two, delta_test.p_degraded, delta_test.p_improved
    early = None
    if design is not None and items.bench in design.benches:
        early = _early_stop(items, design, seed)
        test = (
            f"early-stop design (always-valid McNemar looks after every item at α={early.alpha_seq:.3g}, "
            f"end-of-run look with the α they left; stagewise p, doubled for the two-sided decision)"
        )
        p_deg = early.p_design
        if early.stopped:
            p_imp = 1.0  # the design only ever looks for degradation; a stopped bench says nothing more
        p_two = min(1.0, 2 * min(p_deg, p_imp))
        mid_two = mid_deg = float("nan")  # the fixed-n mid-p does not apply to a design that looked early
    level = 1 - alpha / family
    ci = delta_test.interval(level) if n else (float("nan"), float("nan"))
    full = _full_split(items, x, y, strata_sizes)
    base_trunc, cand_trunc = (float(items.base_trunc.mean()), float(items.cand_trunc.mean())) if n else (float("nan"),) * 2
    up, down, p_trunc = _paired_canary(items.base_trunc, items.cand_trunc)
    truncation = TruncationCanary(base_rate=base_trunc, cand_rate=cand_trunc, up=up, down=down, p_more=p_trunc, p_holm=p_trunc, flagged=False)
    shift = stats.length_shift(items.base_len, items.cand_len)
    length = LengthCanary(measure=items.length_measure, shift=shift, p_holm=shift.p_longer, flagged=False)
    base_un, cand_un = unparsed if unparsed is not None else (np.zeros(n), np.zeros(n))
    up, down, p_un = _paired_canary(base_un, cand_un)
    unparsed_canary = UnparsedCanary(
        base_rate=float(base_un.mean()) if n else float("nan"), cand_rate=float(cand_un.mean()) if n else float("nan"),
        up=up, down=down, p_more=p_un, p_holm=p_un, flagged=False,
    )  # fmt: skip
    planned = None
    if planned_discordance is not None:
        planned = Planned(
            discordance=planned_discordance,
            churn=stats.CHURN,
            mde=stats.planned_mde(n, planned_discordance, alpha / family, POWER),
            margin=stats.planned_margin(n, planned_discordance, alpha / family, POWER),
        )
    row = BenchComparison(
        bench=items.bench,
        n=n,
        n_baseline=items.n_baseline,
        samples=items.samples,
        per_item=per_item,
        avg_at_k=avg_at_k,
        maj_at_k=maj_at_k,
        within_item_var=(float(within_var[0].mean()), float(within_var[1].mean())) if within_var is not None and n else None,
        binary=binary,
        base_acc=full.base_acc if full else float(x.mean()) if n else float("nan"),
        cand_acc=full.cand_acc if full else float(y.mean()) if n else float("nan"),
        delta=delta_test.estimate if n else float("nan"),
        delta_ci=(float(ci[0]), float(ci[1])),
        ci_level=level,
        ci_method=ci_method,
        delta_test=delta_test,
        both_right=both_right,
        b=b,
        c=c,
        both_wrong=both_wrong,
        identical=identical,
        test=test,
        p_two_sided=p_two,
        p_degraded=p_deg,
        p_improved=p_imp,
        p_two_sided_midp=mid_two,
        p_degraded_midp=mid_deg,
        p_holm=min(1.0, p_two * family),
        p_min=0.0 if early is not None else delta_test.p_min,
        discordance=(b + c) / n if n else float("nan"),
        drop_bound=max(0.0, -float(ci[0])) if n else float("nan"),
        planned=planned,
        full_split=full,
        strata=_strata(items, x, y, strata_sizes),
        base_trunc=base_trunc,
        cand_trunc=cand_trunc,
        truncation=truncation,
        length=length,
        unparsed=unparsed_canary,
        early_stop=early,
        verdict="",
    )
    _decide(row, rejected=p_two < alpha / family, level=level, alpha=alpha, margin=margin, family_k=family)
    _flag_canaries([row], alpha)
    return row


def _decide(row: BenchComparison, *, rejected: bool, level: float, alpha: float, margin: float | None, family_k: int) -> None:
    """Set the interval at the deciding level and the verdict."""
    if row.n:
        row.delta_ci = tuple(float(v) for v in row.delta_test.interval(level))  # type: ignore[assignment]
        row.drop_bound = max(0.0, -row.delta_ci[0])
    row.ci_level = level
    row.verdict = _verdict(row, rejected, alpha, margin, family_k)


def _verdict(row: BenchComparison, rejected: bool, alpha: float, margin: float | None, family_k: int) -> str:
    if row.missing is not None and row.missing.any and not row.missing.excused:
        return f"INCOMPLETE ({row.missing.describe()})"
    if row.n == 0:
        return "no aligned items"
    if rejected:
        if row.delta < 0 or (row.early_stop is not None and row.early_stop.stopped):
            verdict = "DEGRADED"
            if row.early_stop is not None and row.early_stop.stopped:
                verdict += f" (stopped early after {row.early_stop.after_items} items)"
            elif margin is not None and row.drop_bound < margin:
                verdict += f" (by less than the {100 * margin:.1f}-pt margin)"
            return verdict
        return "IMPROVED"
    bound = f"no drop > {100 * row.drop_bound:.1f} pts"
    if row.b == row.c == 0:
        same = "bit-identical" if row.identical else "same score"
        head = f"no change: {same} on {row.n} items; {bound}"
    elif not row.in_family:
        head = f"no change detected: {bound} (not tested: {row.b + row.c} discordant items cannot reach α/{family_k})"
    else:
        head = f"no change detected: {bound}"
    if margin is None:
        return head
    if row.drop_bound < margin:
        return f"EQUIVALENT ({bound}; margin {100 * margin:.1f})"
    return f"NOT SHOWN (a drop of up to {100 * row.drop_bound:.1f} pts is not excluded; margin {100 * margin:.1f})"


def _flag_canaries(rows: list[BenchComparison], alpha: float) -> None:
    """Holm within each canary family over the benches; a flag needs its adjusted p below alpha."""
    for row, p in zip(rows, stats.holm([r.truncation.p_more for r in rows]), strict=True):
        row.truncation.p_holm = p
        row.truncation.flagged = p < alpha and row.cand_trunc > row.base_trunc
    for row, p in zip(rows, stats.holm([r.length.shift.p_longer for r in rows]), strict=True):
        sh = row.length.shift
        row.length.p_holm = p
        # The mean, not only the median: a candidate that loops on a fifth of the items leaves the
        # median ratio at 1 while those items run to the cap.
        row.length.flagged = p < alpha and (sh.median_ratio > 1 or sh.cand_mean > sh.base_mean)
    for row, p in zip(rows, stats.holm([r.unparsed.p_more for r in rows]), strict=True):
        row.unparsed.p_holm = p
        row.unparsed.flagged = p < alpha and row.unparsed.cand_rate > row.unparsed.base_rate
    for row in rows:
        t, sh, un = row.truncation, row.length.shift, row.unparsed
        row.flags = []
        if t.flagged:
            row.flags.append(
                f"{row.bench}: candidate hits the cap more often ({100 * t.base_rate:.1f}% → {100 * t.cand_rate:.1f}%, "
                f"{t.up} items up / {t.down} down, p={t.p_more:.2g}, Holm {t.p_holm:.2g})"
            )
        if row.length.flagged:
            row.flags.append(
                f"{row.bench}: candidate {row.length.measure} longer (mean {sh.base_mean:.0f} → {sh.cand_mean:.0f}, "
                f"median per-item ratio ×{sh.median_ratio:.2f}, Wilcoxon p={sh.p_longer:.2g}, Holm {row.length.p_holm:.2g})"
            )
        if un.flagged:
            row.flags.append(
                f"{row.bench}: candidate gives no answer (or the scorer fails) more often ({100 * un.base_rate:.1f}% → "
                f"{100 * un.cand_rate:.1f}% of samples, {un.up} items up / {un.down} down, p={un.p_more:.2g}, Holm {un.p_holm:.2g}): "
                f"a format regression, not necessarily lost knowledge"
            )


def unanswered(record: ItemRecord) -> bool:
    """No extracted answer, or the scorer timed out / failed on it."""
    extra = record.extra
    return (
        record.answer is None
        or not str(record.answer).strip()
        or bool(extra.get("check_timed_out"))
        or bool(extra.get("scorer_error"))
        or extra.get("status") == "timeout"
    )


def _record_facts(base: Run, cand: Run, bench: str, ids: list[str]) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], bool]:
    """Per aligned item: share of unanswered samples and sample variance of the scores, both runs;
    and whether every paired completion is the same text."""
    groups = grouped(base.records.get(bench, [])), grouped(cand.records.get(bench, []))

    def share(g: dict[str, list[ItemRecord]]) -> np.ndarray:
        return np.array([stats.mean([float(unanswered(r)) for r in g[i]]) for i in ids], dtype=float)

    def spread(g: dict[str, list[ItemRecord]]) -> np.ndarray:
        return np.array([float(np.var([r.score for r in g[i]], ddof=1)) if len(g[i]) > 1 else 0.0 for i in ids], dtype=float)

    identical = all(
        {r.sample: r.completion for r in groups[0][i]} == {r.sample: r.completion for r in groups[1][i]} for i in ids
    )
    return (share(groups[0]), share(groups[1])), (spread(groups[0]), spread(groups[1])), identical


def _missing(base: Run, cand: Run, bench: str) -> tuple[Missing, set[str]]:
    """Gaps against the spec (n_items x samples per side; the baseline's records give the item ids),
    and the ids complete on both sides."""
    spec_b = next((b for b in base.spec.benches if b.name == bench), None)
    spec_c = next((b for b in cand.spec.benches if b.name == bench), None)
    samples = spec_c.samples if spec_c else 1
    base_groups, cand_groups = grouped(base.records.get(bench, [])), grouped(cand.records.get(bench, []))
    values = per_item_values(spec_b, base.records.get(bench, [])) if spec_b else {}

    def full(g: dict[str, list[ItemRecord]], i: str) -> bool:
        return len({r.sample for r in g.get(i, [])}) >= samples

    lacking = [i for i in base_groups if i not in cand_groups]
    expected_base = (spec_b.n_items if spec_b else len(base_groups)) * (spec_b.samples if spec_b else samples)
    base_records = sum(len({r.sample for r in v}) for v in base_groups.values())
    extra_items = [i for i in cand_groups if i not in base_groups]
    missing = Missing(
        cand_items=len(lacking),
        cand_samples=sum(max(0, samples - len({r.sample for r in v})) for v in cand_groups.values()),
        base_items=max(0, (spec_b.n_items if spec_b else 0) - len(base_groups), len(extra_items)),
        base_samples=max(0, expected_base - base_records - max(0, (spec_b.n_items if spec_b else 0) - len(base_groups)) * samples),
        potential_losses=sum(1 for i in lacking if values.get(i, 0.0) > 0),
        potential_wins=sum(1 for i in lacking if values.get(i, 1.0) < 1),
    )
    complete = {i for i in base_groups if full(base_groups, i) and full(cand_groups, i)}
    return missing, complete


def _restrict(items: PairedItems, keep: set[str]) -> PairedItems:
    """The paired items whose samples are all in on both sides (a partly sampled item is not scored as
    maj@2 of 4 without a word)."""
    mask = np.array([i in keep for i in items.ids], dtype=bool)
    if mask.all():
        return items
    fields = {}
    for name in items.__struct_fields__:
        value = getattr(items, name)
        if isinstance(value, np.ndarray):
            fields[name] = value[mask]
        elif name in ("ids", "strata", "categories"):
            fields[name] = [v for v, m in zip(value, mask, strict=True) if m]
        else:
            fields[name] = value
    return PairedItems(**fields)


def compare_runs(
    base: Run,
    cand: Run,
    alpha: float = 0.05,
    waive: tuple[str, ...] = (),
    stratum_of: StratumOf = category_of,
    *,
    allow_incomplete: bool = False,
    margin: float | None = None,
    primary: str = AVG,
    planned_discordance: dict[str, float] | None = None,
) -> Comparison:
    """Grade cand against base. margin: non-inferiority margin in accuracy units (EQUIVALENT / NOT
    SHOWN verdicts); planned_discordance: per bench, the shared-seed discordance measured before (the
    baseline's A/A), for planned power and margin."""
    waived = [(d.field, d.baseline, d.candidate) for d in check_comparable(base, cand, waive)]
    if planned_discordance is None:
        floor = read_noise_floor(base.dir)  # measured once beside the baseline, when it was
        if floor is not None:
            planned_discordance = {name: b.same_seed for name, b in floor.benches.items()}
    design = sequential.read_design(cand.dir)
    names = shared_benches(base, cand)
    rows: list[BenchComparison] = []
    for spec in cand.spec.benches:
        if spec.name not in names:
            continue
        items = pair_items(base, cand, spec.name, stratum_of)
        missing, complete = _missing(base, cand, spec.name)
        items = _restrict(items, complete)
        unparsed, within, identical = _record_facts(base, cand, spec.name, items.ids)
        row = compare_bench(
            items,
            alpha=alpha,
            family=len(names),
            strata_sizes=spec.strata_sizes,
            design=design,
            seed=design.seed if design is not None else cand.spec.seed,
            primary=primary,
            margin=margin,
            planned_discordance=(planned_discordance or {}).get(spec.name),
            unparsed=unparsed,
            within_var=within if items.samples > 1 else None,
            identical=identical and missing.cand_samples == 0,
        )
        if missing.any:
            if row.early_stop is not None and row.early_stop.stopped:
                missing.excused = "stopped early by design (--early-stop)"
            elif allow_incomplete:
                missing.excused = "--allow-incomplete"
            row.missing = missing
        rows.append(row)
    # An incomplete bench stays in the family (it counts) but never frees alpha for the others.
    blocked = [r.missing is not None and r.missing.any and not r.missing.excused for r in rows]
    decision = stats.decide_family(
        [1.0 if blk else r.p_two_sided for r, blk in zip(rows, blocked, strict=True)],
        [0.0 if blk else r.p_min for r, blk in zip(rows, blocked, strict=True)],
        alpha,
    )
    for i, row in enumerate(rows):
        row.in_family = decision.in_family[i]
        row.p_holm = decision.p_holm[i]
        _decide(row, rejected=decision.rejected[i], level=1 - decision.level[i], alpha=alpha, margin=margin, family_k=decision.tarone_k)
    for row in rows:
        row.canaries_measured = not any(
            r.extra.get("no_token_counts") or r.extra.get("no_finish_reason")
            for run in (base, cand)
            for r in run.records.get(row.bench, [])[:1]
        )
        if not row.canaries_measured:  # nothing measured: no flag can come of it
            row.truncation.flagged = row.length.flagged = False
            row.truncation.p_more = 1.0
            row.length.shift = msgspec.structs.replace(row.length.shift, p_longer=1.0)
    _flag_canaries(rows, alpha)
    category_rows = [s for r in rows if r.strata is not None for s in r.strata.rows]
    for s, p in zip(category_rows, stats.holm([s.p_two_sided for s in category_rows]), strict=True):
        s.p_holm = p
    for r in rows:
        if r.strata is not None:
            r.strata.moved_most = _moved_most(r.strata, alpha)
    degraded = [r.bench for r in rows if r.verdict.startswith("DEGRADED")]
    improved = [r.bench for r in rows if r.verdict == "IMPROVED"]
    incomplete = [r.bench for r in rows if r.verdict.startswith("INCOMPLETE")]
    left_out = [r.bench for r in rows if not r.in_family]
    method = (
        "per bench a two-sided test of Δ = 0: exact McNemar on one binary value per item, the same reweighted to "
        "the full split on subset tiers (continuity-corrected score test), else a paired t on per-item differences; "
        f"DEGRADED/IMPROVED = Holm over the {decision.family} bench(es) that can reach their level at α={alpha}"
        + (f" (left out, too few discordant items for α/{decision.tarone_k}: {', '.join(left_out)})" if left_out else "")
        + "; each Δ interval inverts the same test at the Holm step that decided its bench (0 inside ⇔ no verdict), "
        "its lower end is the 'no drop >' bound; baseline and candidate share per-item seeds (common random "
        "numbers), so an unchanged candidate flips few items and the paired test sees the difference, not the "
        "sampling noise; canaries: Holm within each family over the benches; categories: Holm over all of them"
    )
    if design is not None:
        method += f"; early-stop design (share {design.share} of α/{design.family} on always-valid looks)"
    if degraded:
        line = f"DEGRADED: {', '.join(degraded)} ({len(degraded)} of {len(rows)} benches)"
    elif incomplete:
        line = f"INCOMPLETE: {', '.join(incomplete)} lack items or samples (rerun to finish, or --allow-incomplete)"
    else:
        line = f"no degradation detected on {len(rows)} bench(es)"
    if improved:
        line += f"; improved: {', '.join(improved)}"
    if degraded and incomplete:
        line += f"; INCOMPLETE: {', '.join(incomplete)}"
    if margin is not None:
        shown = [r.bench for r in rows if r.verdict.startswith("NOT SHOWN")]
        if shown:
            line += f"; non-inferiority at {100 * margin:.1f} pts NOT SHOWN: {', '.join(shown)}"
    flags = [f for r in rows for f in r.flags]
    notes = [
        f"⚠ {bench}: the {side}'s model-written code ran UNSANDBOXED (--sandbox none)"
        for run, side in ((base, "baseline"), (cand, "candidate"))
        for bench, records in run.records.items()
        if any(r.extra.get("sandbox") == "none" for r in records)
    ]
    for name in names:  # multi-turn benches: turns, tool errors, stop reasons (engine/episodes.py)
        canary = episodes.canaries(name, base.records[name], cand.records[name], alpha)
        if canary is not None:
            notes += episodes.format_canaries(canary)
            flags += canary.flags
    if base.spec.source == cand.spec.source == "lm-eval":
        from engine.importers import lm_eval

        # Beside the binary flips: the paired test on the correct choice's log-likelihood margin.
        for test in lm_eval.margin_tests(base, cand, alpha):
            notes += lm_eval.format_margin_tests([test])
            if test.p_two_sided < alpha:
                side = "lower" if test.delta < 0 else "higher"
                flags.append(f"{test.bench}: log-likelihood margin of the correct choice {side} in the candidate "
                             f"(Δ {test.delta:+.3f} nats, p two-sided {test.p_two_sided:.2g})")  # fmt: skip
    ungraded = ungraded_benches(base, cand)
    if ungraded:
        notes.append(f"ungraded (not in the baseline): {', '.join(ungraded)}")
    notes += [f"{r.bench}: graded despite missing data ({r.missing.excused}): {r.missing.describe()}" for r in rows if r.missing and r.missing.excused]
    for run, side in ((base, "baseline"), (cand, "candidate")):
        for bench, records in run.records.items():
            if errors := sum("scorer_error" in r.extra for r in records):
                notes.append(f"⚠ {bench}: {errors} scorer error(s) in the {side}, scored as wrong (extra.scorer_error)")
    # read_run verified each run's manifest (a records file changed after completion is an error there).
    if base.manifest or cand.manifest:
        notes.append(
            "records: " + "; ".join(
                f"{side} manifest {run.manifest}" + (" (run not completed)" if run.manifest == "absent" else "")
                for run, side in ((base, "baseline"), (cand, "candidate")) if run.manifest
            )
        )
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
        incomplete=bool(incomplete),
        margin=margin,
        family=decision.family,
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


def _level(level: float) -> str:
    return f"{100 * level:.4g}%"


def delta_cell(r: BenchComparison) -> str:
    """Δ and its interval as the table prints it; "identical" when no item differs."""
    if r.n and r.b == r.c == 0 and not r.verdict.startswith("INCOMPLETE"):
        return "bit-identical" if r.identical else "no item differs"
    mark = "ʷ" if r.full_split is not None else ""
    return f"{_pts(r.delta)} [{_pts(r.delta_ci[0])}, {_pts(r.delta_ci[1])}]{mark}"


def format_table(cmp: Comparison) -> str:
    lines = [
        f"baseline  {cmp.baseline_model}  ({cmp.baseline})",
        f"candidate {cmp.candidate_model}  ({cmp.candidate})",
    ]
    for field, bval, cval in cmp.waived:
        lines.append(f"⚠ compared despite differing {field}: baseline {bval!r} vs candidate {cval!r} (--allow-differ)")
    lines += cmp.notes
    header = (
        f"{'bench':<10} {'n':>9} {'base':>6} {'cand':>6} {'Δ pts [interval]':>22} {'level':>7} {'b/c':>9} {'p':>8} "
        f"{'p Holm':>8} {'mid-p':>8} {'trunc base→cand':>16}  verdict"
    )
    lines += [header, "-" * len(header)]
    for r in cmp.benches:
        n = f"{r.n}" if r.n == r.n_baseline else f"{r.n}/{r.n_baseline}"
        trunc = f"{_pct(r.base_trunc)}→{_pct(r.cand_trunc)}{'⚠' if r.truncation.flagged else ''}" if r.canaries_measured else "n/a"
        holm = _p(r.p_holm) if r.in_family else "out"
        lines.append(
            f"{r.bench:<10} {n:>9} {_pct(r.base_acc):>6} {_pct(r.cand_acc):>6} {delta_cell(r):>22} {_level(r.ci_level):>7} "
            f"{f'{r.b}/{r.c}':>9} {_p(r.p_two_sided):>8} {holm:>8} {_p(r.p_two_sided_midp):>8} {trunc:>16}  {r.verdict}"
        )
    if any(r.full_split is not None for r in cmp.benches):
        lines.append("ʷ reweighted to the full split from the tier's stratified subset; the test uses the same weights")
    lines.append(
        "p: two-sided; b/c: items the baseline / the candidate did better on; interval: the deciding test inverted at "
        "`level` (the bench's Holm step), so it excludes 0 exactly when the verdict is DEGRADED or IMPROVED"
    )
    for r in cmp.benches:
        lines += _bench_details(r)
    lines.append(f"verdict: {cmp.verdict_line} at α={cmp.alpha}")
    for flag in cmp.flags:
        lines.append(f"⚠ canary: {flag}")
    lines.append(f"method: {cmp.method}")
    return "\n".join(lines)


def _bench_details(r: BenchComparison) -> list[str]:
    lines = [f"\n{r.bench}: {r.test}; per item: {r.per_item}; Δ interval: {r.ci_method}"]
    if r.missing is not None and r.missing.any:
        state = f"graded anyway ({r.missing.excused})" if r.missing.excused else "not graded"
        lines.append(f"  missing: {r.missing.describe()}; {state}")
    if r.avg_at_k is not None:
        lines.append(f"  avg@{r.samples} (mean over samples): base {_pct(r.avg_at_k[0])} cand {_pct(r.avg_at_k[1])}")
    if r.maj_at_k is not None:
        lines.append(f"  maj@{r.samples}: base {_pct(r.maj_at_k[0])} cand {_pct(r.maj_at_k[1])}")
    if r.within_item_var is not None:
        vb, vc = r.within_item_var
        noise = (vb + vc) / r.samples / r.n if r.n else float("nan")
        lines.append(
            f"  within-item variance of the {r.samples} sample scores: base {vb:.3f} cand {vc:.3f} "
            f"(sampling noise alone gives Δ a standard error of {100 * noise**0.5:.1f} pts)"
        )
    if r.binary:
        lines.append(
            f"  flips: both right {r.both_right}, baseline only {r.b}, candidate only {r.c}, both wrong {r.both_wrong} "
            f"(discordance {_pct(r.discordance)}); p one-sided degraded {_p(r.p_degraded)}, mid-p two-sided {_p(r.p_two_sided_midp)}"
        )
    else:
        lines.append(
            f"  per-item differences: baseline better {r.b}, candidate better {r.c}, equal {r.both_right}; "
            f"p one-sided degraded {_p(r.p_degraded)}"
        )
    if not r.in_family:
        lines.append(f"  left out of the Holm family: with {r.b + r.c} discordant items its smallest possible p is {_p(r.p_min)}")
    if r.n:
        lines.append(
            f"  non-inferiority: no drop larger than {100 * r.drop_bound:.1f} pts (one-sided bound at {_level(1 - (1 - r.ci_level) / 2)})"
        )
    if r.planned is not None:
        pl = r.planned
        lines.append(
            f"  planned from discordance {_pct(pl.discordance)} (churn {pl.churn:g}): finds a drop of {100 * pl.mde:.1f} pts with "
            f"{100 * POWER:.0f}% power; an unchanged candidate shows 'no drop > {100 * pl.margin:.1f} pts' with {100 * POWER:.0f}% power"
        )
    if r.full_split is not None:
        fs = r.full_split
        lines.append(
            f"  full split: base {_pct(fs.base_acc)} cand {_pct(fs.cand_acc)} Δ {_pts(fs.delta)} ± {100 * fs.delta_se:.1f} (SE), "
            f"strata cover {_pct(fs.covered)} of the split"
        )
    if r.early_stop is not None:
        es = r.early_stop
        state = f"stopped after {es.after_items} items" if es.stopped else f"ran to the end ({es.after_items} items in order)"
        lines.append(
            f"  early stop: {state}, {es.losses} losses of {es.discordant} discordant pairs, design p {_p(es.p_design)}"
            + (" (Δ and its interval are fixed-n figures, biased away from 0 by stopping)" if es.stopped else "")
        )
    if r.strata is not None:
        st = r.strata
        moved = f"moved most: {st.moved_most}" if st.moved_most else "no category moved beyond chance (Holm over every category)"
        lines.append(
            f"  per category ({st.test_method}: χ²={st.test.statistic:.2f}, p two-sided {_p(st.test.p_two_sided)}); {moved}"
        )
        lines.append(f"    {'category':<22} {'n':>5} {'base':>6} {'cand':>6} {'Δ pts':>7} {'b/c':>7} {'p':>8} {'p Holm':>8}")
        for s in st.rows:
            mark = " ◀" if s.stratum == st.moved_most else ""
            lines.append(
                f"    {s.stratum[:22]:<22} {s.n:>5} {_pct(s.base_acc):>6} {_pct(s.cand_acc):>6} {_pts(s.delta):>7} "
                f"{f'{s.b}/{s.c}':>7} {_p(s.p_two_sided):>8} {_p(s.p_holm):>8}{mark}"
            )
    t, ln, un = r.truncation, r.length, r.unparsed
    if not r.canaries_measured:
        lines.append("  truncation, length: n/a (the records carry no finish reasons or token counts)")
    lines.append(
        f"  truncation: {_pct(t.base_rate)} → {_pct(t.cand_rate)} ({t.up} items up, {t.down} down, p {_p(t.p_more)}, Holm {_p(t.p_holm)})"
        + ("  ⚠ FLAG" if t.flagged else "")
    )
    if not r.canaries_measured:
        lines.pop(-1)  # the truncation line above: n/a, said once
    sh = ln.shift
    lines.append(
        f"  {ln.measure}: median {sh.base_median:.0f} → {sh.cand_median:.0f}, mean {sh.base_mean:.0f} → {sh.cand_mean:.0f}, "
        f"median per-item ratio ×{sh.median_ratio:.2f}, "
        f"Wilcoxon p longer {_p(sh.p_longer)}, Holm {_p(ln.p_holm)}" + ("  ⚠ FLAG" if ln.flagged else "")
    )
    if not r.canaries_measured:
        lines.pop(-1)
    lines.append(
        f"  no answer / scorer failure: {_pct(un.base_rate)} → {_pct(un.cand_rate)} of samples ({un.up} items up, {un.down} down, "
        f"p {_p(un.p_more)}, Holm {_p(un.p_holm)})" + ("  ⚠ FLAG" if un.flagged else "")
    )
    return lines


def print_comparison(cmp: Comparison, as_json: bool = False) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(cmp), indent=1).decode() + "\n")
    else:
        print(format_table(cmp))
