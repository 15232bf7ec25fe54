import math
import random
from fractions import Fraction
from itertools import product

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.integrate import quad
from statsmodels.stats.contingency_tables import StratifiedTable
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.proportion import proportion_confint

from engine import sequential, stats
from engine.records import ItemRecord


@pytest.mark.parametrize("seed", range(25))
def test_mcnemar_matches_scipy_and_statsmodels(seed):
    rng = random.Random(seed)
    b, c = rng.randint(0, 60), rng.randint(0, 60)
    if b + c == 0:
        b = 1
    got = stats.mcnemar_exact(b, c)
    ref = sm_mcnemar([[rng.randint(0, 100), b], [c, rng.randint(0, 100)]], exact=True)
    assert got.p_two_sided == pytest.approx(min(1.0, ref.pvalue), rel=1e-9)
    assert got.p_degraded == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue, rel=1e-12)
    assert got.p_improved == pytest.approx(scipy_stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue, rel=1e-12)


def test_mcnemar_known_values():
    # 10 losses, 0 wins: P(X >= 10 | n=10) = 2^-10.
    assert stats.mcnemar_exact(10, 0).p_degraded == pytest.approx(2**-10)
    assert stats.mcnemar_exact(10, 0).p_two_sided == pytest.approx(2 * 2**-10)
    assert stats.mcnemar_exact(0, 0).p_two_sided == 1.0
    # Symmetric flips are no evidence either way.
    assert stats.mcnemar_exact(20, 20).p_two_sided == pytest.approx(1.0)


def test_discordant_counts_per_item_direction():
    assert stats.discordant([1, 1, 0, 0, 0.5], [1, 0, 1, 0, 0.25]) == (2, 1)


@pytest.mark.parametrize("seed", range(10))
def test_holm_matches_statsmodels(seed):
    rng = random.Random(seed)
    p = [rng.random() ** 3 for _ in range(rng.randint(1, 9))]
    assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


# --- mid-p -----------------------------------------------------------------------------------------


def _exact_tail(b: int, n: int) -> Fraction:
    """P(X >= b), X ~ Binomial(n, 1/2), in exact rational arithmetic."""
    return Fraction(sum(math.comb(n, k) for k in range(b, n + 1)), 2**n)


@pytest.mark.parametrize("seed", range(20))
def test_mcnemar_midp_matches_exact_rational(seed):
    rng = random.Random(100 + seed)
    b, c = rng.randint(0, 80), rng.randint(0, 80)
    n = b + c
    got = stats.mcnemar_exact(b, c)
    if n == 0:
        assert got.p_degraded_midp == got.p_two_sided_midp == 1.0
        return
    pmf = Fraction(math.comb(n, b), 2**n)
    mid_deg = _exact_tail(b, n) - pmf / 2
    mid_imp = _exact_tail(c, n) - Fraction(math.comb(n, c), 2**n) / 2
    assert got.p_degraded_midp == pytest.approx(float(mid_deg), rel=1e-9, abs=1e-300)
    assert got.p_improved_midp == pytest.approx(float(mid_imp), rel=1e-9, abs=1e-300)
    assert got.p_two_sided_midp == pytest.approx(min(1.0, 2 * float(min(mid_deg, mid_imp))), rel=1e-9, abs=1e-300)
    assert got.p_degraded == pytest.approx(float(_exact_tail(b, n)), rel=1e-9, abs=1e-300)
    # The mid-p is never more conservative than the exact p.
    assert got.p_degraded_midp <= got.p_degraded


def test_mcnemar_vectorised_equals_scalar():
    rng = np.random.default_rng(3)
    b, c = rng.integers(0, 200, 500), rng.integers(0, 200, 500)
    vec = stats.mcnemar_p_degraded(b, c)
    for i in range(0, 500, 37):
        assert vec[i] == pytest.approx(stats.mcnemar_exact(int(b[i]), int(c[i])).p_degraded, rel=1e-12)


