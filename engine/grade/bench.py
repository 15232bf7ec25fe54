"""One bench: the paired test and its interval, the per-bench decision, and the items it is made of.

Delta with the interval that inverts the deciding test (exact McNemar on one binary value per item;
on subset tiers the weighted statistic the table shows; a paired t on non-binary values), its mid-p,
the "no drop >" bound, planned sensitivity, per-category rows, full-split reweighting, early stop,
missing items, and the three per-bench canaries. The bench's decision is made in its family
(engine/grade/family.py); `decide_bench` turns that into the row's verdict text.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from engine import sequential, stats
from engine.grade.canaries import LengthCanary, TruncationCanary, UnparsedCanary, paired_canary, unanswered
from engine.grade.strata import FullSplit, Strata, full_split_of, item_weights, strata_of
from engine.pairing import PairedItems, grouped, per_item_values
from engine.records import ItemRecord, Run

POWER = 0.8  # power at which planned sensitivity is quoted

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
    verdict: str


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
    """Every per-bench statistic, decided as if the bench were tested at alpha / family; grade replaces
    the decision with the run's (the accuracy family at its share of alpha, missingness).

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
    weights = item_weights(items, strata_sizes)
    mid_two = mid_deg = float("nan")
    # No discordant item on a subset tier: the weighted test has nothing to weigh (its interval would
    # be 0 wide); the exact interval bounds the unseen discordance instead (audit defect 2).
    if binary and (weights is None or b + c == 0):
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
    full = full_split_of(items, x, y, strata_sizes)
    base_trunc, cand_trunc = (float(items.base_trunc.mean()), float(items.cand_trunc.mean())) if n else (float("nan"),) * 2
    up, down, p_trunc = paired_canary(items.base_trunc, items.cand_trunc)
    truncation = TruncationCanary(base_rate=base_trunc, cand_rate=cand_trunc, up=up, down=down, p_more=p_trunc, p_holm=p_trunc, flagged=False)
    shift = stats.length_shift(items.base_len, items.cand_len)
    length = LengthCanary(measure=items.length_measure, shift=shift, p_holm=shift.p_longer, flagged=False)
    base_un, cand_un = unparsed if unparsed is not None else (np.zeros(n), np.zeros(n))
    up, down, p_un = paired_canary(base_un, cand_un)
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
        strata=strata_of(items, x, y, strata_sizes),
        base_trunc=base_trunc,
        cand_trunc=cand_trunc,
        truncation=truncation,
        length=length,
        unparsed=unparsed_canary,
        early_stop=early,
        verdict="",
    )
    decide_bench(row, rejected=p_two < alpha / family, level=level, margin=margin, family_k=family)
    return row


def decide_bench(row: BenchComparison, *, rejected: bool, level: float, margin: float | None, family_k: int) -> None:
    """Set the interval at the deciding level, the "no drop >" bound and the row's verdict text."""
    if row.n:
        row.delta_ci = tuple(float(v) for v in row.delta_test.interval(level))  # type: ignore[assignment]
        if row.early_stop is not None:
            # The design decided, the interval is fixed-n: make them say the same (audit defect 4). Not
            # rejected: the interval is widened to hold 0. Rejected while the fixed-n interval still
            # holds 0: its upper end is capped at 0, the side the design's always-valid looks showed.
            lo, hi = row.delta_ci
            if not rejected:
                row.delta_ci = (min(lo, 0.0), max(hi, 0.0))
            elif hi >= 0:
                below = math.nextafter(0.0, -1.0)  # "Δ < 0", the design's one-sided finding
                row.delta_ci = (min(lo, below), below)
                row.ci_method += "; upper end capped below 0 by the early-stop design's rejection"
        row.drop_bound = max(0.0, -row.delta_ci[0])
        m = row.missing
        if m is not None and m.cand_items and m.excused and not (row.early_stop is not None and row.early_stop.stopped):
            # Graded despite missing items (--allow-incomplete): the bound counts every missing item the
            # baseline scored above 0 as a loss, so a gap cannot hide a drop (audit defect 6).
            total = row.n + m.cand_items
            row.drop_bound = max(0.0, -(row.n * row.delta_ci[0] - m.potential_losses) / total)
    row.ci_level = level
    row.verdict = _verdict(row, rejected, margin, family_k)


def _verdict(row: BenchComparison, rejected: bool, margin: float | None, family_k: int) -> str:
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
    # Equivalence needs both sides (TOST): no drop and no rise beyond the margin (audit defect 3).
    if row.drop_bound < margin and row.delta_ci[1] < margin:
        return f"EQUIVALENT ({bound}, no rise > {100 * max(0.0, row.delta_ci[1]):.1f} pts; margin {100 * margin:.1f})"
    if row.drop_bound < margin:
        return f"NOT SHOWN (a rise of up to {100 * row.delta_ci[1]:.1f} pts is not excluded; margin {100 * margin:.1f})"
    return f"NOT SHOWN (a drop of up to {100 * row.drop_bound:.1f} pts is not excluded; margin {100 * margin:.1f})"



def record_facts(base: Run, cand: Run, bench: str, ids: list[str]) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], bool]:
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


def missing_of(base: Run, cand: Run, bench: str) -> tuple[Missing, set[str]]:
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


def restrict(items: PairedItems, keep: set[str]) -> PairedItems:
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
