"""`python -m engine noise-floor`: how often the baseline disagrees with itself.

Two reruns of the baseline's own spec: one with the same per-request seeds (what is left is batch
composition and numerics: the floor a candidate is graded against, thanks to common random numbers)
and one with other sampling seeds on the same items (what a leaderboard-style unpaired comparison
would face). Their per-bench discordance is stored beside the baseline (`noise_floor.json`), and
compare plans power and the non-inferiority margin from the same-seed figure instead of a guess.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np

from engine import runner
from engine.errors import UserError
from engine.pairing import pair_items
from engine.records import NOISE_FLOOR_FILE, BenchNoise, NoiseFloor, Run, read_run


def discordance(base: Run, rerun: Run, bench: str) -> tuple[int, float]:
    items = pair_items(base, rerun, bench)
    n = len(items.ids)
    return n, float(np.mean(items.base != items.cand)) if n else float("nan")


def plan_rerun(base: Run, model: str, seed: int, data_dir: Path | None) -> runner.RunPlan:
    """The baseline's own spec again (items, caps, sampling, engine), at sampling seed `seed`."""
    spec = base.spec
    import benches

    names = [b.name for b in spec.benches]
    defaults = {b.name: benches.get_bench(b.name).MAX_TOKENS[spec.think] for b in spec.benches}
    caps = {b.max_tokens for b in spec.benches}
    if all(b.max_tokens == defaults[b.name] for b in spec.benches):
        max_tokens = None
    elif len(caps) == 1:
        max_tokens = caps.pop()
    else:
        raise UserError(f"{base.dir}: benches ran with different non-default caps; rerun them one bench at a time")
    limits = {b.n_items for b in spec.benches}
    plan = runner.plan_run(
        model=model, tier=spec.tier, bench_names=names, think=spec.think, seed=seed, samples=spec.samples,
        sampling=spec.sampling, max_tokens=max_tokens, engine=spec.engine, data_dir=data_dir,
        limit=max(limits) if limits else None, item_seed=spec.item_seed,
    )  # fmt: skip
    for want, got in zip(spec.benches, plan.spec.benches, strict=True):
        if (want.items_fingerprint, want.data_fingerprint) != (got.items_fingerprint, got.data_fingerprint):
            raise UserError(
                f"{base.dir}: bench {want.name} selects other items or data here than in the baseline "
                f"(pass the baseline's --data-dir, and the model it was run with)"
            )
    return plan


def measure(
    base_dir: Path, *, model: str, data_dir: Path | None, out_root: Path, concurrency: int, kv_cache_gib: float | None
) -> NoiseFloor:
    from engine.backends import open_backend

    base = read_run(base_dir)
    reruns: dict[str, Run] = {}
    for label, seed in (("same-seed", base.spec.seed), ("other-seed", base.spec.seed + 1)):
        plan = plan_rerun(base, model, seed, data_dir)
        run_dir = out_root / label
        runner.prepare_run_dir(run_dir, plan.spec, plan.load_notes)

        async def start(plan=plan, seed=seed):
            return await open_backend(
                plan.spec.engine, checkpoint=plan.checkpoint, seed=seed, concurrency=concurrency, kv_cache_gib=kv_cache_gib
            )

        runner.run_event_loop(runner.execute(plan, run_dir, start, concurrency=concurrency))
        reruns[label] = read_run(run_dir)
    table = {}
    for bench in base.spec.benches:
        n, same = discordance(base, reruns["same-seed"], bench.name)
        _, other = discordance(base, reruns["other-seed"], bench.name)
        table[bench.name] = BenchNoise(n=n, same_seed=same, other_seed=other)
    floor = NoiseFloor(same_seed_run=str(out_root / "same-seed"), other_seed_run=str(out_root / "other-seed"), benches=table)
    (Path(base_dir) / NOISE_FLOOR_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(floor), indent=1))
    return floor


def format_floor(floor: NoiseFloor) -> str:
    lines = [f"{'bench':<14} {'n':>6} {'same seeds':>11} {'other seeds':>12}"]
    for name, b in floor.benches.items():
        lines.append(f"{name:<14} {b.n:>6} {100 * b.same_seed:>10.1f}% {100 * b.other_seed:>11.1f}%")
    lines.append(
        "discordance: share of items whose value differs from the baseline's own run. compare plans power and the "
        "non-inferiority margin from the same-seed figure (common random numbers)."
    )
    return "\n".join(lines)
