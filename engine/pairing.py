"""Items aligned by id between two runs, and each item's one value from its samples.

The per-item rule comes from the run's BenchSpec (`per_item`), never from bench code, so any two
runs on disk can be compared with nothing but records and statistics:
  mean      the mean of the sample scores (avg@k; pass@1 for code benches)
  majority  maj@k: the samples vote by their records' `vote_key`; samples without an answer
            (vote_key None) do not vote; the item's value is the score of the winning answer, and a
            tie between answers counts as the mean of the tied answers' scores (the expected value of
            breaking the tie at random; never "whatever sample 0 said"). No answer at all: 0.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import numpy as np

from engine import stats
from engine.records import ItemRecord, Run, answered
from engine.spec import BenchSpec

StratumOf = Callable[[ItemRecord], "str | None"]


def category_of(record: ItemRecord) -> str | None:
    return record.category


def grouped(records: list[ItemRecord]) -> dict[str, list[ItemRecord]]:
    """item id -> its records (error records left out), in sample order."""
    out: dict[str, list[ItemRecord]] = {}
    for rec in sorted(answered(records), key=lambda r: r.sample):
        out.setdefault(rec.item_id, []).append(rec)
    return out


def mean_value(records: list[ItemRecord]) -> float:
    return stats.mean([r.score for r in records])


def majority_value(records: list[ItemRecord]) -> float:
    # A sample without an answer votes for "no answer" (scored 0): blanks do not abstain, or one answer
    # and three blanks would score maj@4 = 1 (audit defect 8).
    counts: dict[str | None, list[float]] = {}
    for rec in records:
        counts.setdefault(rec.vote_key, []).append(rec.score if rec.vote_key is not None else 0.0)
    if not counts:
        return 0.0
    top = max(len(scores) for scores in counts.values())
    tied = [stats.mean(scores) for scores in counts.values() if len(scores) == top]
    return float(sum(tied) / len(tied))


def item_value_fn(rule: str) -> Callable[[list[ItemRecord]], float]:
    if rule == "majority":
        return majority_value
    if rule == "mean":
        return mean_value
    raise ValueError(f"unknown per-item rule {rule!r}")


def per_item_values(bench: BenchSpec, records: list[ItemRecord]) -> dict[str, float]:
    value = item_value_fn(bench.per_item)
    return {item: float(value(recs)) for item, recs in grouped(records).items()}


def describe_rule(bench: BenchSpec) -> str:
    if bench.per_item == "majority":
        return f"majority vote of {bench.samples} samples (maj@{bench.samples}; ties: mean of the tied answers' scores)"
    if bench.samples > 1:
        return f"mean of {bench.samples} samples (avg@{bench.samples})"
    return "1 sample"


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
    # Mean of the sample scores (avg@k), shown beside maj@k.
    base_avg: np.ndarray | None = None
    cand_avg: np.ndarray | None = None


def bench_spec(run: Run, bench: str) -> BenchSpec | None:
    return next((b for b in run.spec.benches if b.name == bench), None)


def pair_items(base: Run, cand: Run, bench: str, stratum_of: StratumOf = category_of) -> PairedItems:
    spec = bench_spec(cand, bench) or bench_spec(base, bench)
    if spec is None:
        raise ValueError(f"bench {bench!r} is in neither run")
    base_groups = grouped(base.records.get(bench, []))
    cand_groups = grouped(cand.records.get(bench, []))
    value = item_value_fn(spec.per_item)
    ids = [i for i in base_groups if i in cand_groups]
    think = cand.spec.think

    def length(recs: list[ItemRecord]) -> float:
        return stats.mean([float(r.reasoning_tokens if think else r.completion_tokens) for r in recs])

    def column(groups: dict[str, list[ItemRecord]], fn) -> np.ndarray:
        return np.array([fn(groups[i]) for i in ids], dtype=float)

    voting = spec.per_item == "majority"
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
        samples=spec.samples,
        per_item=describe_rule(spec),
        length_measure="reasoning tokens" if think else "completion tokens",
        base_avg=column(base_groups, mean_value) if voting else None,
        cand_avg=column(cand_groups, mean_value) if voting else None,
    )
