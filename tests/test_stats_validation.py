"""Simulation checks of the error rates the verdicts promise (the same code as bench_kernels/power_sim.py,
fewer simulations). Tolerances are Monte Carlo error: the rate must stay below alpha + 3 standard errors."""

import math

import numpy as np
import pytest

from bench_kernels import power_sim
from engine import stats

ALPHA = 0.05
SIMS = 4000
MC_SLACK = 3 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)  # 0.010


@pytest.mark.parametrize("n", [30, 150, 1319, 12000])
@pytest.mark.parametrize("psi", [0.1, 0.2, 0.4])
def test_exact_mcnemar_false_positive_rate(n, psi):
    rng = np.random.default_rng(n * 10 + int(100 * psi))
    rate, _ = power_sim.reject_rate_mcnemar(n, psi, 0.0, SIMS, rng)
    assert rate <= ALPHA + MC_SLACK
    # The exact size (no Monte Carlo) is at most alpha, and the simulation agrees with it.
    size = stats.mcnemar_power(n, psi, 0.0, ALPHA)
    assert size <= ALPHA
    assert rate == pytest.approx(size, abs=4 * math.sqrt(size * (1 - size) / SIMS) + 1e-3)


def test_mcnemar_has_power_where_it_should():
    # The FPR tests above would pass for a test that never rejects: this one would not.
    rng = np.random.default_rng(1)
    for n, psi, drop in ((1319, 0.2, 0.05), (12032, 0.2, 0.02), (150, 0.1, 0.05)):
        rate, _ = power_sim.reject_rate_mcnemar(n, psi, drop, SIMS, rng)
        exact = stats.mcnemar_power(n, psi, drop, ALPHA)
        assert rate == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / SIMS) + 1e-3)
    # At the quoted minimum detectable effect the simulated power is 80%.
    mde = stats.mde_mcnemar(1319, 0.2, ALPHA)
    rate, _ = power_sim.reject_rate_mcnemar(1319, 0.2, mde, SIMS, rng)
    assert rate == pytest.approx(0.8, abs=4 * math.sqrt(0.16 / SIMS) + 0.01)


def test_holm_family_wise_rate_over_8_benches():
    rng = np.random.default_rng(2)
    ns = [30, 150, 150, 500, 1319, 1319, 3000, 12000]
    psis = [0.4, 0.1, 0.3, 0.25, 0.2, 0.4, 0.15, 0.2]
    assert power_sim.family_rate_holm(ns, psis, [0.0] * 8, SIMS, rng) <= ALPHA + MC_SLACK
    # Two of the eight benches truly drop: the other six are still protected.
    drops = [0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.02]
    assert power_sim.family_rate_holm(ns, psis, drops, SIMS, rng) <= ALPHA + MC_SLACK


@pytest.mark.parametrize(("n", "psi"), [(30, 0.4), (150, 0.2), (1319, 0.1), (1319, 0.4), (12000, 0.2)])
def test_sequential_design_false_positive_rate_peeking_after_every_item(n, psi):
    rng = np.random.default_rng(n + int(1000 * psi))
    sims = 2000 if n < 5000 else 800
    rate, early, used = power_sim.sequential_rates(n, psi, 0.0, sims, rng)
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)
    # The early looks alone spend at most their share (Ville's inequality).
    assert early <= power_sim.sequential.SHARE * ALPHA + 3 * math.sqrt(ALPHA / sims)
    assert used > 0.95  # under no change it practically never stops


def test_sequential_design_with_holm_over_8_benches():
    rng = np.random.default_rng(3)
    per_bench = [power_sim.sequential_rates(n, 0.25, 0.0, 1500, rng, family=8)[0] for n in (150, 1319, 1319, 500, 3000, 150, 800, 200)]
    assert 1 - float(np.prod([1 - r for r in per_bench])) <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 1500)


def test_sequential_design_stops_early_on_real_drops_without_losing_power():
    rng = np.random.default_rng(4)
    rate, early, used = power_sim.sequential_rates(1319, 0.2, 0.05, 2000, rng)
    fixed = stats.mcnemar_power(1319, 0.2, 0.05, ALPHA)
    assert rate >= fixed - 0.02
    assert early > 0.7 and used < 0.75
    rate, early, used = power_sim.sequential_rates(1319, 0.2, 0.20, 500, rng)
    assert rate == 1.0 and used < 0.15


def test_sign_flip_false_positive_rate_on_avg_at_4():
    rng = np.random.default_rng(5)
    sims = 800
    rate = power_sim.sign_flip_rate(40, 4, sims, rng, n_resamples=499)
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)


@pytest.mark.parametrize(("n", "psi", "drop"), [(30, 0.2, 0.0), (150, 0.2, -0.05), (1319, 0.3, 0.02)])
def test_newcombe_interval_coverage(n, psi, drop):
    rng = np.random.default_rng(6)
    sims = 2000
    p_loss = (psi + drop) / (2 * psi)
    base_right = 0.5
    covered = 0
    for b, c in zip(*power_sim.flip_counts(n, psi, drop, sims, rng), strict=True):
        rest = n - b - c
        both = int(rng.binomial(rest, base_right))
        lo, hi = stats.newcombe_paired_ci(both, int(b), int(c), rest - both)
        covered += lo <= -drop <= hi
    assert p_loss >= 0
    assert covered / sims >= 0.93


def test_stratified_standard_error_is_calibrated():
    # A finite population of 3 strata, sampled with unequal allocation: the reweighted estimate is
    # unbiased and its standard error matches the spread of the estimate over repeated samples.
    rng = np.random.default_rng(7)
    population = {"a": rng.random(1200) < 0.8, "b": rng.random(300) < 0.3, "c": rng.random(500) < 0.5}
    sizes = {s: len(v) for s, v in population.items()}
    take = {"a": 30, "b": 60, "c": 40}
    truth = float(np.mean(np.concatenate(list(population.values()))))
    estimates, ses = [], []
    for _ in range(1500):
        sample = {s: rng.choice(v, take[s], replace=False).astype(float) for s, v in population.items()}
        est = stats.stratified_mean(sample, sizes)
        estimates.append(est.estimate)
        ses.append(est.se)
    assert np.mean(estimates) == pytest.approx(truth, abs=3 * np.std(estimates) / math.sqrt(1500))
    # Without the finite-population correction the standard error is the with-replacement one: at least
    # the spread over repeated subsets of this finite split (here by sqrt(1 - n/N) at most).
    assert np.std(estimates) * 0.95 <= np.mean(ses) <= np.std(estimates) / math.sqrt(1 - 60 / 300) * 1.08
