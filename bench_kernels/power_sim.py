"""False-positive rates and power of the harness's paired tests, by simulation.

    python bench_kernels/power_sim.py [--sims 20000] [--seq-sims 4000] [--seed 0]

Items are simulated as matched pairs: a share `discordance` of items flips between baseline and
candidate; under "no change" a flip is a loss or a win with probability 1/2, under a drop of d a loss
with probability (discordance + d) / (2 discordance). Every decision is made by the functions in
engine/stats.py, exactly as `compare` makes it. tests/test_stats_validation.py runs the same
functions with fewer simulations.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import sequential, stats  # noqa: E402

ALPHA = 0.05
# smoke: every bench; standard: gsm8k whole (1319), mmlu_pro's stratified slice (3600); full: mmlu_pro whole.
SIZES = {"smoke": 150, "gsm8k standard": 1319, "mmlu_pro standard": 3600, "mmlu_pro full": 12032}
NULL_SIZES = (30, 150, 1319, 12000)
DISCORDANCES = (0.1, 0.2, 0.4)
DROPS = (0.01, 0.02, 0.05)
SHARED_DISCORDANCES = (0.02, 0.05, 0.1, 0.2)  # with shared per-item seeds an unchanged candidate flips few items


def flip_counts(n: int, discordance: float, drop: float, sims: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(losses b, wins c) of `sims` simulated benches of n items."""
    psi = max(discordance, drop)
    p_loss = (psi + drop) / (2 * psi)
    counts = rng.multinomial(n, [psi * p_loss, psi * (1 - p_loss), 1 - psi], size=sims)
    return counts[:, 0], counts[:, 1]


def reject_rate_mcnemar(n: int, discordance: float, drop: float, sims: int, rng: np.random.Generator, alpha: float = ALPHA) -> tuple[float, float]:
    """Share of benches the one-sided exact McNemar test (and its mid-p variant) calls degraded."""
    b, c = flip_counts(n, discordance, drop, sims, rng)
    return float(np.mean(stats.mcnemar_p_degraded(b, c) < alpha)), float(np.mean(stats.mcnemar_p_degraded_midp(b, c) < alpha))


def family_rate_holm(
    ns: list[int], discordances: list[float], drops: list[float], sims: int, rng: np.random.Generator, alpha: float = ALPHA
) -> float:
    """Share of runs of len(ns) benches where Holm calls at least one truly unchanged bench degraded."""
    p = np.column_stack([stats.mcnemar_p_degraded(*flip_counts(n, d, drop, sims, rng)) for n, d, drop in zip(ns, discordances, drops, strict=True)])
    rejected = stats.holm_array(p) < alpha
    null = np.array([drop == 0 for drop in drops])
    return float(np.mean(np.any(rejected[:, null], axis=1)))


