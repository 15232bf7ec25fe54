"""The three tiers: which items each runs, stable and stratified, and the reweighted standard-tier estimate."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from conftest import need_shared_data

from benches import Item, allocate, gsm8k, mmlu_pro, select_items
from engine.errors import UserError
from engine.stats import stratified_mean

MMLU_PRO_SIZES = {
    "biology": 717, "business": 789, "chemistry": 1132, "computer science": 410, "economics": 844,
    "engineering": 969, "health": 818, "history": 381, "law": 1101, "math": 1351, "other": 924,
    "philosophy": 499, "physics": 1299, "psychology": 798,
}  # fmt: skip


def population(sizes: dict[str, int]) -> list[Item]:
    """Items clustered by category, as the real mmlu_pro file is."""
    return [Item(id=f"{cat}-{k}", question="", target="", category=cat) for cat, n in sizes.items() for k in range(n)]


@pytest.fixture(scope="module")
def mmlu_items() -> list[Item]:
    return mmlu_pro.load(need_shared_data("mmlu_pro/test.jsonl").parent.parent)


def test_standard_runs_a_proportional_30_percent_slice_of_mmlu_pro(mmlu_items):
    chosen = select_items(mmlu_items, "standard", "mmlu_pro", 0)
    assert len(chosen) == 3600
    counts = Counter(i.category for i in chosen)
    for category, size in MMLU_PRO_SIZES.items():
        assert abs(counts[category] - 3600 * size / 12032) < 1, category
    assert len({i.id for i in chosen}) == 3600


def test_smoke_runs_150_with_every_category(mmlu_items):
    chosen = select_items(mmlu_items, "smoke", "mmlu_pro", 0)
    assert len(chosen) == 150
    counts = Counter(i.category for i in chosen)
    assert set(counts) == set(MMLU_PRO_SIZES)
    for category, size in MMLU_PRO_SIZES.items():
        assert abs(counts[category] - 150 * size / 12032) < 1, category


def test_a_prefix_of_the_selection_keeps_the_strata(mmlu_items):
    # The file is sorted by category: a --limit 30 prefix must not be 30 business questions.
    first = Counter(i.category for i in select_items(mmlu_items, "smoke", "mmlu_pro", 0)[:30])
    assert all(abs(first[cat] - 30 * size / 12032) < 1.5 for cat, size in MMLU_PRO_SIZES.items()), first


def test_selection_is_a_pure_function_of_tier_bench_data_and_seed(mmlu_items):
    ids = [i.id for i in select_items(mmlu_items, "smoke", "mmlu_pro", 0)]
    copy = [Item(**{f: getattr(i, f) for f in i.__struct_fields__}) for i in mmlu_items]
    assert [i.id for i in select_items(copy, "smoke", "mmlu_pro", 0)] == ids
    assert [i.id for i in select_items(mmlu_items, "smoke", "mmlu_pro", 1)] != ids
    assert [i.id for i in select_items(mmlu_items, "smoke", "other_bench", 0)] != ids
    edited = [*mmlu_items[:-1], Item(id=mmlu_items[-1].id, question="edited", target="A", category="engineering")]
    assert [i.id for i in select_items(edited, "smoke", "mmlu_pro", 0)] != ids  # other data, other draw
    standard = {i.id for i in select_items(mmlu_items, "standard", "mmlu_pro", 0)}
    assert standard != set(ids) and len(standard) == 3600


def test_each_stratum_keeps_split_order(mmlu_items):
    position = {item.id: k for k, item in enumerate(mmlu_items)}
    chosen = select_items(mmlu_items, "standard", "mmlu_pro", 0)
    for category in MMLU_PRO_SIZES:
        ranks = [position[i.id] for i in chosen if i.category == category]
        assert ranks == sorted(ranks)


def test_cheap_benches_and_full_tier_run_whole():
    items = population({"a": 300, "b": 100})
    assert select_items(items, "full", "mmlu_pro", 0) == items
    assert select_items(items, "standard", "gsm8k", 0) == items
    assert select_items(items[:120], "smoke", "gsm8k", 0) == items[:120]  # fewer than 150: all of them
    with pytest.raises(UserError, match="--tier quick: unknown tier"):
        select_items(items, "quick", "gsm8k", 0)


def test_gsm8k_standard_is_the_whole_split():
    items = gsm8k.load(need_shared_data("gsm8k/test.jsonl").parent.parent)
    assert select_items(items, "standard", "gsm8k", 0) == items
    smoke = select_items(items, "smoke", "gsm8k", 0)
    assert len(smoke) == 150 and smoke == select_items(items, "smoke", "gsm8k", 0)


@pytest.mark.parametrize(
    "sizes,n",
    [
        (MMLU_PRO_SIZES, 3600),
        (MMLU_PRO_SIZES, 150),
        ({"big": 2000, "tiny": 3, "one": 1}, 150),
        ({"a": 5, "b": 5, "c": 5}, 4),  # too small for two per stratum: plain proportional
        ({None: 1319}, 150),
    ],
)
def test_allocation_is_proportional_with_every_stratum_seen(sizes, n):
    counts = allocate(sizes, n)
    assert sum(counts.values()) == n
    assert all(0 <= counts[c] <= sizes[c] for c in sizes)
    if n >= 2 * len(sizes):
        assert all(counts[c] >= min(2, sizes[c]) for c in sizes)
    total = sum(sizes.values())
    for c in sizes:
        assert counts[c] <= max(min(2, sizes[c]), math.ceil(n * sizes[c] / total)) + 1


# ----------------------------------------------------------------------------------------- reweighting


def simulate(sizes: dict[str, int], accuracy: dict[str, float], tier: str, bench: str, reps: int):
    """(true split accuracy, [(reweighted estimate, its SE, unweighted mean)] over `reps` selection seeds)."""
    rng = random.Random(0)
    items = population(sizes)
    correct = {i.id: float(rng.random() < accuracy[i.category]) for i in items}
    truth = sum(correct.values()) / len(items)
    draws = []
    for seed in range(reps):
        chosen = select_items(items, tier, bench, seed)
        by_stratum: dict[str, list[float]] = {}
        for item in chosen:
            by_stratum.setdefault(item.category, []).append(correct[item.id])
        estimate = stratified_mean(by_stratum, sizes)
        draws.append((estimate.estimate, estimate.se, sum(correct[i.id] for i in chosen) / len(chosen)))
    return truth, draws


def mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_reweighted_standard_estimate_is_unbiased_with_honest_se():
    # Accuracy differing strongly by category, so a wrong weighting would show.
    accuracy = {cat: 0.1 + 0.8 * k / 13 for k, cat in enumerate(sorted(MMLU_PRO_SIZES))}
    truth, draws = simulate(MMLU_PRO_SIZES, accuracy, "standard", "mmlu_pro", reps=200)
    estimates = [d[0] for d in draws]
    mean, sd = mean_sd(estimates)
    assert abs(mean - truth) < 4 * sd / math.sqrt(len(estimates))
    reported_se = sum(d[1] for d in draws) / len(draws)
    # No finite-population correction (by design: the split is a sample of questions and each item's
    # value carries generation noise), so against this fixed-outcome population the SE is larger than
    # the spread by 1/sqrt(1 - n/N): conservative, never too small.
    fpc = math.sqrt(1 - 3600 / sum(MMLU_PRO_SIZES.values()))
    assert 0.85 < reported_se * fpc / sd < 1.15
    covered = sum(abs(est - truth) <= 1.96 * se * fpc for est, se, _ in draws) / len(draws)
    assert 0.89 <= covered <= 0.995  # with the correction put back, the nominal 95% for this population
    assert sum(abs(est - truth) <= 1.96 * se for est, se, _ in draws) / len(draws) >= covered


def test_reweighting_removes_the_bias_of_oversampled_small_strata():
    # Two items per stratum at least: the tiny strata are oversampled 10x, and their items are all right.
    sizes = {"big": 2000, "t1": 3, "t2": 3, "t3": 3}
    accuracy = {"big": 0.2, "t1": 1.0, "t2": 1.0, "t3": 1.0}
    truth, draws = simulate(sizes, accuracy, "smoke", "tradequiz", reps=300)
    reweighted, sd = mean_sd([d[0] for d in draws])
    unweighted, sd_unweighted = mean_sd([d[2] for d in draws])
    assert abs(reweighted - truth) < 4 * sd / math.sqrt(len(draws))
    # The simulation has the power to see a bias: the plain mean is off by many Monte-Carlo SEs.
    assert unweighted - truth > 8 * sd_unweighted / math.sqrt(len(draws))
