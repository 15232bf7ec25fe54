"""`python -m engine plan --baseline B --drop X [--power 0.8]`: how many items each bench needs to
detect a drop of X accuracy points (two-sided exact McNemar at α/K, K the baseline's benches, as
compare decides), and to rule one out (the lower end of compare's interval above −X for an unchanged
candidate), from the baseline's measured same-seed discordance (noise_floor.json); which tier reaches
it; the wall time at the baseline's own measured throughput (timing.jsonl); and, given a candidate
whose answer margins are stored (`--margin-candidate`, e.g. the ladder's rtn-int4), the items the
paired t on the margin needs to see that shift.

The power model is compare's (stats.planned_power: damage adds `CHURN` discordant items per unit of
net drop); tests/test_planner.py checks the figures against a simulation of the same design.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import msgspec
import numpy as np

from engine import stats
from engine.errors import ExitCode, UserError
from engine.stats import OnFirstUse

_scipy_stats = OnFirstUse("scipy.stats")  # loaded when first used (fast --help)

MAX_ITEMS = 1_000_000


class BenchPlan(msgspec.Struct, kw_only=True):
    bench: str
    discordance: float  # same-seed share of items an unchanged candidate flips
    discordance_source: str
    alpha: float  # per-bench level (alpha / benches, as compare)
    n_detect: int  # items to call a drop of `drop` DEGRADED with `power`
    n_rule_out: int  # items for an unchanged candidate to show "no drop larger than `drop`" with `power`
    tier_detect: str
    tier_rule_out: str
    seconds_per_item: float | None  # generation at the baseline's measured throughput
    split_size: int


class MarginPlan(msgspec.Struct, kw_only=True):
    bench: str
    shift: float  # mean margin difference observed on the reference candidate (nats)
    sd: float  # spread of the per-item differences
    alpha: float
    n: int  # items the paired t needs to see the shift with `power`
    tier: str
    seconds_per_item: float | None  # the margin pass alone (one prefill per item)


def _smallest(ok, lo: int = 1) -> int:
    """Smallest n ≥ lo with ok(n), searched by doubling then bisection (ok taken as eventually true)."""
    hi = max(lo, 8)
    while not ok(hi):
        if hi >= MAX_ITEMS:
            return MAX_ITEMS + 1
        hi = min(hi * 2, MAX_ITEMS)
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def items_to_detect(drop: float, discordance: float, alpha: float, power: float) -> int:
    return _smallest(lambda n: stats.planned_power(n, discordance, drop, alpha) >= power)


def items_to_rule_out(drop: float, discordance: float, alpha: float, power: float) -> int:
    return _smallest(lambda n: stats.planned_margin(n, discordance, alpha, power) <= drop)


def paired_t_power(n: int, shift: float, sd: float, alpha: float) -> float:
    """Power of the two-sided paired t at alpha for a mean shift with per-item spread sd (noncentral t)."""
    if n < 2:
        return 0.0
    if sd <= 0:
        return 1.0 if shift != 0 else 0.0
    df = n - 1
    crit = float(_scipy_stats.t.isf(alpha / 2, df))
    nc = shift / sd * math.sqrt(n)
    return float(_scipy_stats.nct.sf(crit, df, nc) + _scipy_stats.nct.cdf(-crit, df, nc))


def items_for_shift(shift: float, sd: float, alpha: float, power: float) -> int:
    if shift == 0:
        return MAX_ITEMS + 1
    return _smallest(lambda n: paired_t_power(n, shift, sd, alpha) >= power, lo=2)


def tier_sizes(bench: str, split_size: int) -> dict[str, int]:
    import benches

    return {
        "smoke": min(benches.SMOKE_N, split_size),
        "standard": min(benches.STANDARD_SLICE.get(bench, split_size), split_size),
        "full": split_size,
    }


def reaching_tier(bench: str, split_size: int, n: int) -> str:
    for tier, size in tier_sizes(bench, split_size).items():
        if size >= n:
            return tier
    return f"none (the split has {split_size})"


def seconds_per_item(run) -> dict[str, float]:
    """Generation seconds per item of each bench: the run's measured wall time shared by its generated tokens."""
    from engine.runner import read_timings

    timings = read_timings(run.dir)
    wall = sum(t.wall_s for t in timings)
    tokens_total = sum(t.generated_tokens for t in timings)
    if wall <= 0 or tokens_total <= 0:
        return {}
    out = {}
    for bench, records in run.records.items():
        items = len({r.item_id for r in records})
        if items:
            out[bench] = wall * sum(r.completion_tokens for r in records) / tokens_total / items
    return out


