"""Harness overhead: N items through `python -m engine` vs bare `vllm.LLM.generate`, same prompts and sampling.

Both sides use the same engine settings (dtype, max_model_len, no chunked prefill, KV cache size,
max_num_seqs, eager mode) and the same per-request seeds; each runs in a fresh process, one after
the other, interleaved, on the same machine: the harness with its engine core inline and in a child
process, bare `LLM.generate` with its core in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) and in a
child process. Reported: wall time of the generation phase (engine already up) and of the whole
command, each as a ratio to the fastest driver (target: the harness's best mode <= 1.02).

    python bench_kernels/harness_overhead.py [--model smollm2-135m] [--bench arith|gsm8k --data-dir DIR] [--n 150] [-c 64]
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

BARE = r"""
import json, sys, time
t0 = time.monotonic()
from vllm import LLM, SamplingParams
cfg = json.load(open(sys.argv[1]))
llm = LLM(model=cfg["checkpoint"], dtype=cfg["dtype"], seed=0, max_model_len=cfg["max_model_len"],
          enable_chunked_prefill=False, enable_prefix_caching=False, max_num_seqs=cfg["concurrency"],
          max_num_batched_tokens=max(cfg["max_model_len"], 8192), kv_cache_memory_bytes=1 << 30,
          enforce_eager=True, distributed_executor_backend="uni", disable_log_stats=True)
ready = time.monotonic()
s = cfg["sampling"]
params = [SamplingParams(temperature=s["temperature"], top_p=s["top_p"], top_k=s["top_k"], min_p=s["min_p"],
                         presence_penalty=s["presence_penalty"], repetition_penalty=s["repetition_penalty"],
                         seed=seed, max_tokens=cfg["max_tokens"]) for seed in cfg["seeds"]]
prompts = [{"prompt_token_ids": ids} for ids in cfg["prompts"]]
start = time.monotonic()
outs = llm.generate(prompts, params, use_tqdm=False)
gen = time.monotonic() - start
tokens = sum(len(o.outputs[0].token_ids) for o in outs)
print("RESULT " + json.dumps({"generate_s": gen, "startup_s": ready - t0, "tokens": tokens}))
"""


def _harness(args, tmp: str, core: str, env: dict) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "--model", args.model, "--benches", args.bench, "--tier", "full",
         "--limit", str(args.n), "-c", str(args.concurrency), "--out", f"{tmp}/run-{core}", "--baseline", "none",
         "--engine-core", core, *(["--data-dir", str(args.data_dir)] if args.data_dir else []),
         *(["--sampling", args.sampling] if args.sampling else []), *(["--max-tokens", str(args.max_tokens)] if args.max_tokens else [])],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    total = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"harness run ({core}) failed:\n{proc.stderr[-3000:]}")
    gen = float(re.search(rf"{args.bench}: \d+ completions in ([\d.]+)s", proc.stderr).group(1))
    ready = float(re.search(r"engine ready in ([\d.]+)s", proc.stderr).group(1))
    records = [json.loads(line) for line in open(f"{tmp}/run-{core}/records/{args.bench}.jsonl")]
    return {"total_s": total, "generate_s": gen, "startup_s": ready, "tokens": sum(r["completion_tokens"] for r in records),
            "texts": {r["item_id"]: r["completion"] for r in records}}


def _bare(cfg_path: Path, inline: bool, env: dict) -> dict:
    env = {**env, "VLLM_ENABLE_V1_MULTIPROCESSING": "0" if inline else "1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", BARE, str(cfg_path)], env=env, capture_output=True, text=True)
    total = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"bare vLLM run failed:\n{proc.stderr[-3000:]}")
    # vLLM logs to stdout too: our line is the one with the marker.
    stats = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    return {"total_s": total, **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bench", default="arith", help="arith (default, no data) or gsm8k (needs --data-dir)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--sampling", default=None, help="preset (default: the harness's default for no-think)")
    parser.add_argument("--max-tokens", type=int, default=None)
    args = parser.parse_args()

    from engine.runner import plan_run, sample_seed
    from engine.sampling import resolve_sampling
    from engine.spec import VllmEngine

    sampling = resolve_sampling(args.sampling, False)
    plan = plan_run(
        model=args.model, tier="full", bench_names=[args.bench], think=False, seed=0, samples=1, sampling=sampling,
        max_tokens=args.max_tokens, data_dir=args.data_dir, limit=args.n,
        engine=VllmEngine(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=0),
    )  # fmt: skip
    bench = plan.benches[args.bench]
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "VLLM_LOGGING_LEVEL": "WARNING"}

    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "checkpoint": str(plan.checkpoint),
            "dtype": "bfloat16",
            "max_model_len": plan.spec.engine.max_model_len,
            "concurrency": args.concurrency,
            "max_tokens": bench.max_tokens,
            "sampling": {k: getattr(sampling, k) for k in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "repetition_penalty")},
            "seeds": [sample_seed(0, args.bench, it.id, 0) for it in bench.items],
            "prompts": [bench.prompts[it.id] for it in bench.items],
        }
        cfg_path = Path(tmp) / "cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        # Interleaved, one at a time: a drift in the machine's load hits every driver alike.
        rows = {
            "harness, core inline": _harness(args, tmp, "inline", env),
            "bare LLM, core in-process": _bare(cfg_path, True, env),
            "harness, core process": _harness(args, tmp, "process", env),
            "bare LLM, core child process": _bare(cfg_path, False, env),
        }
    fastest = min(r["generate_s"] for r in rows.values())
    fastest_total = min(r["total_s"] for r in rows.values())
    print(f"items {args.n} of {args.bench}, concurrency {args.concurrency}, model {args.model}")
    print(f"{'driver':<30}{'generate s':>11}{'ratio':>7}{'whole s':>9}{'ratio':>7}{'start s':>9}{'tokens':>8}")
    for name, r in rows.items():
        print(f"{name:<30}{r['generate_s']:>11.1f}{r['generate_s'] / fastest:>7.3f}{r['total_s']:>9.1f}"
              f"{r['total_s'] / fastest_total:>7.3f}{r['startup_s']:>9.1f}{r['tokens']:>8}")  # fmt: skip
    same = rows["harness, core inline"]["texts"] == rows["harness, core process"]["texts"]
    print(f"harness inline and process completions identical: {same}")
    print("RESULT " + json.dumps({k: {m: v for m, v in r.items() if m != "texts"} for k, r in rows.items()}))


if __name__ == "__main__":
    main()
