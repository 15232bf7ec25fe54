"""engine/planner.py: its figures against a seeded simulation of the same design."""

import numpy as np
import pytest
from scipy import stats as sps

from engine import planner, stats

REPS = 4000


def _mc_tolerance(p: float) -> float:
    return 3.5 * np.sqrt(p * (1 - p) / REPS)


def _simulate_mcnemar(n, psi, drop, alpha, rng):
    """Share of REPS runs of n items the two-sided exact McNemar calls DEGRADED, under the planner's
    alternative: discordance psi + CHURN·drop, of which the net share `drop` are losses."""
    alt = min(1.0, psi + stats.CHURN * drop)
    p_loss = (alt + drop) / (2 * alt)
    d = rng.binomial(n, alt, REPS)
    b = rng.binomial(d, p_loss)
    c = d - b
    fired = [b_ > c_ and stats.mcnemar_exact(int(b_), int(c_)).p_two_sided < alpha for b_, c_ in zip(b, c, strict=True)]
    return float(np.mean(fired))


@pytest.mark.parametrize(("psi", "drop"), [(0.05, 0.05), (0.10, 0.03), (0.0, 0.02)])
def test_items_to_detect_match_simulation(psi, drop):
    alpha, power = 0.05 / 2, 0.8
    n = planner.items_to_detect(drop, psi, alpha, power)
    planned = stats.planned_power(n, psi, drop, alpha)
    assert planned >= power
    simulated = _simulate_mcnemar(n, psi, drop, alpha, np.random.default_rng(1))
    assert abs(simulated - planned) <= _mc_tolerance(planned), (n, simulated, planned)
    # and a design a fifth smaller falls short
    assert _simulate_mcnemar(int(n * 0.8), psi, drop, alpha, np.random.default_rng(2)) < power


@pytest.mark.parametrize(("psi", "drop"), [(0.05, 0.05), (0.02, 0.03)])
def test_items_to_rule_out_match_simulation(psi, drop):
    alpha, power = 0.05, 0.8
    n = planner.items_to_rule_out(drop, psi, alpha, power)
    rng = np.random.default_rng(3)
    d = rng.binomial(n, psi, REPS)  # an unchanged candidate: discordant items split evenly
    b = rng.binomial(d, 0.5)
    lo, _ = stats.binary_delta_interval(b, d - b, np.full(REPS, n), 1 - alpha)
    shown = float(np.mean(np.asarray(lo) > -drop))
    assert shown >= power - _mc_tolerance(power), (n, shown)
    assert stats.planned_margin(n - 1, psi, alpha, power) > drop or n == 1


@pytest.mark.parametrize(("shift", "sd"), [(-0.4, 2.0), (-1.5, 3.0)])
def test_items_for_margin_shift_match_simulation(shift, sd):
    alpha, power = 0.05 / 3, 0.8
    n = planner.items_for_shift(shift, sd, alpha, power)
    planned = planner.paired_t_power(n, shift, sd, alpha)
    assert planned >= power > planner.paired_t_power(n - 1, shift, sd, alpha)
    rng = np.random.default_rng(4)
    d = rng.normal(shift, sd, (REPS, n))
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(n))
    simulated = float(np.mean(2 * sps.t.sf(np.abs(t), n - 1) < alpha))
    assert abs(simulated - planned) <= _mc_tolerance(planned), (n, simulated, planned)


def test_tier_that_reaches():
    assert planner.reaching_tier("arith", 1200, 100) == "smoke"
    assert planner.reaching_tier("arith", 1200, 600) == "standard"
    assert planner.reaching_tier("mmlu_pro", 12032, 5000) == "full"
    assert planner.reaching_tier("gsm8k", 1319, 2000) == "none (the split has 1319)"


def test_plan_on_the_committed_baseline(tmp_path):
    from pathlib import Path

    base = Path(__file__).resolve().parents[1] / "baselines" / "smollm2-135m" / "smoke-nothink-s0"
    plans, margins = planner.plan(base, 0.05, 0.8, 0.05, discordance=0.05)
    by = {p.bench: p for p in plans}
    assert by["arith"].n_detect == planner.items_to_detect(0.05, 0.05, 0.025, 0.8)
    assert by["arith"].seconds_per_item > 0 and by["gsm8k"].seconds_per_item > by["arith"].seconds_per_item
    assert margins == []
    text = planner.format_plan(plans, margins, 0.05, 0.8)
    assert "arith" in text and "rule out" in text
