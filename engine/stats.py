"""Statistics of the paired comparison: every test, interval, power figure and correction lives here.

Items are aligned by id; per item each run has a value in [0, 1] (one binary sample, the mean over its
samples, or a bench's maj@k). Conventions used throughout:

    b = items where the baseline did better (losses), c = items where the candidate did better (wins)
    delta = candidate - baseline, in accuracy units (negative = worse)

With one binary value per item the exact McNemar test is the binomial test on the discordant pairs:
under "no change" an item that flips is equally likely to flip either way. With non-binary per-item
values the test is a sign-flip permutation test on the per-item differences.

Functions that simulations call on many tables at once take numpy arrays as well as scalars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np


class OnFirstUse:
    """A module imported when first used: scipy takes ~0.9 s to load, and every `--help` of a
    command that reaches these functions must answer at once."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        import importlib

        return getattr(importlib.import_module(self._name), attr)


_special = OnFirstUse("scipy.special")
_scipy_stats = OnFirstUse("scipy.stats")

# ---------------------------------------------------------------------------------------------------
# Exact McNemar (and its mid-p variant)


class McNemar(msgspec.Struct, frozen=True):
    b: int  # baseline right, candidate wrong (losses)
    c: int  # baseline wrong, candidate right (wins)
    p_two_sided: float
    p_degraded: float  # one-sided: candidate worse
    p_improved: float  # one-sided: candidate better
    # Mid-p: half the probability of the observed table counted as "as extreme". Closer to nominal
    # size than the exact test on small tables, but it does not guarantee the size: reported, never
    # used for the verdict.
    p_two_sided_midp: float = 1.0
    p_degraded_midp: float = 1.0
    p_improved_midp: float = 1.0


def mcnemar_p_degraded(b, c):
    """One-sided exact p, candidate worse: P(X >= b), X ~ Binomial(b + c, 1/2). Arrays welcome."""
    b, c = np.asarray(b), np.asarray(c)
    n = b + c
    return np.where(n > 0, _scipy_stats.binom.sf(b - 1, n, 0.5), 1.0)


def mcnemar_p_degraded_midp(b, c):
    """Mid-p, candidate worse: P(X > b) + P(X = b) / 2."""
    b, c = np.asarray(b), np.asarray(c)
    n = b + c
    mid = _scipy_stats.binom.sf(b, n, 0.5) + 0.5 * _scipy_stats.binom.pmf(b, n, 0.5)
    return np.where(n > 0, mid, 1.0)


