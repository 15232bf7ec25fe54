"""Statistics 2 (issue 17): one coherent verdict, no silent partial runs, honest "no change".

Regression tests from the audit's constructed b/c tables, and seeded simulations of the promised rates.
Runs are written with the real records API (helpers from test_report); no engine.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import compare, stats
from engine.__main__ import main
from engine.grade.canaries import unanswered
from engine.grade.text import bench_details
from engine.pairing import PairedItems
from engine.records import read_run
from tests.test_report import _flips, _pair, _record, _spec, _write_run

ALPHA = 0.05


def _inside(ci) -> bool:
    return ci[0] <= 0 <= ci[1]


def _multi(tmp_path, tables: dict[str, tuple[int, int, int, int]], sizes: dict[str, dict[str, int]] | None = None):
    """One run pair with a bench per (n, both, b, c) table."""
    spec = {name: (t[0], 1, (sizes or {}).get(name, {})) for name, t in tables.items()}
    runs = []
    for side, label in ((0, "b"), (1, "c")):
        records = {}
        for name, (n, both, b, c) in tables.items():
            flips = _flips(n, both, b, c, seed=hash(name) % 1000)
            records[name] = [_record(f"q{i}", s) for i, s in enumerate(flips[side])]
        runs.append(read_run(_write_run(tmp_path / label, _spec(label, spec), records)))
    return runs


# --- 2. the interval answers the same question as the test ------------------------------------------


def test_degraded_never_with_an_interval_holding_zero_30_17(tmp_path):
    base, cand = _pair(tmp_path, *_flips(200, 60, 30, 17))
    row = compare.compare_runs(base, cand).benches[0]
    assert row.p_two_sided == pytest.approx(stats.mcnemar_exact(30, 17).p_two_sided)
    assert not row.verdict.startswith("DEGRADED") and _inside(row.delta_ci)


def test_40_20_among_7_benches_no_change_and_interval_holds_zero(tmp_path):
    others = ("gsm8k", "mmlu_pro", "gpqa", "tradequiz", "ifeval", "humaneval")
    tables = {"arith": (400, 150, 40, 20)} | {name: (300, 100, 10, 10) for name in others}
    cmp = compare.compare_runs(*_multi(tmp_path, tables))
    row = cmp.benches[0]
    assert row.p_two_sided < 0.05 and row.p_holm >= 0.05
    assert row.verdict.startswith("no change detected") and _inside(row.delta_ci)
    assert row.ci_level == pytest.approx(1 - 0.05 / 7)


def test_4_0_at_smoke_is_no_change_with_zero_inside(tmp_path):
    base, cand = _pair(tmp_path, *_flips(150, 50, 4, 0))
    row = compare.compare_runs(base, cand).benches[0]
    assert row.verdict.startswith("no change detected") and _inside(row.delta_ci)


def test_unequal_strata_decide_with_the_weighted_statistic(tmp_path):
    # 10 items of each category run, but the split holds 950 "big" and 50 "small": all losses are in
    # "big". Unweighted 8/4 over 20 items says nothing; weighted to the split they are most of the mass.
    cats = ["big"] * 100 + ["small"] * 100
    big = _flips(100, 40, 14, 0, seed=1)
    small = _flips(100, 40, 0, 12, seed=2)
    base, cand = _pair(tmp_path, big[0] + small[0], big[1] + small[1], categories=cats, strata_sizes={"big": 950, "small": 50})
    row = compare.compare_runs(base, cand).benches[0]
    assert stats.mcnemar_exact(14, 12).p_two_sided > 0.5  # the unweighted subset shows nothing
    assert row.test.startswith("McNemar weighted")
    assert row.delta == pytest.approx(row.full_split.delta)
    assert row.verdict == "DEGRADED" and row.delta_ci[1] < 0


@pytest.mark.parametrize("seed", range(40))
def test_interval_excludes_zero_exactly_when_there_is_a_verdict(seed):
    rng = np.random.default_rng(seed)
    family = int(rng.integers(1, 9))
    tests = []
    for _ in range(family):
        n = int(rng.integers(5, 400))
        kind = rng.integers(3)
        x = (rng.random(n) < 0.6).astype(float)
        y = np.where(rng.random(n) < rng.uniform(0.02, 0.3), 1 - x, x)
        y = np.where(rng.random(n) < rng.uniform(0, 0.1), 0.0, y)  # some real drops
        if kind == 0:
            b, c = int(np.sum(x > y)), int(np.sum(y > x))
            tests.append(stats.exact_mcnemar_test(b, c, n))
        elif kind == 1:
            labels = np.where(rng.random(n) < 0.5, "a", "b")
            w = np.where(labels == "a", 0.8, 0.2)
            w = w / np.array([np.sum(labels == s) for s in labels])
            tests.append(stats.weighted_mcnemar(y - x, w / w.sum(), labels))
        else:
            tests.append(stats.paired_t(y - x + rng.normal(0, 0.05, n) * (rng.random(n) < 0.3)))
    decision = stats.decide_family([t.p_two for t in tests], [t.p_min for t in tests], ALPHA)
    for t, rejected, level in zip(tests, decision.rejected, decision.level, strict=True):
        assert (not _inside(t.interval(1 - level))) == rejected


# --- 5. Holm family and verdict sides -------------------------------------------------------------------


def test_a_bench_that_cannot_reach_its_level_costs_the_big_one_nothing(tmp_path):
    # 10 items with 2 discordant: smallest p 0.5, never significant. The 1319-item bench at p ~ 0.03
    # would fail Holm over 2 (needs < 0.025); with the small one left out it is tested at 0.05.
    tables = {"gsm8k": (1319, 500, 60, 38), "gpqa": (10, 4, 1, 1)}
    cmp = compare.compare_runs(*_multi(tmp_path, tables))
    big, tiny = cmp.benches
    assert 0.025 < big.p_two_sided < 0.05
    assert not tiny.in_family and "not tested" in tiny.verdict and _inside(tiny.delta_ci)
    assert sum(m.tested for m in cmp.families[0].members) == 1 and big.verdict == "DEGRADED"
    assert "left out of the Holm family" in compare.format_verdict(cmp)


def test_improvement_and_degradation_are_one_two_sided_decision(tmp_path):
    base, cand = _pair(tmp_path, *_flips(300, 100, 5, 19))
    row = compare.compare_runs(base, cand).benches[0]
    assert row.verdict == "IMPROVED" and row.p_two_sided == stats.mcnemar_exact(5, 19).p_two_sided


def test_a_a_verdict_rate_across_8_benches_is_at_most_alpha():
    from bench_kernels import power_sim

    rng = np.random.default_rng(17)
    sims = 3000
    ns = [30, 150, 150, 500, 1319, 1319, 3600, 12000]
    psis = [0.02, 0.05, 0.2, 0.1, 0.02, 0.05, 0.1, 0.2]
    rate = power_sim.family_verdict_rate(ns, psis, [0.0] * 8, sims, rng)
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)
    # ...and the decision still finds a real drop.
    assert power_sim.family_verdict_rate(ns, psis, [0.0] * 4 + [0.03] + [0.0] * 3, 1000, rng) > 0.7


# --- coverage under A/A with stratified subsets ----------------------------------------------------------


def test_interval_coverage_under_a_a_with_stratified_subsets():
    rng = np.random.default_rng(21)
    sims = 2000
    sizes = {"a": 3000, "b": 500, "c": 200}
    take = {"a": 60, "b": 50, "c": 40}
    labels = np.array([s for s, k in take.items() for _ in range(k)])
    total = sum(sizes.values())
    w = np.array([sizes[s] / (total * take[s]) for s in labels])
    covered = 0
    for _ in range(sims):
        psi = rng.choice([0.02, 0.05, 0.2])
        flip = rng.random(labels.size) < psi
        d = np.where(flip, np.where(rng.random(labels.size) < 0.5, 1.0, -1.0), 0.0)
        covered += _inside(stats.weighted_mcnemar(d, w, labels).interval(0.95))
    assert covered / sims >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / sims)


@pytest.mark.parametrize(("n", "psi", "drop"), [(150, 0.05, 0.0), (150, 0.2, 0.05), (1319, 0.1, 0.03), (1319, 0.3, 0.1)])
def test_exact_interval_coverage_with_and_without_a_drop(n, psi, drop):
    from bench_kernels import power_sim

    rng = np.random.default_rng(int(n * psi * 100))
    b, c = power_sim.flip_counts(n, psi, drop, 4000, rng)
    lo, hi = stats.binary_delta_interval(b, c, np.full(b.size, n), 0.95)
    assert np.mean((lo <= -drop) & (-drop <= hi)) >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / 4000)


def test_no_finite_population_correction():
    values = {"a": np.array([0.0, 1.0, 1.0, 0.0]), "b": np.array([1.0, 0.0])}
    # The whole split was sampled, and still the items are a sample of questions: the SE is not 0.
    assert stats.stratified_mean(values, {"a": 4, "b": 2}).se > 0


# --- 3. honest "no change": non-inferiority and margin ------------------------------------------------


def test_margin_gives_equivalent_or_not_shown(tmp_path):
    base, cand = _pair(tmp_path, *_flips(1000, 400, 20, 18))
    row = compare.compare_runs(base, cand, margin=0.05).benches[0]
    assert row.verdict.startswith("EQUIVALENT") and row.drop_bound < 0.05
    row = compare.compare_runs(base, cand, margin=0.005).benches[0]
    assert row.verdict.startswith("NOT SHOWN")
    assert main(["compare", str(base.dir), str(cand.dir), "--margin", "5"]) == 0


def test_planned_power_and_margin():
    # churn 1 and a discordance at least the drop: the classic one-sided figure at alpha / 2.
    assert stats.planned_power(1319, 0.2, 0.03, 0.05, churn=1.0) == pytest.approx(stats.mcnemar_power(1319, 0.2 + 0.03, 0.03, 0.025), rel=1e-9)
    # Churn costs power; shared seeds (low discordance) buy it back.
    assert stats.planned_power(1319, 0.05, 0.02, 0.05, churn=3.0) < stats.planned_power(1319, 0.05, 0.02, 0.05, churn=1.0)
    assert stats.planned_power(1319, 0.02, 0.02, 0.05) > stats.planned_power(1319, 0.2, 0.02, 0.05)
    mde = stats.planned_mde(1319, 0.05, 0.05)
    assert stats.planned_power(1319, 0.05, mde, 0.05) == pytest.approx(0.8, abs=1e-3)
    # The planned margin: an unchanged candidate's lower end beats -M in 80% of simulated runs.
    from bench_kernels import power_sim

    rng = np.random.default_rng(3)
    margin = stats.planned_margin(400, 0.05, 0.05)
    b, c = power_sim.flip_counts(400, 0.05, 0.0, 4000, rng)
    lo, _ = stats.binary_delta_interval(b, c, np.full(b.size, 400), 0.95)
    assert np.mean(lo > -margin) == pytest.approx(0.8, abs=0.04)


# --- 4. canaries and categories controlled for multiplicity ----------------------------------------------


def test_canary_family_wise_rate_over_8_unchanged_benches():
    from bench_kernels import power_sim

    rng = np.random.default_rng(5)
    sims = 4000
    rate = power_sim.canary_family_rate([150, 150, 300, 500, 1319, 1319, 3000, 198], [0.02, 0.05, 0.1, 0.2, 0.05, 0.3, 0.1, 0.02], sims, rng)
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)


def test_canaries_are_holm_adjusted_across_benches(tmp_path):
    tables = {name: (200, 80, 5, 5) for name in ("arith", "gsm8k", "gpqa")}
    base, cand = _multi(tmp_path, tables)
    for i, bench in enumerate(tables):  # a few more capped items on each bench
        for rec in cand.records[bench][: 8 + i]:
            rec.truncated = True
    cmp = compare.compare_runs(base, cand, signals=("truncation",))  # the family alone: all of alpha
    ps = [r.truncation.p_more for r in cmp.benches]
    assert [r.truncation.p_holm for r in cmp.benches] == pytest.approx(stats.holm(ps))
    assert all(r.truncation.flagged == (r.truncation.p_holm < ALPHA) for r in cmp.benches)


def test_a_small_category_is_not_named_by_chance(tmp_path):
    cats = ["big"] * 195 + ["tiny"] * 5
    big = _flips(195, 80, 6, 6, seed=3)
    tiny = ([1.0] * 4 + [0.0], [0.0] * 5)  # 4 of 5 lost: delta -80 pts, p = 0.125
    base, cand = _pair(tmp_path, big[0] + tiny[0], big[1] + tiny[1], categories=cats)
    row = compare.compare_runs(base, cand).benches[0]
    assert row.strata.moved_most == ""
    assert "no category moved beyond chance" in compare.format_verdict(compare.compare_runs(base, cand))


# --- 8. unparsed answers / scorer failures ----------------------------------------------------------------


def test_unparsed_answers_are_their_own_canary(tmp_path):
    base, cand = _pair(tmp_path, *_flips(200, 20, 0, 0))
    for rec in cand.records["arith"][::4]:  # the candidate stops giving an answer on a quarter of the items
        rec.answer = None
    cmp = compare.compare_runs(base, cand)
    row = cmp.benches[0]
    assert row.unparsed.up == 50 and row.unparsed.down == 0 and row.unparsed.flagged
    assert any("no answer" in f for f in cmp.reasons)
    rec = _record("q", 0.0)
    rec.extra = {"check_timed_out": True}
    assert unanswered(rec)


# --- 9. b = c = 0 ---------------------------------------------------------------------------------------


def test_no_discordant_item_prints_bit_identical(tmp_path):
    base, cand = _pair(tmp_path, *_flips(150, 60, 0, 0))
    cmp = compare.compare_runs(base, cand)
    row = cmp.benches[0]
    assert row.identical and row.verdict.startswith("no change: bit-identical on 150 items")
    table = compare.format_verdict(cmp)
    assert "bit-identical" in table and "[+0.0, +0.0]" not in table
    cand.records["arith"][0].completion = "other text, same score"
    assert compare.compare_runs(base, cand).benches[0].verdict.startswith("no change: same score on 150 items")


# --- 1. a partial run is never graded as complete ---------------------------------------------------------


def test_killed_run_is_incomplete_not_no_change(tmp_path, capsys):
    # The audit's case: the candidate lost 6 items and was killed before 6 other (slow) items; on the
    # items both have the table is 6/0, which alone would read "no change detected".
    x, y = _flips(150, 50, 6, 0, seed=4)
    base, cand = _pair(tmp_path, x, y)
    lacking = {r.item_id for r in cand.records["arith"] if r.score == 0.0 and base.records["arith"][int(r.item_id[1:])].score == 1.0}
    kept = [r for r in cand.records["arith"] if r.item_id not in lacking]
    cand.records["arith"] = kept
    cmp = compare.compare_runs(base, cand)
    row = cmp.benches[0]
    assert row.verdict.startswith("INCOMPLETE") and (cmp.decision == "INCOMPLETE") and not (cmp.decision == "DEGRADED")
    assert row.missing.cand_items == 6 and row.missing.potential_losses == 6
    assert cmp.headline.startswith("INCOMPLETE")
    allowed = compare.compare_runs(base, cand, allow_incomplete=True)
    assert not (allowed.decision == "INCOMPLETE") and allowed.benches[0].missing.excused == "--allow-incomplete"
    assert "graded despite missing data" in compare.format_verdict(allowed)
    # On disk: rewrite the candidate without those items; the CLI exits 5, or grades with the flag.
    cand_dir = _write_run(tmp_path / "killed", cand.spec, {"arith": kept})
    assert main(["compare", str(base.dir), str(cand_dir)]) == 5
    assert main(["compare", str(base.dir), str(cand_dir), "--allow-incomplete"]) in (0, 1)
    capsys.readouterr()


def test_missing_samples_are_incomplete(tmp_path):
    spec = {"arith": (20, 4, {})}
    base_recs = [_record(f"q{i}", 1.0, sample=k) for i in range(20) for k in range(4)]
    cand_recs = [_record(f"q{i}", 1.0, sample=k) for i in range(20) for k in range(4) if not (i == 3 and k >= 2)]
    base = read_run(_write_run(tmp_path / "b", _spec("b", spec), {"arith": base_recs}))
    cand = read_run(_write_run(tmp_path / "c", _spec("c", spec), {"arith": cand_recs}))
    row = compare.compare_runs(base, cand).benches[0]
    assert row.verdict.startswith("INCOMPLETE") and row.missing.cand_samples == 2
    # Allowed: the partly sampled item is left out rather than scored on 2 of its 4 samples.
    assert compare.compare_runs(base, cand, allow_incomplete=True).benches[0].n == 19


def test_baseline_short_of_its_spec_is_incomplete(tmp_path):
    x, y = _flips(100, 40, 3, 3)
    base, cand = _pair(tmp_path, x, y)
    base.records["arith"] = base.records["arith"][:90]
    assert compare.compare_runs(base, cand).benches[0].missing.base_items == 10


# --- 7. avg@k as the primary per-item value -------------------------------------------------------------


def test_avg_at_k_is_primary_where_a_bench_draws_k_samples():
    rng = np.random.default_rng(8)
    n, k = 40, 4
    p = rng.random(n)
    base_avg = rng.binomial(k, p) / k
    cand_avg = rng.binomial(k, np.clip(p - 0.25, 0, 1)) / k
    items = PairedItems(
        bench="aime", ids=[f"q{i}" for i in range(n)], base=(base_avg > 0.5).astype(float), cand=(cand_avg > 0.5).astype(float),
        base_trunc=np.zeros(n), cand_trunc=np.zeros(n), base_len=np.ones(n), cand_len=np.ones(n), strata=[""] * n,
        categories=[""] * n, n_baseline=n, samples=k, per_item=f"aggregate() of {k} samples", length_measure="completion tokens",
        base_avg=base_avg, cand_avg=cand_avg,
    )  # fmt: skip
    var = (base_avg * (1 - base_avg) * k / (k - 1), cand_avg * (1 - cand_avg) * k / (k - 1))
    row = compare.compare_bench(items, alpha=ALPHA, within_var=var)
    assert row.per_item.startswith("mean of 4 samples (avg@4)")
    assert row.delta == pytest.approx(cand_avg.mean() - base_avg.mean())
    assert row.maj_at_k == pytest.approx((items.base.mean(), items.cand.mean()))
    assert row.within_item_var == pytest.approx((var[0].mean(), var[1].mean()))
    assert any("within-item variance" in line for line in bench_details(row))
    maj = compare.compare_bench(items, alpha=ALPHA, primary=compare.MAJ)
    assert maj.delta == pytest.approx(items.cand.mean() - items.base.mean()) and maj.avg_at_k is not None


@pytest.mark.parametrize("n", [30, 150])
def test_paired_t_a_a_rate_on_avg_at_4(n):
    rng = np.random.default_rng(n)
    sims = 2000
    rejected = 0
    for _ in range(sims):
        accuracy = rng.beta(0.7, 0.7, n)
        d = (rng.binomial(4, accuracy) - rng.binomial(4, accuracy)) / 4
        rejected += stats.paired_t(d).p_two < ALPHA
    assert rejected / sims <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)
