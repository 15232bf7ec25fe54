"""Throughput of engine replicas and ranks: the same N items through `python -m engine` with --dp 1, --dp 2
(and optionally --tp 3), one run after another on this machine, each in a fresh process.

Reported per configuration: generated tokens/s of the generation phase (engine already up), its wall
time, the engine's startup and the whole command, and whether the completions equal those of --dp 1
(float32 keeps them equal: same per-request seeds, another batch composition only).

    python bench_kernels/data_parallel.py [--model smollm2-135m] [--n 150] [-c 64] [--max-tokens 64] [--dtype float32] [--tp3]

On a 2-core CPU box two replicas share the same two cores (one each), so do not expect a speed-up
there: the point is to measure the cost of the extra process and check equality. On GPUs each replica
has its own devices.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(args, out: Path, flags: list[str]) -> dict:
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "VLLM_LOGGING_LEVEL": "WARNING"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--model", args.model, "--benches", "arith", "--tier", "full", "--limit", str(args.n),
         "-c", str(args.concurrency), "--max-tokens", str(args.max_tokens), "--dtype", args.dtype, "--out", str(out),
         "--baseline", "none", *flags],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    total = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"run {' '.join(flags)} failed:\n{proc.stderr[-3000:]}")
    timing = json.loads((out / "timing.jsonl").read_text().splitlines()[-1])
    ready = float(re.search(r"engine ready in ([\d.]+)s", proc.stderr).group(1))
    records = [json.loads(line) for line in (out / "records" / "arith.jsonl").read_text().splitlines()]
    return {"total_s": total, "generate_s": timing["wall_s"], "tokens": timing["generated_tokens"], "startup_s": ready,
            "texts": {r["item_id"]: r["completion"] for r in records}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tp3", action="store_true", help="also --tp 3 (a model whose heads divide by 3)")
    args = parser.parse_args()
    configs = {"--dp 1 (inline core)": [], "--dp 1 (process core)": ["--engine-core", "process"], "--dp 2": ["--dp", "2"]}
    if args.tp3:
        configs["--tp 3"] = ["--tp", "3"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = {name: _run(args, Path(tmp) / f"run{i}", flags) for i, (name, flags) in enumerate(configs.items())}
    reference = rows["--dp 1 (inline core)"]["texts"]
    print(f"{args.n} arith items, {args.max_tokens} tokens cap, concurrency {args.concurrency}, {args.dtype}, model {args.model}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'configuration':<24}{'tok/s':>8}{'generate s':>12}{'start s':>9}{'whole s':>9}{'tokens':>8}  same completions")
    for name, r in rows.items():
        print(f"{name:<24}{r['tokens'] / r['generate_s']:>8.1f}{r['generate_s']:>12.1f}{r['startup_s']:>9.1f}{r['total_s']:>9.1f}"
              f"{r['tokens']:>8}  {r['texts'] == reference}")  # fmt: skip
    print("RESULT " + json.dumps({k: {m: v for m, v in r.items() if m != "texts"} for k, r in rows.items()}))


if __name__ == "__main__":
    main()
