"""Harness overhead: N items through `python -m engine` vs bare `vllm.LLM.generate`, same prompts and sampling.

Both sides use the same engine settings (dtype, max_model_len, no chunked prefill, KV cache size,
max_num_seqs, eager mode) and the same per-request seeds; each runs in a fresh process, one after
the other, on the same machine. Reported: wall time of the generation phase (engine already up) and
of the whole command, and their ratios (target: generation ratio <= 1.05).

    python bench_kernels/harness_overhead.py [--model smollm2-135m] [--n 150] [-c 64]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    args = parser.parse_args()

    from engine.runner import plan_run, sample_seed
    from engine.sampling import resolve_sampling

    sampling = resolve_sampling(None, False)
    common = dict(model=args.model, tier="full", bench_names=["arith"], think=False, seed=0, samples=1, sampling=sampling,
                  max_tokens=None, backend="vllm", dtype="bfloat16", chunked_prefill=False, bs1=False,
                  prefix_caching=False, tensor_parallel=1, max_model_len=None, data_dir=None, limit=args.n)
    plan = plan_run(**common)
    bench = plan.benches["arith"]
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "VLLM_LOGGING_LEVEL": "WARNING"}

    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "checkpoint": str(plan.checkpoint),
            "dtype": "bfloat16",
            "max_model_len": plan.spec.engine.max_model_len,
            "concurrency": args.concurrency,
            "max_tokens": bench.max_tokens,
            "sampling": {k: getattr(sampling, k) for k in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "repetition_penalty")},
            "seeds": [sample_seed(0, "arith", it.id, 0) for it in bench.items],
            "prompts": [bench.prompts[it.id] for it in bench.items],
        }
        cfg_path = Path(tmp) / "cfg.json"
        cfg_path.write_text(json.dumps(cfg))

        t0 = time.monotonic()
        harness = subprocess.run(
            [sys.executable, "-m", "engine", "--model", args.model, "--benches", "arith", "--tier", "full",
             "--limit", str(args.n), "-c", str(args.concurrency), "--out", f"{tmp}/run", "--baseline", "none"],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )
        harness_total = time.monotonic() - t0
        if harness.returncode != 0:
            sys.exit(f"harness run failed:\n{harness.stderr[-3000:]}")
        harness_gen = float(re.search(r"arith: \d+ completions in ([\d.]+)s", harness.stderr).group(1))
        harness_ready = float(re.search(r"engine ready in ([\d.]+)s", harness.stderr).group(1))
        tokens = sum(json.loads(line)["completion_tokens"] for line in open(f"{tmp}/run/records/arith.jsonl"))

        t0 = time.monotonic()
        bare = subprocess.run([sys.executable, "-c", BARE, str(cfg_path)], env=env, capture_output=True, text=True)
        bare_total = time.monotonic() - t0
        if bare.returncode != 0:
            sys.exit(f"bare vLLM run failed:\n{bare.stderr[-3000:]}")
        # vLLM logs to stdout too: our line is the one with the marker.
        bare_stats = json.loads(next(line for line in bare.stdout.splitlines() if line.startswith("RESULT "))[7:])

    print(f"items {args.n}, concurrency {args.concurrency}, model {args.model}")
    print(f"{'':<22}{'harness':>10}{'bare LLM':>10}{'ratio':>8}")
    print(f"{'generation phase (s)':<22}{harness_gen:>10.1f}{bare_stats['generate_s']:>10.1f}{harness_gen / bare_stats['generate_s']:>8.3f}")
    print(f"{'whole command (s)':<22}{harness_total:>10.1f}{bare_total:>10.1f}{harness_total / bare_total:>8.3f}")
    print(f"{'engine start (s)':<22}{harness_ready:>10.1f}{bare_stats['startup_s']:>10.1f}")
    print(f"{'completion tokens':<22}{tokens:>10}{bare_stats['tokens']:>10}")


if __name__ == "__main__":
    main()