def exact_p_two(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Two-sided exact McNemar p, vectorised (twice the smaller tail, capped at 1)."""
    return np.minimum(1.0, 2 * np.minimum(stats.mcnemar_p_degraded(b, c), stats.mcnemar_p_degraded(c, b)))


def family_verdict_rate(
    ns: list[int], discordances: list[float], drops: list[float], sims: int, rng: np.random.Generator, alpha: float = ALPHA
) -> float:
    """Share of runs of len(ns) benches where compare's decision (two-sided exact McNemar, Tarone's
    family, Holm) gives any verdict on a truly unchanged bench (all drops 0: the A/A verdict rate), or,
    when some drops are not 0, a verdict on some bench that truly dropped."""
    counts = [flip_counts(n, d, drop, sims, rng) for n, d, drop in zip(ns, discordances, drops, strict=True)]
    p = np.column_stack([exact_p_two(b, c) for b, c in counts])
    p_min = np.column_stack([np.where(b + c > 0, np.minimum(1.0, 2.0 ** (1 - (b + c))), 1.0) for b, c in counts])
    null = np.array([drop == 0 for drop in drops])
    hits = 0
    for i in range(sims):
        rejected = np.array(stats.decide_family(p[i], p_min[i], alpha).rejected)
        hits += bool(np.any(rejected[null] if null.all() else rejected[~null]))
    return hits / sims


def canary_family_rate(ns: list[int], discordances: list[float], sims: int, rng: np.random.Generator, alpha: float = ALPHA) -> float:
    """Share of runs of unchanged benches where some canary of one family flags (one-sided exact test per
    bench on items moving up / down, Holm over the benches), as compare flags them."""
    p = np.column_stack([stats.mcnemar_p_degraded(*flip_counts(n, d, 0.0, sims, rng)) for n, d in zip(ns, discordances, strict=True)])
    return float(np.mean(np.any(stats.holm_array(p) < alpha, axis=1)))


def sequential_rates(
    n: int,
    discordance: float,
    drop: float,
    sims: int,
    rng: np.random.Generator,
    alpha: float = ALPHA,
    family: int = 1,
    chunk: int = 500,
) -> tuple[float, float, float]:
    """(rejection rate of the whole early-stop design, rate of early stops, mean share of items run).

    The design looks after every item; its e-value only changes at discordant items, so each simulated
    stream is the sequence of discordant pairs, and a stop after the t-th of D pairs has run about t/D
    of the items. `family` benches share alpha as in the runner (early looks at SHARE * alpha / family),
    and the end-of-run test is at alpha / family: a run of `family` null benches is then wrongly flagged
    by Holm at most when some bench rejects at alpha / family.
    """
    psi = max(discordance, drop)
    p_loss = (psi + drop) / (2 * psi)
    alpha_seq = sequential.SHARE * alpha / family
    d_all = rng.binomial(n, psi, sims)
    t_max = max(1, int(d_all.max()))
    boundary = stats.sequential_boundary(t_max, alpha_seq)
    critical = stats.sequential_final_critical(boundary, t_max, alpha / family)
    rejected = early = 0
    used = 0.0
    for start in range(0, sims, chunk):
        d = d_all[start : start + chunk]
        width = max(1, int(d.max()))
        losses = np.cumsum(rng.random((d.size, width)) < p_loss, axis=1)
        live = np.arange(1, width + 1)[None, :] <= d[:, None]
        hit = (losses >= boundary[None, 1 : width + 1]) & live
        crossed = hit.any(axis=1)
        final_losses = losses[np.arange(d.size), np.maximum(d, 1) - 1] * (d > 0)
        rejected += int(np.sum(crossed | (final_losses >= critical[d])))
        early += int(crossed.sum())
        stop_at = np.where(crossed, hit.argmax(axis=1) + 1, d)
        used += float(np.sum(np.where(d > 0, stop_at / np.maximum(d, 1), 1.0)))
    return rejected / sims, early / sims, used / sims


def sign_flip_rate(n: int, samples: int, sims: int, rng: np.random.Generator, alpha: float = ALPHA, n_resamples: int = 999) -> float:
    """False-positive rate of the sign-flip test on avg@k per-item values under no change: both runs
    draw each item's k samples from the same per-item accuracy."""
    rejected = 0
    for _ in range(sims):
        accuracy = rng.beta(0.7, 0.7, n)
        base = rng.binomial(samples, accuracy) / samples
        cand = rng.binomial(samples, accuracy) / samples
        seed = int(rng.integers(1 << 31))
        rejected += stats.sign_flip_test(cand - base, n_resamples=n_resamples, seed=seed).p_degraded < alpha
    return rejected / sims