def plan(
    base_dir: Path, drop: float, power: float = 0.8, alpha: float = 0.05, discordance: float | None = None,
    margin_candidate: Path | None = None,
) -> tuple[list[BenchPlan], list[MarginPlan]]:  # fmt: skip
    from engine.margin import paired_margins, read_margins
    from engine.records import read_noise_floor, read_run

    if not 0 < drop < 1:
        raise UserError(f"--drop {100 * drop:g}: accuracy points in (0, 100)")
    if not 0 < power < 1:
        raise UserError(f"--power {power}: must be in (0, 1)")
    base = read_run(base_dir)
    floor = read_noise_floor(base.dir)
    per_item = seconds_per_item(base)
    k = max(1, len(base.spec.benches))
    plans = []
    for spec in base.spec.benches:
        if discordance is not None:
            psi, source = discordance, "--discordance"
        elif floor is not None and spec.name in floor.benches:
            psi, source = floor.benches[spec.name].same_seed, f"noise floor, {floor.benches[spec.name].n} items"
        else:
            raise UserError(
                f"{base.dir}: no measured noise floor for {spec.name}; run `python -m engine noise-floor --baseline "
                f"{base.dir} --model MODEL` first, or pass --discordance"
            )
        split = sum(spec.strata_sizes.values()) if spec.strata_sizes else spec.n_items
        n_detect = items_to_detect(drop, psi, alpha / k, power)
        n_rule = items_to_rule_out(drop, psi, alpha / k, power)
        plans.append(
            BenchPlan(
                bench=spec.name, discordance=psi, discordance_source=source, alpha=alpha / k, n_detect=n_detect,
                n_rule_out=n_rule, tier_detect=reaching_tier(spec.name, split, n_detect),
                tier_rule_out=reaching_tier(spec.name, split, n_rule), seconds_per_item=per_item.get(spec.name),
                split_size=split,
            )
        )  # fmt: skip
    margin_plans = []
    if margin_candidate is not None:
        base_m, cand_m = paired_margins(base.dir, margin_candidate)
        if not base_m:
            raise UserError(f"--margin-candidate {margin_candidate}: no bench has margins in both it and {base.dir} (`python -m engine margin`)")
        splits = {p.bench: p.split_size for p in plans}
        for bench in sorted(base_m):
            ids = [i for i in base_m[bench] if i in cand_m[bench]]
            d = np.array([cand_m[bench][i] - base_m[bench][i] for i in ids])
            shift, sd = float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else 0.0
            n = items_for_shift(shift, sd, alpha / k, power)
            margins = read_margins(base.dir, bench)
            margin_plans.append(
                MarginPlan(
                    bench=bench, shift=shift, sd=sd, alpha=alpha / k, n=n,
                    tier=reaching_tier(bench, splits.get(bench, len(ids)), n),
                    seconds_per_item=margins.seconds / len(margins.items) if margins and margins.items else None,
                )
            )  # fmt: skip
    return plans, margin_plans


def _items(n: int) -> str:
    return f"> {MAX_ITEMS:,}" if n > MAX_ITEMS else f"{n:,}"


def _wall(n: int, per_item: float | None) -> str:
    if per_item is None or n > MAX_ITEMS:
        return "?"
    s = n * per_item
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def format_plan(plans: list[BenchPlan], margin_plans: list[MarginPlan], drop: float, power: float) -> str:
    lines = [
        f"items to detect a drop of {100 * drop:g} pts (power {power:g}) and to rule one out (non-inferiority), "
        f"exact McNemar at α/K as compare decides:",
        f"{'bench':<14} {'discord.':>8} {'detect':>10} {'tier':>9} {'wall':>9}   {'rule out':>10} {'tier':>9} {'wall':>9}",
    ]
    for p in plans:
        lines.append(
            f"{p.bench:<14} {100 * p.discordance:>7.1f}% {_items(p.n_detect):>10} {p.tier_detect:>9} "
            f"{_wall(p.n_detect, p.seconds_per_item):>9}   {_items(p.n_rule_out):>10} {p.tier_rule_out:>9} "
            f"{_wall(p.n_rule_out, p.seconds_per_item):>9}"
        )
    sources = sorted({p.discordance_source for p in plans})
    lines.append(f"discordance: same-seed share of items flipped by an unchanged candidate ({'; '.join(sources)}); wall "
                 f"time at the baseline's measured throughput (timing.jsonl)")  # fmt: skip
    for m in margin_plans:
        lines.append(
            f"{m.bench}: answer margin shift {m.shift:+.3f} nats (sd {m.sd:.3f}): {_items(m.n)} items for power {power:g} "
            f"(paired t at α {m.alpha:.3g}), tier {m.tier}, margin pass {_wall(m.n, m.seconds_per_item)}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from engine import baselines

    p = argparse.ArgumentParser(prog="python -m engine plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="the baseline run dir, or a name under baselines/")
    p.add_argument("--drop", type=float, required=True, help="the drop to detect / rule out, in accuracy points (5 = 5 pts)")
    p.add_argument("--power", type=float, default=0.8, help="probability of detecting / ruling out (default 0.8)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise level, split over the baseline's benches as compare does")
    p.add_argument("--discordance", type=float, default=None, help="same-seed discordance to assume instead of the measured one")
    p.add_argument("--margin-candidate", type=Path, default=None, help="a run whose answer margins measure the shift to plan for")
    args = p.parse_args(argv)
    drop = args.drop / 100
    if Path(args.baseline, "spec.json").is_file():
        base_dir = Path(args.baseline)
    else:
        found = sorted((baselines.baselines_root() / args.baseline).glob("*/spec.json"))
        if len(found) != 1:
            raise UserError(f"--baseline {args.baseline}: give the run directory ({len(found)} runs found)")
        base_dir = found[0].parent
    plans, margin_plans = plan(base_dir, drop, args.power, args.alpha, args.discordance, args.margin_candidate)
    print(format_plan(plans, margin_plans, drop, args.power))
    return int(ExitCode.PASS)