def mcnemar_exact(b: int, c: int) -> McNemar:
    """Exact McNemar: X = b ~ Binomial(b + c, 1/2) under no change.

    Binomial(n, 1/2) is symmetric, so the two-sided p is twice the smaller tail (capped at 1), which is
    what scipy's binomtest and statsmodels' mcnemar(exact=True) report.
    """
    if b + c == 0:
        return McNemar(b, c, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    p_deg = float(mcnemar_p_degraded(b, c))
    p_imp = float(mcnemar_p_degraded(c, b))
    mid_deg = float(mcnemar_p_degraded_midp(b, c))
    mid_imp = float(mcnemar_p_degraded_midp(c, b))
    return McNemar(
        b,
        c,
        min(1.0, 2 * min(p_deg, p_imp)),
        p_deg,
        p_imp,
        min(1.0, 2 * min(mid_deg, mid_imp)),
        mid_deg,
        mid_imp,
    )


def discordant(base_scores: Sequence[float], cand_scores: Sequence[float]) -> tuple[int, int]:
    """(b, c): items where the baseline did better / the candidate did better.

    With several samples per item this is the sign test on per-item differences, which is McNemar
    when every item carries one binary sample.
    """
    b = sum(1 for x, y in zip(base_scores, cand_scores, strict=True) if x > y)
    c = sum(1 for x, y in zip(base_scores, cand_scores, strict=True) if y > x)
    return b, c


# ---------------------------------------------------------------------------------------------------
# Confidence intervals for delta


def wilson_interval(successes, n, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for one proportion."""
    if n == 0:
        return 0.0, 1.0
    z = float(_scipy_stats.norm.isf((1 - level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired_ci(both: int, b: int, c: int, neither: int, level: float = 0.95) -> tuple[float, float]:
    """Interval for delta = candidate - baseline on a paired 2x2 table (Newcombe 1998, method 10).

    both: right in both runs; b: baseline only; c: candidate only; neither: wrong in both. Square-and-add
    of the two Wilson intervals, with the correlation of the paired proportions (phi, corrected as in
    Newcombe's paper) taken out. Good coverage down to small n and at 0 or n discordant pairs, where
    the Wald interval collapses.
    """
    n = both + b + c + neither
    if n == 0:
        return float("nan"), float("nan")
    p_base, p_cand = (both + b) / n, (both + c) / n
    lo_base, hi_base = wilson_interval(both + b, n, level)
    lo_cand, hi_cand = wilson_interval(both + c, n, level)
    margins = (both + b) * (c + neither) * (both + c) * (b + neither)
    phi = 0.0
    if margins > 0:
        cross = both * neither - b * c
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    delta = p_cand - p_base
    down = (p_cand - lo_cand) ** 2 - 2 * phi * (p_cand - lo_cand) * (hi_base - p_base) + (hi_base - p_base) ** 2
    up = (hi_cand - p_cand) ** 2 - 2 * phi * (hi_cand - p_cand) * (p_base - lo_base) + (p_base - lo_base) ** 2
    return max(-1.0, delta - math.sqrt(max(down, 0.0))), min(1.0, delta + math.sqrt(max(up, 0.0)))


def paired_bootstrap_ci(
    diffs: Sequence[float], level: float = 0.95, n_resamples: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval for the mean per-item difference, resampling items (each item keeps its
    baseline and candidate value together, so the pairing survives the resampling)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    batch = max(1, 4_000_000 // d.size)  # bounded memory at n = 12000
    for start in range(0, n_resamples, batch):
        stop = min(n_resamples, start + batch)
        means[start:stop] = d[rng.integers(0, d.size, size=(stop - start, d.size))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------
# Paired test on non-binary per-item values


class SignFlip(msgspec.Struct, frozen=True):
    p_two_sided: float
    p_degraded: float
    p_improved: float
    exact: bool  # every sign pattern enumerated (else Monte Carlo with n_resamples draws)
    n_resamples: int


EXACT_SIGN_FLIP_MAX = 16  # nonzero differences up to which all 2^k sign patterns are enumerated


def sign_flip_test(diffs: Sequence[float], n_resamples: int = 10_000, seed: int = 0) -> SignFlip:
    """Permutation test of "per-item differences are symmetric about 0" on their sum.

    Under no change, swapping an item's baseline and candidate values is as likely as not, so every
    sign pattern of the differences is equally likely. Exact when few items differ; otherwise Monte
    Carlo with the (hits + 1) / (draws + 1) estimate, which keeps the size at alpha.
    """
    d = np.asarray(diffs, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return SignFlip(1.0, 1.0, 1.0, True, 0)
    observed = d.sum()
    # Floating sums of the same values in another order differ in the last bits: count those as ties.
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))
    if d.size <= EXACT_SIGN_FLIP_MAX:
        patterns = np.arange(2**d.size)[:, None] >> np.arange(d.size)[None, :]
        sums = np.where(patterns & 1, -1.0, 1.0) @ d
        return SignFlip(
            float(np.mean(np.abs(sums) >= abs(observed) - tol)),
            float(np.mean(sums <= observed + tol)),
            float(np.mean(sums >= observed - tol)),
            True,
            len(sums),
        )
    rng = np.random.default_rng(seed)
    low = high = extreme = 0
    batch = max(1, 4_000_000 // d.size)
    for start in range(0, n_resamples, batch):
        size = min(batch, n_resamples - start)
        sums = np.where(rng.random((size, d.size)) < 0.5, -1.0, 1.0) @ d
        low += int(np.sum(sums <= observed + tol))
        high += int(np.sum(sums >= observed - tol))
        extreme += int(np.sum(np.abs(sums) >= abs(observed) - tol))
    draws = n_resamples + 1
    return SignFlip((extreme + 1) / draws, (low + 1) / draws, (high + 1) / draws, False, n_resamples)


# ---------------------------------------------------------------------------------------------------
# Minimum detectable effect


def mcnemar_critical_losses(discordant_pairs, alpha: float):
    """Smallest loss count b that the one-sided exact test rejects at alpha given D = b + c discordant
    pairs (D + 1 where even b = D is not enough). Arrays welcome."""
    d = np.asarray(discordant_pairs)
    k = np.asarray(_scipy_stats.binom.isf(alpha, d, 0.5), dtype=float) + 1
    k = np.where(np.isnan(k), d + 1, k)
    # isf works in floating point: nudge to the exact boundary of "P(X >= k) <= alpha".
    k = np.where(_scipy_stats.binom.sf(k - 1, d, 0.5) > alpha, k + 1, k)
    k = np.where((k > 1) & (_scipy_stats.binom.sf(k - 2, d, 0.5) <= alpha), k - 1, k)
    return np.minimum(k, d + 1).astype(np.int64)


def mcnemar_power(n: int, discordance: float, drop: float, alpha: float) -> float:
    """Power of the one-sided exact McNemar test at alpha, n items, for a true drop `drop`.

    The alternative keeps the observed discordance (the share of items that flip) unless the drop
    needs more flips than that: a drop of d means at least a share d of items flipped.
    """
    if n <= 0:
        return 0.0
    psi = min(1.0, max(discordance, drop))
    if psi <= 0:
        return 0.0
    p_loss = min(1.0, (psi + drop) / (2 * psi))
    d = np.arange(n + 1)
    weights = _scipy_stats.binom.pmf(d, n, psi)
    keep = weights > 1e-15 * weights.max()
    d, weights = d[keep], weights[keep]
    k = mcnemar_critical_losses(d, alpha)
    return float(np.sum(weights * _scipy_stats.binom.sf(k - 1, d, p_loss)))


def _solve_increasing(f, target: float, lo: float, hi: float, iters: int = 60) -> float:
    if f(hi) < target:
        return float("inf")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if f(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def mde_mcnemar(n: int, discordance: float, alpha: float, power: float = 0.8) -> float:
    """Smallest drop (accuracy units) the one-sided exact McNemar test at alpha detects with the
    given power on n items with the observed discordance. inf: n too small to detect any drop."""
    if n <= 0:
        return float("inf")
    return _solve_increasing(lambda drop: mcnemar_power(n, discordance, drop, alpha), power, 0.0, 1.0)


def mde_paired_t(n: int, sd: float, alpha: float, power: float = 0.8) -> float:
    """Smallest mean per-item drop a one-sided paired t-test at alpha detects with the given power,
    for per-item differences with standard deviation sd (the normal-theory figure for non-binary
    per-item values; the sign-flip test has about the same power)."""
    if n < 2 or not sd > 0:
        return float("inf")
    df = n - 1
    crit = _scipy_stats.t.isf(alpha, df)

    def power_at(drop: float) -> float:
        return float(_scipy_stats.nct.sf(crit, df, drop / sd * math.sqrt(n)))

    return _solve_increasing(power_at, power, 0.0, 20 * sd)


# ---------------------------------------------------------------------------------------------------
# Strata


class StratifiedTest(msgspec.Struct, frozen=True):
    statistic: float  # chi-square, 1 df
    z: float  # signed: positive = candidate worse
    p_two_sided: float
    p_degraded: float
    weighted: bool


def cmh_matched_pairs(b_by_stratum, c_by_stratum, weights=None, n_by_stratum=None) -> StratifiedTest:
    """Cochran-Mantel-Haenszel test for matched pairs across strata.

    Unweighted (weights None) it is the CMH test with one 2x2 table (run x right/wrong) per matched
    pair, which sums the strata's discordant pairs: chi2 = (B - C)^2 / (B + C). With weights (each
    stratum's share of the full split) and stratum sizes n_s it tests the reweighted delta
    sum_s w_s (c_s - b_s) / n_s against its null variance sum_s w_s^2 (b_s + c_s) / n_s^2.
    """
    b = np.asarray(b_by_stratum, dtype=float)
    c = np.asarray(c_by_stratum, dtype=float)
    if weights is None:
        num, var = float(np.sum(b - c)), float(np.sum(b + c))
    else:
        w = np.asarray(weights, dtype=float) / np.asarray(n_by_stratum, dtype=float)
        num, var = float(np.sum(w * (b - c))), float(np.sum(w * w * (b + c)))
    if var <= 0:
        return StratifiedTest(0.0, 0.0, 1.0, 1.0, weights is not None)
    z = num / math.sqrt(var)
    return StratifiedTest(
        z * z, z, float(_scipy_stats.chi2.sf(z * z, 1)), float(_scipy_stats.norm.sf(z)), weights is not None
    )


class StratifiedEstimate(msgspec.Struct, frozen=True):
    estimate: float
    se: float
    ci: tuple[float, float]
    covered: float  # share of the full split whose strata were sampled (the estimate speaks for it)


def stratified_mean(
    values_by_stratum: dict[str, Sequence[float]], population_sizes: dict[str, int], level: float = 0.95
) -> StratifiedEstimate:
    """Mean over the full split from a stratified sample: strata weighted by their full-split size,
    standard error sqrt(sum_s W_s^2 s_s^2 / n_s).

    No finite-population correction: the split's items are themselves a sample of the questions the
    bench stands for, and each item's value carries generation noise, so sampling a large share of a
    stratum does not remove the uncertainty (with the correction an A/A interval excluded 0 in 10% of
    standard-tier runs).

    Strata of the population that were not sampled cannot be estimated: the weights are renormalised
    over the sampled ones and `covered` says how much of the split that is.
    """
    sampled = {s: np.asarray(v, dtype=float) for s, v in values_by_stratum.items() if len(v)}
    total = sum(population_sizes.get(s, 0) for s in sampled)
    if not sampled or total == 0:
        return StratifiedEstimate(float("nan"), float("nan"), (float("nan"), float("nan")), 0.0)
    pooled = np.concatenate(list(sampled.values()))
    pooled_var = float(pooled.var(ddof=1)) if pooled.size > 1 else 0.0
    estimate = 0.0
    variance = 0.0
    for stratum, v in sampled.items():
        size = population_sizes.get(stratum, 0)
        weight = size / total
        # A stratum with one item has no variance estimate of its own: borrow the pooled one.
        var = float(v.var(ddof=1)) if v.size > 1 else pooled_var
        estimate += weight * float(v.mean())
        variance += weight**2 * var / v.size if size else 0.0
    se = math.sqrt(variance)
    z = float(_scipy_stats.norm.isf((1 - level) / 2))
    covered = total / sum(population_sizes.values())
    return StratifiedEstimate(estimate, se, (estimate - z * se, estimate + z * se), covered)


# ---------------------------------------------------------------------------------------------------
# Canaries: length shift


class LengthShift(msgspec.Struct, frozen=True):
    n: int
    base_median: float
    cand_median: float
    median_ratio: float  # median over items of (cand + 1) / (base + 1)
    base_mean: float
    cand_mean: float
    p_longer: float  # one-sided Wilcoxon signed-rank: candidate longer
    p_two_sided: float


def length_shift(base_lengths: Sequence[float], cand_lengths: Sequence[float]) -> LengthShift:
    """Per-item paired shift of generation length: median per-item ratio and Wilcoxon signed-rank.

    The +1 keeps an item with an empty baseline reasoning in the ratio (a candidate that starts to
    think where the baseline did not is exactly what this canary is for).
    """
    x = np.asarray(base_lengths, dtype=float)
    y = np.asarray(cand_lengths, dtype=float)
    if x.size == 0:
        return LengthShift(0, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), 1.0, 1.0)
    ratio = float(np.median((y + 1) / (x + 1)))
    if np.all(x == y):
        p_longer = p_two = 1.0
    else:
        p_longer = float(_scipy_stats.wilcoxon(y, x, alternative="greater").pvalue)
        p_two = float(_scipy_stats.wilcoxon(y, x).pvalue)
    return LengthShift(
        int(x.size), float(np.median(x)), float(np.median(y)), ratio, float(x.mean()), float(y.mean()), p_longer, p_two
    )


# ---------------------------------------------------------------------------------------------------
# Sequential (always-valid) McNemar for early stopping

# Mixing prior over the loss probability p of a discordant pair: Beta(a, a) restricted to [1/2, 1].
# A larger a puts more weight near 1/2, i.e. on the small drops that matter here; measured with
# bench_kernels/power_sim.py (a = 1 loses power on 1-2 point drops, a = 20 is near the fixed-n test).
SEQUENTIAL_PRIOR_A = 10.0


def sequential_log_evalue(b, c, prior_a: float = SEQUENTIAL_PRIOR_A):
    """log of the mixture likelihood ratio for "discordant pairs are losses more often than wins"
    against "losses and wins are equally likely", after b losses and c wins. Arrays welcome.

    L = E_{p ~ prior}[p^b (1 - p)^c] / 2^-(b + c). Under no change it is a nonnegative martingale
    with mean 1 (a supermartingale when the candidate is better), so by Ville's inequality
    P(L ever reaches 1 / alpha) <= alpha however often one looks: peeking after every item is free.
    """
    b = np.asarray(b, dtype=float)
    c = np.asarray(c, dtype=float)
    a = prior_a
    log_mass_upper = _scipy_stats.beta.logsf(0.5, b + a, c + a)  # share of the posterior on p > 1/2
    return (
        (b + c) * math.log(2)
        + _special.betaln(b + a, c + a)
        - _special.betaln(a, a)
        + math.log(2)  # the prior is restricted to half of [0, 1]
        + log_mass_upper
    )


def sequential_boundary(max_discordant: int, alpha: float, prior_a: float = SEQUENTIAL_PRIOR_A) -> np.ndarray:
    """boundary[t] = fewest losses among t discordant pairs at which the sequential test stops for
    degradation (t + 1 where it cannot stop yet). Index 0 is unused (no evidence yet)."""
    threshold = math.log(1 / alpha)
    t = np.arange(max_discordant + 1)
    lo = np.full_like(t, -1)  # known below the threshold (-1: nothing tried yet)
    hi = t + 1  # known at or above it (t + 1: the sentinel "not reachable at t")
    # Bisection for every t at once: log e is increasing in the losses b for fixed t.
    while np.any(hi - lo > 1):
        open_ = hi - lo > 1
        mid = np.where(open_, (lo + hi) // 2, 0)
        reached = open_ & (sequential_log_evalue(mid, t - mid, prior_a) >= threshold)
        hi = np.where(reached, mid, hi)
        lo = np.where(open_ & ~reached, mid, lo)
    return hi


def _null_walk(boundary: np.ndarray, t_max: int):
    """Yield (t, crossed, survivors) for t = 0..t_max under no change: `crossed` = P(the loss count
    reached the boundary at some step <= t), survivors[b] = P(b losses after t pairs, never reached)."""
    survivors = np.ones(1)
    crossed = 0.0
    yield 0, crossed, survivors
    for t in range(1, t_max + 1):
        step = np.zeros(t + 1)
        step[:-1] += 0.5 * survivors
        step[1:] += 0.5 * survivors
        bound = int(boundary[t])
        crossed += float(step[bound:].sum())
        step[bound:] = 0.0
        survivors = step
        yield t, crossed, survivors


def sequential_final_critical(boundary: np.ndarray, t_max: int, alpha: float) -> np.ndarray:
    """critical[t] = fewest losses among t discordant pairs at which the end-of-run test rejects when
    the boundary was never reached (t + 1: cannot reject). Chosen so that, given t, P(reach the boundary
    at any look, or end at or above critical) <= alpha under no change: the early looks spend part of
    alpha and the final test gets exactly what is left."""
    critical = np.empty(t_max + 1, dtype=np.int64)
    for t, crossed, survivors in _null_walk(boundary, t_max):
        tails = np.cumsum(survivors[::-1])[::-1]  # tails[k] = P(survive, b >= k)
        ok = np.nonzero(crossed + tails <= alpha * (1 + 1e-12))[0]
        critical[t] = ok[0] if ok.size else t + 1
    return critical


def sequential_p_value(loss_path: Sequence[int], alpha_seq: float, prior_a: float = SEQUENTIAL_PRIOR_A) -> tuple[float, int | None]:
    """One-sided p-value (candidate worse) of the early-stop design, and the step (count of discordant
    pairs) at which it reached the boundary (None: never).

    loss_path[i] is 1 when the i-th discordant pair, in the order fixed before the run, was a loss and 0
    for a win. Outcomes are ordered stagewise: reaching the boundary earlier is more extreme than later,
    and any reach is more extreme than finishing without one; among finishes, more losses is more
    extreme. Then p = P(reach by step tau) after a stop at tau, and p = P(reach by the end) + P(no
    reach, losses >= observed) at the end of the run, both under no change given the pairs seen.
    """
    path = np.asarray(loss_path, dtype=np.int64)
    total = int(path.size)
    boundary = sequential_boundary(max(total, 1), alpha_seq, prior_a)
    losses = np.cumsum(path)
    reached = np.nonzero(losses >= boundary[1 : total + 1])[0]
    stop = int(reached[0]) + 1 if reached.size else None
    end = stop if stop is not None else total
    for t, crossed, survivors in _null_walk(boundary, end):
        if t == end:
            if stop is not None:
                return min(1.0, crossed), stop
            return min(1.0, crossed + float(survivors[int(losses[-1]) if total else 0 :].sum())), None
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------
# Multiple benches


def holm_array(p_values: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values along the last axis (many families at once)."""
    p = np.asarray(p_values, dtype=float)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    ranked = np.minimum(1.0, np.maximum.accumulate(ranked, axis=-1))
    adjusted = np.empty_like(ranked)
    np.put_along_axis(adjusted, order, ranked, axis=-1)
    return adjusted


def holm(p_values: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error control over the benches of a run)."""
    if not p_values:
        return []
    return [float(p) for p in holm_array(np.asarray(p_values, dtype=float))]


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if len(values) else float("nan")


# ---------------------------------------------------------------------------------------------------
# Intervals that invert the deciding test
#
# The verdict is a two-sided test at a level gamma (the bench's Holm step); the printed interval is the
# set of deltas that test does not reject at the same gamma, so "interval excludes 0" and "verdict
# DEGRADED/IMPROVED" are one statement.


def binary_delta_interval(b, c, n, level: float):
    """Interval for delta = (wins - losses) / n that inverts the two-sided exact McNemar test.

    Conditional on D = b + c discordant pairs, losses ~ Binomial(D, p): the equal-tailed Clopper-Pearson
    interval for p is exactly the set the exact test at 1 - level does not reject, and delta =
    psi (1 - 2p) with psi the share of discordant items. psi is not fixed across repeated runs, so each
    end takes the least favourable psi in its own Clopper-Pearson interval: the sign of each end is the
    sign of (1 - 2p) at that end, which keeps "0 inside" identical to "test does not reject", and the
    width covers the uncertainty of psi (a plain conditional interval undercovers large effects).
    With no discordant pair it is +-(the upper bound on psi). Arrays welcome.
    """
    b, c, n = np.asarray(b, dtype=float), np.asarray(c, dtype=float), np.asarray(n, dtype=float)
    gamma = 1 - level
    d = b + c
    with np.errstate(invalid="ignore", divide="ignore"):
        p_lo = np.where(b > 0, _scipy_stats.beta.ppf(gamma / 2, b, d - b + 1), 0.0)
        p_hi = np.where(b < d, _scipy_stats.beta.ppf(1 - gamma / 2, b + 1, d - b), 1.0)
        psi_lo = np.where(d > 0, _scipy_stats.beta.ppf(gamma / 2, d, n - d + 1), 0.0)
        psi_hi = np.where(d < n, _scipy_stats.beta.ppf(1 - gamma / 2, d + 1, n - d), 1.0)
    low_slope, high_slope = 1 - 2 * p_hi, 1 - 2 * p_lo
    lo = np.where(low_slope < 0, psi_hi, psi_lo) * low_slope
    hi = np.where(high_slope > 0, psi_hi, psi_lo) * high_slope
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


class DeltaTest(msgspec.Struct, frozen=True):
    """A two-sided test of "delta = 0" together with its inversion: `interval(level)` is the set of
    deltas the same test does not reject at 1 - level, so 0 lies inside exactly when p_two >= 1 - level.

    kind "exact-mcnemar": one binary value per item, equal weights: the exact test, inverted by
    binary_delta_interval.
    kind "weighted-mcnemar": discordant items with weights v_i (the full-split weight of the item's
    stratum over its sampled size); given which items are discordant, each is a win with probability q
    and delta = (2q - 1) * psi_w with psi_w = sum v_i. The score test of q = q0 with a continuity
    correction of half a lattice step (max v_i); with equal weights it is the continuity-corrected
    McNemar test, whose size is close to the exact one even at a handful of discordant pairs.
    kind "paired-t": Student t on the (stratified) mean of per-item differences, Satterthwaite degrees
    of freedom across strata, standard error without the finite-population correction.
    """

    kind: str  # "exact-mcnemar" | "weighted-mcnemar" | "paired-t"
    estimate: float
    p_two: float
    p_degraded: float
    p_improved: float
    p_min: float  # smallest p these items could give (Tarone)
    scale: float = 0.0  # weighted-mcnemar: psi_w; paired-t: standard error
    scale_se: float = 0.0  # weighted-mcnemar: standard error of psi_w
    sum_sq: float = 0.0  # weighted-mcnemar: sum v_i^2
    step: float = 0.0  # weighted-mcnemar: continuity correction
    df: float = 0.0  # paired-t
    b: int = 0  # exact-mcnemar: losses, wins, items
    c: int = 0
    n: int = 0

    def interval(self, level: float) -> tuple[float, float]:
        gamma = 1 - level
        if self.kind == "exact-mcnemar":
            return binary_delta_interval(self.b, self.c, self.n, level)
        if self.kind == "paired-t":
            if self.scale <= 0:
                return self.estimate, self.estimate
            half = float(_scipy_stats.t.isf(gamma / 2, self.df)) * self.scale
            return max(-1.0, self.estimate - half), min(1.0, self.estimate + half)
        z = float(_scipy_stats.norm.isf(gamma / 2))
        psi = self.scale
        if psi <= 0:
            return 0.0, 0.0
        q_hat = (self.estimate / psi + 1) / 2

        def z_at(q0: float) -> float:
            sd = math.sqrt(max(4 * q0 * (1 - q0) * self.sum_sq, 1e-300))
            return max(0.0, abs(self.estimate - (2 * q0 - 1) * psi) - self.step) / sd

        def bound(lo: float, hi: float, inside_at_hi: bool) -> float:
            # z_at is below z at the inside end and above it (or the end is reached) at the outside end.
            for _ in range(60):
                mid = (lo + hi) / 2
                if (z_at(mid) <= z) == inside_at_hi:
                    hi = mid
                else:
                    lo = mid
            return hi if inside_at_hi else lo

        q_lo = 0.0 if z_at(0.0) <= z else bound(0.0, q_hat, True)
        q_hi = 1.0 if z_at(1.0) <= z else bound(q_hat, 1.0, False)
        psi_lo = max(0.0, psi - z * self.scale_se)
        psi_hi = min(1.0, psi + z * self.scale_se)
        low_slope, high_slope = 2 * q_lo - 1, 2 * q_hi - 1
        # The least favourable psi at each end; the sign of each end is the sign of (2q - 1), the test's.
        return (psi_hi if low_slope < 0 else psi_lo) * low_slope, (psi_hi if high_slope > 0 else psi_lo) * high_slope


def exact_mcnemar_test(b: int, c: int, n: int) -> DeltaTest:
    exact = mcnemar_exact(b, c)
    p_min = min(1.0, 2.0 ** (1 - (b + c))) if b + c else 1.0
    return DeltaTest(
        "exact-mcnemar", (c - b) / n if n else float("nan"), exact.p_two_sided, exact.p_degraded, exact.p_improved, p_min,
        b=b, c=c, n=n,
    )


def weighted_mcnemar(diffs: Sequence[float], weights: Sequence[float], strata: Sequence[str]) -> DeltaTest:
    """DeltaTest for binary per-item values weighted to the full split: diffs in {-1, 0, 1} (candidate
    minus baseline), weights v_i summing to 1 (W_s / (N n_s)), strata labels for the spread of psi_w."""
    d = np.asarray(diffs, dtype=float)
    v = np.asarray(weights, dtype=float)
    labels = np.asarray(strata)
    disc = d != 0
    estimate = float(np.sum(v * d))
    psi = float(np.sum(v[disc]))
    if not disc.any():
        return DeltaTest("weighted-mcnemar", estimate, 1.0, 1.0, 1.0, 1.0)
    sum_sq = float(np.sum(v[disc] ** 2))
    step = float(v[disc].max())
    # Spread of psi_w = sum_s W_s psi_s: stratum by stratum binomial.
    var_psi = 0.0
    for name in np.unique(labels):
        mask = labels == name
        n_s = int(mask.sum())
        share = float(v[mask].sum())  # W_s / N
        psi_s = float(disc[mask].mean())
        var_psi += share**2 * psi_s * (1 - psi_s) / n_s
    sd0 = math.sqrt(sum_sq)
    z = max(0.0, abs(estimate) - step) / sd0
    one_side = float(_scipy_stats.norm.sf(z))
    worse = estimate < 0
    p_deg = one_side if worse else 1 - one_side if z > 0 else 0.5
    p_imp = one_side if not worse and estimate != 0 else 1 - one_side if z > 0 else 0.5
    best = max(0.0, psi - step) / sd0  # every discordant item the same way
    return DeltaTest(
        "weighted-mcnemar",
        estimate,
        min(1.0, 2 * one_side),
        min(1.0, p_deg),
        min(1.0, p_imp),
        min(1.0, 2 * float(_scipy_stats.norm.sf(best))),
        scale=psi,
        scale_se=math.sqrt(var_psi),
        sum_sq=sum_sq,
        step=step,
    )


def paired_t(diffs: Sequence[float], weights: Sequence[float] | None = None, strata: Sequence[str] | None = None) -> DeltaTest:
    """DeltaTest on the (stratum-weighted) mean of per-item differences: Student t with Satterthwaite
    degrees of freedom. weights: each item's W_s / (N n_s) (None: 1/n); strata: labels (None: one)."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n == 0:
        return DeltaTest("paired-t", float("nan"), 1.0, 1.0, 1.0, 1.0)
    if n < 2:
        # One item: no spread to test against, whatever its samples say (audit defect 1: the zero
        # variance read as certainty graded 23% of A/A runs). Never testable; the interval is everything.
        return DeltaTest("paired-t", float(d[0]), 1.0, 1.0, 1.0, 1.0, scale=math.inf, df=1.0)
    labels = np.asarray(strata) if strata is not None else np.zeros(n, dtype=int)
    v = np.asarray(weights, dtype=float) if weights is not None else np.full(n, 1.0 / n)
    estimate = float(np.sum(v * d))
    pooled = float(d.var(ddof=1)) if n > 1 else 0.0
    parts = []
    for name in np.unique(labels):
        mask = labels == name
        x = d[mask]
        share = float(v[mask].sum())
        var = float(x.var(ddof=1)) if x.size > 1 else pooled  # a one-item stratum borrows the pooled spread
        parts.append((share**2 * var / x.size, max(x.size - 1, 1)))
    variance = sum(a for a, _ in parts)
    if not np.any(d):
        return DeltaTest("paired-t", estimate, 1.0, 1.0, 1.0, 1.0, df=max(n - 1, 1))
    if variance <= 0:  # every item moved by the same amount: no spread, the sign is certain
        worse = estimate < 0
        return DeltaTest("paired-t", estimate, 0.0, 0.0 if worse else 1.0, 1.0 if worse else 0.0, 0.0, df=max(n - 1, 1))
    df = variance**2 / sum(a * a / f for a, f in parts)
    se = math.sqrt(variance)
    t = estimate / se
    p_deg = float(_scipy_stats.t.cdf(t, df))
    p_imp = float(_scipy_stats.t.sf(t, df))
    return DeltaTest("paired-t", estimate, min(1.0, 2 * min(p_deg, p_imp)), p_deg, p_imp, 0.0, scale=se, df=df)


# ---------------------------------------------------------------------------------------------------
# The family of benches: who is tested, at which level


class FamilyDecision(msgspec.Struct, frozen=True):
    in_family: list[bool]  # can reach its Holm level at its size (Tarone); the others are not tested
    p_holm: list[float]  # Holm over the family (1.0 outside it)
    rejected: list[bool]
    level: list[float]  # gamma of each bench's interval: the Holm step that decided it
    family: int  # benches in the family
    tarone_k: int


def decide_family(p_two: Sequence[float], p_min: Sequence[float], alpha: float) -> FamilyDecision:
    """Two-sided Holm over the benches that can reach their level (Tarone 1990), with the level of the
    interval that says the same as the decision.

    A bench whose smallest attainable p (given its discordant items) exceeds alpha / K can never be
    rejected and is left out, so it costs the others nothing: K is the smallest count with at most K
    benches able to reach alpha / K. Levels: a bench rejected at Holm step r uses alpha / (m - r + 1)
    (its p is below that); every other family member alpha / (m - rejected), where Holm stopped (its p
    is at or above that); a bench outside the family alpha / K (it cannot get below that). So each
    interval excludes 0 exactly when its bench is DEGRADED or IMPROVED; the intervals of the benches
    not rejected hold jointly (Strassburger & Bretz 2008).
    """
    p = np.asarray(p_two, dtype=float)
    floor = np.asarray(p_min, dtype=float)
    total = p.size
    k = 1
    while k < total and int(np.sum(floor <= alpha / k)) > k:
        k += 1
    member = floor <= alpha / k
    members = np.nonzero(member)[0]
    m = members.size
    p_holm = np.ones(total)
    rejected = np.zeros(total, dtype=bool)
    level = np.full(total, alpha / k)
    if m:
        p_holm[members] = holm_array(p[members])
        order = members[np.argsort(p[members], kind="stable")]
        steps = 0
        for r, i in enumerate(order):
            if p[i] < alpha / (m - r):
                rejected[i] = True
                level[i] = alpha / (m - r)
                steps += 1
            else:
                break
        if steps < m:
            level[members[~rejected[members]]] = alpha / (m - steps)
    return FamilyDecision(
        in_family=member.tolist(), p_holm=p_holm.tolist(), rejected=rejected.tolist(), level=level.tolist(), family=int(m), tarone_k=k
    )


# ---------------------------------------------------------------------------------------------------
# Planning: power and non-inferiority margin from a discordance measured before the comparison
#
# With shared per-item seeds an unchanged candidate flips few items (the same-seed discordance, from
# the baseline's own A/A rerun), but real damage does not only lose items: it also churns, flipping
# items both ways. The planned alternative is: discordance psi0 + churn * drop, of which the net share
# `drop` is losses; churn = 1 is the optimistic "every extra flip is a loss".

CHURN = 2.0  # extra discordant share per unit of net drop (assumed until measured)


def _power_one_tail(n: int, psi, p_loss, alpha_one_side: float) -> float:
    d = np.arange(n + 1)
    weights = _scipy_stats.binom.pmf(d, n, psi)
    keep = weights > 1e-15 * weights.max()
    d, weights = d[keep], weights[keep]
    k = mcnemar_critical_losses(d, alpha_one_side)
    return float(np.sum(weights * _scipy_stats.binom.sf(k - 1, d, p_loss)))


def planned_power(n: int, discordance: float, drop: float, alpha: float, churn: float = CHURN) -> float:
    """Power of the two-sided exact McNemar decision at alpha to call a true drop DEGRADED, on n items,
    when an unchanged candidate flips a share `discordance` of items and damage adds churn * drop."""
    if n <= 0 or drop < 0:
        return 0.0
    psi = min(1.0, discordance + max(churn, 1.0) * drop)
    if psi <= 0:
        return 0.0
    p_loss = min(1.0, (psi + drop) / (2 * psi))
    return _power_one_tail(n, psi, p_loss, alpha / 2)


def planned_mde(n: int, discordance: float, alpha: float, power: float = 0.8, churn: float = CHURN) -> float:
    """Smallest drop the two-sided decision at alpha detects with `power` (inf: none)."""
    if n <= 0:
        return float("inf")
    return _solve_increasing(lambda drop: planned_power(n, discordance, drop, alpha, churn), power, 0.0, 1.0)


def planned_margin(n: int, discordance: float, alpha: float, power: float = 0.8) -> float:
    """Non-inferiority margin an unchanged candidate shows with `power`: the M for which
    P(lower end of the level 1 - alpha interval > -M) = power, n items, shared-seed discordance psi.
    Exact over the binomial distribution of (discordant pairs, losses) and the interval above."""
    if n <= 0:
        return float("inf")
    d = np.arange(n + 1)
    wd = _scipy_stats.binom.pmf(d, n, discordance) if discordance > 0 else (d == 0).astype(float)
    keep = wd > 1e-12 * wd.max()
    lows, probs = [], []
    for di, w in zip(d[keep], wd[keep], strict=True):
        b = np.arange(di + 1)
        pb = _scipy_stats.binom.pmf(b, di, 0.5)
        use = pb > 1e-12 * pb.max()
        lo, _ = binary_delta_interval(b[use], di - b[use], np.full(int(use.sum()), n), 1 - alpha)
        lows.append(np.atleast_1d(lo))
        probs.append(w * pb[use])
    lo = np.concatenate(lows)
    pr = np.concatenate(probs)
    order = np.argsort(lo)
    cdf = np.cumsum(pr[order]) / pr.sum()
    # -M is the (1 - power)-quantile of the lower end.
    q = lo[order][min(int(np.searchsorted(cdf, 1 - power)), lo.size - 1)]
    return float(max(0.0, -q))