def _mc_error(rate: float, sims: int) -> float:
    return math.sqrt(max(rate * (1 - rate), ALPHA * (1 - ALPHA)) / sims)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sims", type=int, default=20000, help="simulated benches per cell (fixed-n tests)")
    p.add_argument("--seq-sims", type=int, default=4000, help="simulated benches per cell (sequential design)")
    p.add_argument("--perm-sims", type=int, default=1000, help="simulated benches for the sign-flip test")
    p.add_argument("--family-sims", type=int, default=4000, help="simulated runs for the 8-bench A/A verdict rate")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started = time.time()
    print(f"α = {ALPHA}, one-sided (candidate worse); Monte Carlo SE at α with {args.sims} sims: ±{_mc_error(ALPHA, args.sims):.4f}")

    print("\n## False-positive rate, no change (symmetric flips)")
    print(f"{'n':>6} {'discord.':>8} {'exact McNemar':>14} {'(exact size)':>12} {'mid-p':>7} {'sequential':>11} {'seq. early':>10}")
    for n in NULL_SIZES:
        for psi in DISCORDANCES:
            exact, midp = reject_rate_mcnemar(n, psi, 0.0, args.sims, rng)
            size = stats.mcnemar_power(n, psi, 0.0, ALPHA)
            seq, early, _ = sequential_rates(n, psi, 0.0, args.seq_sims, rng)
            print(f"{n:>6} {psi:>8.0%} {exact:>14.4f} {size:>12.4f} {midp:>7.4f} {seq:>11.4f} {early:>10.4f}")

    print("\n## Family-wise false-positive rate, Holm over 8 unchanged benches")
    ns = [150, 150, 1319, 1319, 500, 3000, 12000, 198]
    psis = [0.1, 0.4, 0.2, 0.3, 0.25, 0.15, 0.2, 0.35]
    fwer = family_rate_holm(ns, psis, [0.0] * 8, args.sims, rng)
    print(f"fixed-n exact McNemar + Holm: {fwer:.4f}  (n = {ns})")
    per_bench = [sequential_rates(n, psi, 0.0, args.seq_sims, rng, family=8)[0] for n, psi in zip(ns, psis, strict=True)]
    # Independent benches: P(some bench rejects at α/8) = 1 - Π(1 - r_i).
    print(f"early-stop design + Holm:     {1 - float(np.prod([1 - r for r in per_bench])):.4f}")

    print("\n## False-positive rate, sign-flip test on avg@4 per-item values (no change)")
    for n in (30, 150):
        rate = sign_flip_rate(n, 4, args.perm_sims, rng)
        print(f"n={n:>4}: {rate:.4f} (±{_mc_error(rate, args.perm_sims):.4f})")

    print("\n## Power, one-sided exact McNemar at α (simulated; exact figure in brackets)")
    print(f"{'n':>6} {'discord.':>8} " + " ".join(f"{f'-{100 * d:.0f} pt':>18}" for d in DROPS) + f" {'MDE (80%)':>10}")
    for label, n in SIZES.items():
        for psi in DISCORDANCES:
            cells = []
            for drop in DROPS:
                power, _ = reject_rate_mcnemar(n, psi, drop, args.sims, rng)
                exact = stats.mcnemar_power(n, psi, drop, ALPHA)
                cells.append(f"{power:.3f} [{exact:.3f}]")
            mde = stats.mde_mcnemar(n, psi, ALPHA)
            print(f"{n:>6} {psi:>8.0%} " + " ".join(f"{c:>18}" for c in cells) + f" {100 * mde:>8.1f}pt   ({label})")

    print("\n## Early-stop design: power, early stops, share of items run")
    print(f"{'n':>6} {'discord.':>8} {'drop':>6} {'power':>7} {'fixed-n':>8} {'stopped':>8} {'items run':>10}")
    for n in SIZES.values():
        for drop in (0.02, 0.05, 0.2):
            seq, early, used = sequential_rates(n, 0.2, drop, args.seq_sims, rng)
            fixed = stats.mcnemar_power(n, 0.2, drop, ALPHA)
            print(f"{n:>6} {0.2:>8.0%} {f'-{100 * drop:.0f}pt':>6} {seq:>7.3f} {fixed:>8.3f} {early:>8.3f} {used:>10.0%}")
    print("\n## A/A verdict rate, compare's decision (two-sided, Tarone family, Holm) over 8 unchanged benches")
    shared = [0.02, 0.05, 0.1, 0.2, 0.02, 0.05, 0.1, 0.2]
    rate = family_verdict_rate(ns, shared, [0.0] * 8, args.family_sims, rng)
    print(f"{rate:.4f} (±{_mc_error(rate, args.family_sims):.4f}; n = {ns}, discordance = {shared})")
    rate = canary_family_rate(ns, shared, args.sims, rng)
    print(f"canary family (Holm over the 8 benches): {rate:.4f}")

    print(f"\n## Planned power at shared-seed discordance (two-sided decision at α, churn {stats.CHURN:g}: "
          "damage adds churn × drop of discordance); NI: margin an unchanged candidate shows with 80% power")
    print(f"{'n':>6} {'discord.':>8} " + " ".join(f"{f'-{100 * d:.0f} pt':>8}" for d in DROPS) + f" {'MDE (80%)':>10} {'NI margin':>10}")
    for label, n in SIZES.items():
        for psi in SHARED_DISCORDANCES:
            cells = [f"{stats.planned_power(n, psi, drop, ALPHA):.3f}" for drop in DROPS]
            mde = stats.planned_mde(n, psi, ALPHA)
            margin = stats.planned_margin(n, psi, ALPHA)
            print(f"{n:>6} {psi:>8.0%} " + " ".join(f"{c:>8}" for c in cells) + f" {100 * mde:>8.1f}pt {100 * margin:>8.1f}pt   ({label})")
    check = SIZES["gsm8k standard"]
    sim, _ = reject_rate_mcnemar(check, 0.05 + stats.CHURN * 0.02, 0.02, args.sims, rng, alpha=ALPHA / 2)
    print(f"(check: simulated power at n={check}, 5%, -2 pt: {sim:.3f})")
    print(f"\n({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