# --- intervals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(15))
def test_wilson_matches_statsmodels(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 3000)
    k = rng.randint(0, n)
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert stats.wilson_interval(k, n, 0.95) == pytest.approx((lo, hi), abs=1e-12)


def test_newcombe_matches_published_reference():
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (R package
    # contingencytables, chapter 8 tests): table [[59, 6], [16, 80]] -> p1 - p2 = -0.0621,
    # 95% CI (-0.1186, -0.0046) by the Newcombe square-and-add method. Rows = baseline, columns = candidate
    # here, and delta = candidate - baseline, so the interval comes out negated.
    lo, hi = stats.newcombe_paired_ci(59, 6, 16, 80, 0.95)
    assert lo == pytest.approx(0.0046, abs=5e-5)
    assert hi == pytest.approx(0.1186, abs=5e-5)
    # Swapping the roles of the runs mirrors the interval.
    assert stats.newcombe_paired_ci(59, 16, 6, 80) == pytest.approx((-hi, -lo), abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_newcombe_is_the_square_and_add_of_wilson_intervals(seed):
    rng = random.Random(seed)
    both, b, c, neither = (rng.randint(0, 60) for _ in range(4))
    n = both + b + c + neither
    if n == 0:
        return
    lo, hi = stats.newcombe_paired_ci(both, b, c, neither)
    delta = (c - b) / n
    assert lo <= delta <= hi
    l1, u1 = proportion_confint(both + b, n, method="wilson")
    l2, u2 = proportion_confint(both + c, n, method="wilson")
    # With phi clipped to [-1, 1] the interval lies between the phi = 1 and phi = -1 bounds.
    p1, p2 = (both + b) / n, (both + c) / n
    assert delta - ((p2 - l2) + (u1 - p1)) - 1e-12 <= lo <= delta - abs((p2 - l2) - (u1 - p1)) + 1e-12
    assert delta + abs((u2 - p2) - (p1 - l1)) - 1e-12 <= hi <= delta + (u2 - p2) + (p1 - l1) + 1e-12


def test_paired_bootstrap_matches_scipy():
    rng = np.random.default_rng(5)
    diffs = rng.choice([-1, -0.5, -0.25, 0, 0, 0, 0.25, 0.5], size=300)
    ours = stats.paired_bootstrap_ci(diffs, 0.95, n_resamples=4000, seed=1)
    ref = scipy_stats.bootstrap((diffs,), np.mean, confidence_level=0.95, n_resamples=4000, method="percentile", random_state=2)
    se = diffs.std() / math.sqrt(diffs.size)
    assert ours[0] == pytest.approx(ref.confidence_interval.low, abs=0.15 * se)
    assert ours[1] == pytest.approx(ref.confidence_interval.high, abs=0.15 * se)


# --- sign-flip permutation test ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_sign_flip_exact_matches_scipy_permutation_test(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 15))
    base = rng.integers(0, 5, n) / 4
    cand = np.clip(base + rng.choice([-0.5, -0.25, 0, 0.25], n), 0, 1)
    got = stats.sign_flip_test(cand - base)
    assert got.exact
    if np.all(cand == base):
        assert got.p_degraded == 1.0
        return

    def statistic(x, y, axis=-1):
        return np.sum(x - y, axis=axis)

    for alternative, ours in (("less", got.p_degraded), ("greater", got.p_improved), ("two-sided", got.p_two_sided)):
        ref = scipy_stats.permutation_test(
            (cand, base), statistic, permutation_type="samples", alternative=alternative, n_resamples=np.inf
        )
        assert ours == pytest.approx(ref.pvalue, rel=1e-9)


def test_sign_flip_monte_carlo_close_to_scipy():
    rng = np.random.default_rng(11)
    base = rng.integers(0, 5, 200) / 4
    cand = np.clip(base + rng.choice([-0.5, -0.25, 0, 0, 0.25], 200), 0, 1)
    got = stats.sign_flip_test(cand - base, n_resamples=20000, seed=3)
    assert not got.exact

    def statistic(x, y, axis=-1):
        return np.sum(x - y, axis=axis)

    ref = scipy_stats.permutation_test(
        (cand, base), statistic, permutation_type="samples", alternative="less", n_resamples=20000, random_state=4
    )
    assert got.p_degraded == pytest.approx(ref.pvalue, abs=0.01 + 4 * math.sqrt(ref.pvalue * (1 - ref.pvalue) / 20000))


# --- power and minimum detectable effect ------------------------------------------------------------


def test_mcnemar_critical_losses_is_the_exact_boundary():
    d = np.arange(0, 400)
    k = stats.mcnemar_critical_losses(d, 0.05)
    for di, ki in zip(d, k, strict=True):
        if ki <= di:
            assert scipy_stats.binomtest(int(ki), int(di), 0.5, alternative="greater").pvalue <= 0.05
        if ki >= 1 and ki - 1 <= di and di > 0:
            assert scipy_stats.binomtest(int(ki - 1), int(di), 0.5, alternative="greater").pvalue > 0.05


@pytest.mark.parametrize(("n", "psi"), [(1319, 0.2), (1319, 0.4), (12032, 0.1)])
def test_mcnemar_power_close_to_connor_normal_approximation(n, psi):
    # Connor (1987): n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2  =>  power for given n, psi, d.
    # Only at large n: on small tables the exact test is conservative and the normal figure too high.
    alpha, drop = 0.05, 0.6 * stats.mde_mcnemar(n, psi, 0.05)
    z_a = scipy_stats.norm.isf(alpha)
    connor = scipy_stats.norm.cdf((drop * math.sqrt(n) - z_a * math.sqrt(psi)) / math.sqrt(psi - drop**2))
    assert stats.mcnemar_power(n, psi, drop, alpha) == pytest.approx(connor, abs=0.06)


def test_mde_is_where_power_reaches_80_percent():
    for n, psi in ((150, 0.2), (1319, 0.3), (5000, 0.05)):
        mde = stats.mde_mcnemar(n, psi, 0.05)
        assert stats.mcnemar_power(n, psi, mde, 0.05) >= 0.8
        assert stats.mcnemar_power(n, psi, mde - 0.002, 0.05) < 0.8
    # More items, smaller detectable drop; more flips, larger.
    assert stats.mde_mcnemar(1319, 0.2, 0.05) < stats.mde_mcnemar(150, 0.2, 0.05)
    assert stats.mde_mcnemar(1319, 0.4, 0.05) > stats.mde_mcnemar(1319, 0.1, 0.05)
    # Three items cannot reach p < 0.05 even if all three flip to wrong.
    assert stats.mde_mcnemar(3, 0.2, 0.05) == float("inf")


@pytest.mark.parametrize(("n", "sd"), [(30, 0.3), (150, 0.25), (1319, 0.4)])
def test_mde_paired_t_matches_statsmodels(n, sd):
    effect = TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8, alternative="larger")
    assert stats.mde_paired_t(n, sd, 0.05) == pytest.approx(effect * sd, rel=1e-4)


# --- strata -----------------------------------------------------------------------------------------


def _pair_tables(b: int, c: int, both: int, neither: int) -> list[np.ndarray]:
    """One 2x2 table (run x right/wrong) per matched pair."""
    return (
        [np.array([[1, 0], [0, 1]])] * b
        + [np.array([[0, 1], [1, 0]])] * c
        + [np.array([[1, 0], [1, 0]])] * both
        + [np.array([[0, 1], [0, 1]])] * neither
    )


@pytest.mark.parametrize("seed", range(6))
def test_cmh_matched_pairs_matches_statsmodels(seed):
    rng = random.Random(seed)
    strata = [(rng.randint(0, 12), rng.randint(0, 12), rng.randint(0, 5), rng.randint(0, 5)) for _ in range(rng.randint(2, 5))]
    if sum(b + c for b, c, _, _ in strata) == 0:
        strata[0] = (1, 0, 0, 0)
    tables = [t for b, c, both, neither in strata for t in _pair_tables(b, c, both, neither)]
    ref = StratifiedTable(np.dstack(tables)).test_null_odds(correction=False)
    got = stats.cmh_matched_pairs([s[0] for s in strata], [s[1] for s in strata])
    assert got.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert got.p_two_sided == pytest.approx(ref.pvalue, rel=1e-9)
    # Proportional weights give back the unweighted test.
    sizes = [sum(s) for s in strata]
    weighted = stats.cmh_matched_pairs([s[0] for s in strata], [s[1] for s in strata], weights=[3 * n for n in sizes], n_by_stratum=sizes)
    assert weighted.statistic == pytest.approx(got.statistic, rel=1e-9)


def test_stratified_mean_proportional_allocation_is_the_plain_mean():
    rng = np.random.default_rng(2)
    values = {"a": rng.random(20), "b": rng.random(40), "c": rng.random(10)}
    est = stats.stratified_mean(values, {"a": 200, "b": 400, "c": 100})
    assert est.estimate == pytest.approx(np.concatenate(list(values.values())).mean())
    # No finite-population correction (items are a sample of questions, with generation noise).
    expected_var = sum((n / 700) ** 2 * values[s].var(ddof=1) / len(values[s]) for s, n in (("a", 200), ("b", 400), ("c", 100)))
    assert est.se == pytest.approx(math.sqrt(expected_var))
    assert est.covered == 1.0
    # A stratum with no sampled item is left out and reported.
    partial = stats.stratified_mean({"a": values["a"]}, {"a": 200, "z": 600})
    assert partial.covered == pytest.approx(0.25)


# --- canaries ---------------------------------------------------------------------------------------


def test_length_shift_matches_numpy_and_scipy():
    rng = np.random.default_rng(4)
    base = rng.integers(50, 400, 120).astype(float)
    cand = base * rng.uniform(0.9, 1.6, 120)
    got = stats.length_shift(base, cand)
    assert got.median_ratio == pytest.approx(float(np.median((cand + 1) / (base + 1))))
    assert got.p_longer == pytest.approx(scipy_stats.wilcoxon(cand, base, alternative="greater").pvalue)
    assert got.p_longer < 1e-6
    assert stats.length_shift(base, base).p_longer == 1.0


# --- Holm on many families ----------------------------------------------------------------------------


def test_holm_array_matches_statsmodels_row_by_row():
    rng = np.random.default_rng(8)
    p = rng.random((50, 8)) ** 3
    adjusted = stats.holm_array(p)
    for row, ours in zip(p, adjusted, strict=True):
        assert ours == pytest.approx(multipletests(row, method="holm")[1])


# --- sequential test --------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 1), (10, 2), (40, 35), (5, 30), (120, 80)])
def test_sequential_evalue_is_the_mixture_likelihood_ratio(b, c):
    a = stats.SEQUENTIAL_PRIOR_A
    prior_mass = scipy_stats.beta.sf(0.5, a, a)

    def integrand(p):
        return scipy_stats.beta.pdf(p, a, a) / prior_mass * p**b * (1 - p) ** c / 0.5 ** (b + c)

    ref, _ = quad(integrand, 0.5, 1, epsabs=0, epsrel=1e-10, limit=200)
    assert math.exp(float(stats.sequential_log_evalue(b, c))) == pytest.approx(ref, rel=1e-6)


def test_sequential_boundary_is_the_first_crossing():
    boundary = stats.sequential_boundary(300, 0.05 / 4)
    threshold = math.log(4 / 0.05)
    for t in range(1, 301):
        k = int(boundary[t])
        if k <= t:
            assert stats.sequential_log_evalue(k, t - k) >= threshold
        if 0 < k and k - 1 <= t:
            assert stats.sequential_log_evalue(k - 1, t - k + 1) < threshold


@pytest.mark.parametrize("t_max", [6, 11, 14])
def test_sequential_design_probabilities_by_enumerating_every_path(t_max):
    # Brute force over all 2^t loss/win sequences: P(reach the boundary at some look, or finish at or
    # above the final critical value) must be <= alpha, and the design p-value must be exact.
    alpha, alpha_seq = 0.2, 0.1  # large enough for the boundary to be reachable at small t
    boundary = stats.sequential_boundary(t_max, alpha_seq)
    critical = stats.sequential_final_critical(boundary, t_max, alpha)
    paths = np.array(list(product((0, 1), repeat=t_max)))
    losses = np.cumsum(paths, axis=1)
    reached = losses >= boundary[1:][None, :]
    size = np.mean(reached.any(axis=1) | (losses[:, -1] >= critical[t_max]))
    assert size <= alpha + 1e-12
    # Critical is the smallest such value: one fewer loss would exceed alpha.
    if critical[t_max] >= 1:
        assert np.mean(reached.any(axis=1) | (losses[:, -1] >= critical[t_max] - 1)) > alpha
    first = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, t_max + 1)
    for path in paths[:: max(1, len(paths) // 60)]:
        p, stop = stats.sequential_p_value(path, alpha_seq)
        path_losses = np.cumsum(path)
        hit = np.nonzero(path_losses >= boundary[1:])[0]
        if hit.size:
            assert stop == hit[0] + 1
            assert p == pytest.approx(np.mean(first <= stop), rel=1e-9)
        else:
            assert stop is None
            more = (first <= t_max) | ((first > t_max) & (losses[:, -1] >= path_losses[-1]))
            assert p == pytest.approx(np.mean(more), rel=1e-9)


def _record(item_id: str, score: float, sample: int = 0) -> ItemRecord:
    return ItemRecord(
        item_id=item_id, sample=sample, seed=0, prompt_hash="", completion="", prompt_tokens=1, completion_tokens=1,
        finish_reason="stop", truncated=False, answer=None, score=score, latency_s=0.0,
    )


@pytest.mark.parametrize("seed", range(5))
def test_monitor_stops_where_the_design_says_in_any_arrival_order(seed):
    rng = random.Random(seed)
    ids = [f"q{i}" for i in range(400)]
    base = {i: float(rng.random() < 0.6) for i in ids}
    # A clearly degraded candidate: many right answers turn wrong.
    cand = {i: (0.0 if base[i] and rng.random() < 0.4 else base[i] if rng.random() < 0.9 else 1 - base[i]) for i in ids}
    alpha_seq = 0.05 / 4
    monitor = sequential.Monitor("arith", 7, ids, base, 1, lambda recs: recs[0].score, alpha_seq, stats.SEQUENTIAL_PRIOR_A)
    arrivals = ids[:]
    rng.shuffle(arrivals)  # completion order has nothing to do with the design order
    stops = [i for i in arrivals if monitor.add(_record(i, cand[i]))]
    order = sorted(ids, key=lambda i: sequential.order_key(7, "arith", i))
    path, at, _ = sequential.loss_path(order, base, cand)
    _, stop = stats.sequential_p_value(path, alpha_seq)
    assert stop is not None and len(stops) == 1
    assert (monitor.discordant, monitor.losses, monitor.next) == (stop, sum(path[:stop]), at[stop - 1])
    # Repeated records (a resumed file) and items the baseline lacks change nothing.
    assert not monitor.add(_record(ids[0], cand[ids[0]]))
    assert not monitor.add(_record("not-in-baseline", 0.0))


def test_monitor_waits_for_every_sample_and_never_stops_for_no_change():
    ids = [f"q{i}" for i in range(300)]
    base = {i: 1.0 for i in ids}
    monitor = sequential.Monitor("b", 0, ids, base, 4, lambda recs: float(np.mean([r.score for r in recs])), 0.01, 10.0)
    for i in ids:
        for k in range(3):
            assert not monitor.add(_record(i, 1.0, k))
    assert monitor.next == 0  # no item complete yet
    # Fourth samples: every item equals the baseline -> no discordant pair, no stop.
    assert not any(monitor.add(_record(i, 1.0, 3)) for i in ids)
    assert monitor.next == 300 and monitor.discordant == 0 and not monitor.stopped
