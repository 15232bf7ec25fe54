"""The whole decision's false-positive rate under A/A and its power on a degradation ladder, by
simulation through engine.grade.grade (every family counted, as `compare` decides).

    python bench_kernels/decision_sim.py [--sims 2000] [--seed 0]

A pair of runs of three benches (150, 150, 300 items) is simulated with shared per-item seeds: an
unchanged candidate flips 10% of items at random (a flip is a loss or a win alike), and its cap hits
(5%), lengths and blank answers (3%) are drawn like the baseline's. A degraded candidate also loses a share
`drop` of its items (right turned wrong) and, on the "loops" rungs, hits the cap on an extra share of items. docs/decision.md quotes the output.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.grade import Evidence, GradeOptions, grade  # noqa: E402
from engine.records import ItemRecord, Run  # noqa: E402
from engine.spec import BenchSpec, RunSpec, SamplingConfig, VllmEngine  # noqa: E402

BENCHES = (("arith", 150), ("gsm8k", 150), ("mmlu", 300))
LADDER = ((0.0, 0.0), (0.02, 0.0), (0.05, 0.0), (0.10, 0.0), (0.0, 0.05), (0.02, 0.10))  # (accuracy drop, extra cap hits)


def _spec(name: str) -> RunSpec:
    return RunSpec(
        model=name, model_fingerprint=name, tier="smoke", seed=0, think=False, samples=1,
        sampling=SamplingConfig(preset="greedy", temperature=0.0),
        benches=tuple(BenchSpec(name=b, version="1", data_fingerprint="d", n_items=n, items_fingerprint="i", max_tokens=128,
                                samples=1) for b, n in BENCHES),
        engine=VllmEngine(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=256),
    )  # fmt: skip


def _records(values: np.ndarray, trunc: np.ndarray, tokens: np.ndarray, blank: np.ndarray) -> list[ItemRecord]:
    return [
        ItemRecord(item_id=f"q{i}", sample=0, seed=0, prompt_hash="h", completion="x", prompt_tokens=5,
                   completion_tokens=128 if trunc[i] else int(tokens[i]), finish_reason="length" if trunc[i] else "stop",
                   truncated=bool(trunc[i]), answer=None if blank[i] else "1", score=float(values[i]), latency_s=0.1,
                   reasoning_tokens=int(tokens[i]), vote_key=None if blank[i] else "1")  # fmt: skip
        for i in range(values.size)
    ]


def pair(rng: np.random.Generator, drop: float, loops: float) -> tuple[Run, Run]:
    base, cand = {}, {}
    for bench, n in BENCHES:
        acc = rng.uniform(0.3, 0.8)
        x = (rng.random(n) < acc).astype(float)
        # Shared seeds: 10% of items are drawn again (a loss or a win alike); damage then loses a
        # further share `drop` of the items (right items turned wrong).
        y = np.where(rng.random(n) < 0.1, (rng.random(n) < acc).astype(float), x)
        y = np.where((y == 1) & (rng.random(n) < drop / acc), 0.0, y)
        sides = []
        for values, extra in ((x, 0.0), (y, loops)):
            trunc = rng.random(n) < 0.05 + extra
            sides.append(_records(values, trunc, rng.integers(20, 120, n), rng.random(n) < 0.03))
        base[bench], cand[bench] = sides
    return Run(dir=Path("/sim/base"), spec=_spec("base"), records=base), Run(dir=Path("/sim/cand"), spec=_spec("cand"), records=cand)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sims", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{'drop':>6} {'loops':>6} {'all signals':>12} {'accuracy only':>14}  (share DEGRADED over {args.sims} pairs)")
    for drop, loops in LADDER:
        t0 = time.perf_counter()
        hits = {"all": 0, "accuracy": 0}
        for _ in range(args.sims):
            base, cand = pair(rng, drop, loops)
            hits["all"] += grade(base, cand, GradeOptions(), Evidence()).decision == "DEGRADED"
            hits["accuracy"] += grade(base, cand, GradeOptions(signals=("accuracy",)), Evidence()).decision == "DEGRADED"
        se = (0.25 / args.sims) ** 0.5
        print(f"{100 * drop:>5.0f}% {100 * loops:>5.0f}% {hits['all'] / args.sims:>12.4f} {hits['accuracy'] / args.sims:>14.4f}  "
              f"(± {se:.3f} at most; {time.perf_counter() - t0:.0f}s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
