"""The answer-margin family (engine/margin_stats.py): A/A family-wise rate in a seeded simulation,
the interval inverting the test, identical margins, the one-line rendering."""

import numpy as np
import pytest

from engine.margin_stats import format_margin_test, margin_tests

BENCHES = ("arith", "gsm8k", "mmlu_pro")


def _pair(rng, n, null, shift=0.0):
    """Per bench {id: margin} of a baseline and a candidate whose differences follow `null` + shift."""
    base, cand = {}, {}
    for bench in BENCHES:
        x = rng.normal(-2.0, 3.0, n)
        if null == "normal":
            d = rng.normal(0, 1, n)
        elif null == "t3":  # heavy tails: a few items move a lot
            d = rng.standard_t(3, n)
        elif null == "skewed":  # each side's own skewed noise: A/A pairs are exchangeable, so d is symmetric
            d = rng.exponential(1.0, n) - rng.exponential(1.0, n) * np.where(rng.random(n) < 0.2, 6.0, 1.0)
            d = np.where(rng.random(n) < 0.5, d, -d)
        else:  # mixture of scales
            d = rng.normal(0, 1, n) * np.where(rng.random(n) < 0.1, 8.0, 0.5)
        ids = [f"{bench}-{i}" for i in range(n)]
        base[bench] = dict(zip(ids, x, strict=True))
        cand[bench] = dict(zip(ids, x + d + shift, strict=True))
    return base, cand


@pytest.mark.parametrize("null", ["normal", "t3", "skewed", "mixture"])
@pytest.mark.parametrize("n", [30, 150])
def test_aa_family_wise_rate_at_most_alpha(null, n):
    rng = np.random.default_rng(20261202)
    reps = 1000
    fired = 0
    for _ in range(reps):
        tests = margin_tests(*_pair(rng, n, null), alpha=0.05)
        fired += any(t.fired for t in tests)
    rate = fired / reps
    # 0.05 plus three Monte Carlo standard errors (0.0056 at 1500 draws)
    assert rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps), f"{null} n={n}: family-wise rate {rate:.3f}"


def test_interval_inverts_the_test():
    rng = np.random.default_rng(7)
    seen = {True: 0, False: 0}
    for shift in np.linspace(-0.6, 0.6, 41):
        for t in margin_tests(*_pair(rng, 60, "normal", shift), alpha=0.05):
            lo, hi = t.interval
            assert (lo <= 0 <= hi) == (not t.fired), (shift, t)
            assert lo <= t.effect <= hi
            seen[t.fired] += 1
    assert seen[True] > 10 and seen[False] > 10  # both sides of the boundary exercised


def test_holm_levels_within_the_family():
    rng = np.random.default_rng(3)
    base, cand = _pair(rng, 200, "normal")
    cand["arith"] = {k: v - 1.0 for k, v in cand["arith"].items()}  # a clear drop in one bench
    tests = {t.bench: t for t in margin_tests(base, cand, alpha=0.05)}
    assert tests["arith"].fired and tests["arith"].worse and tests["arith"].level == pytest.approx(0.05 / 3)
    assert tests["arith"].interval[1] < 0
    assert tests["arith"].p_holm == pytest.approx(min(1.0, 3 * tests["arith"].p))


def test_identical_margins_say_so():
    base = {"arith": {"a": -1.5, "b": -0.25, "c": -3.0}}
    (t,) = margin_tests(base, {"arith": dict(base["arith"])})
    assert t.identical and not t.fired and t.effect == 0.0 and t.p == 1.0
    assert format_margin_test(t) == "answer margin Δ 0 nats, identical on all 3 items"


def test_pairs_by_item_id_only():
    base = {"arith": {"a": 0.0, "b": 1.0, "only-base": 5.0}}
    cand = {"arith": {"b": 0.0, "a": -1.0, "only-cand": 9.0}, "gsm8k": {"x": 1.0}}
    (t,) = margin_tests(base, cand)
    assert t.bench == "arith" and t.n == 2 and t.effect == pytest.approx(-1.0)


def test_one_line_rendering():
    rng = np.random.default_rng(11)
    base, cand = _pair(rng, 300, "normal", shift=-0.4)
    t = margin_tests(base, cand)[0]
    line = format_margin_test(t)
    assert line.startswith("answer margin Δ −0.") and " nats [−" in line and "], p " in line and "worse" in line
