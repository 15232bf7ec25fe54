"""Command line.

    python -m engine --model M --tier smoke|standard|full [...]   run (and compare against a baseline)
    python -m engine compare BASE CAND [--json]                    compare two run directories
    python -m engine degrade --model M --method METHOD --out DIR   write a degraded candidate checkpoint
    python -m engine model [--model M]                             build/resolve a model, print its path

Exit codes: 0 no degradation detected, 1 degradation detected, 2 bad input, 3 not comparable.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.errors import NotComparable, UserError

EXIT_OK, EXIT_DEGRADED = 0, 1


def _run_parser() -> argparse.ArgumentParser:
    import benches

    p = argparse.ArgumentParser(
        prog="python -m engine",
        description="Run benches on a model and, given a baseline, grade it with paired tests. "
        "Subcommands: compare, degrade, model (see `python -m engine SUBCOMMAND -h`).",
    )
    p.add_argument("--model", required=True, help="HF checkpoint dir, or 'smollm2-135m' (embedded tiny model)")
    p.add_argument("--tier", default="smoke", help="smoke (150/bench) | standard | full (default smoke)")
    p.add_argument("--benches", default=",".join(benches.OFFLINE_BENCHES), help=f"comma list of {', '.join(benches.BENCHES)}")
    p.add_argument("--think", action="store_true", help="reasoning mode (chat template enable_thinking=True)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1, help="samples per item (each with its own seed)")
    p.add_argument("--sampling", default=None, help="preset: qwen-think | qwen-nothink | greedy (default follows --think)")
    for name, typ in (("temperature", float), ("top-p", float), ("top-k", int), ("min-p", float), ("presence-penalty", float), ("repetition-penalty", float)):
        p.add_argument(f"--{name}", type=typ, default=None, help="override the preset's value")
    p.add_argument("--limit", type=int, default=None, help="first N items of the tier's selection per bench (quick checks)")
    p.add_argument("--max-tokens", type=int, default=None, help="generation cap for every bench (default: per bench and mode)")
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (vllm)")
    p.add_argument("--chunked-prefill", action="store_true", help="enable chunked prefill (off by default: reproducibility)")
    p.add_argument("--prefix-caching", action="store_true", help="enable prefix caching (off by default)")
    p.add_argument("--bs1", action="store_true", help="batch size 1 (max_num_seqs=1): determinism-grade, slow")
    p.add_argument("--max-model-len", type=int, default=None, help="default: longest prompt + cap")
    p.add_argument("--kv-cache-gib", type=float, default=None, help="KV cache size (vllm; default 1 GiB on CPU, vLLM's own on GPU)")
    p.add_argument("-c", "--concurrency", type=int, default=64, help="requests in flight (default 64)")
    p.add_argument("--data-dir", type=Path, default=None, help="local data: DIR/<bench>/test.jsonl (default: hub download)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<model>-<tier>-...); rerun to resume")
    p.add_argument("--baseline", default=None, help="baseline run dir, a name under baselines/ (default: found by model), or 'none'")
    p.add_argument("--allow-differ", default="", help="contract fields to waive in the comparison (seed, engine.*)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    return p


def cmd_run(argv: list[str]) -> int:
    from engine import compare, models, runner
    from engine.records import read_run
    from engine.sampling import resolve_sampling

    args = _run_parser().parse_args(argv)
    sampling = resolve_sampling(
        args.sampling,
        args.think,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        presence_penalty=args.presence_penalty,
        repetition_penalty=args.repetition_penalty,
    )
    bench_names = [b.strip() for b in args.benches.split(",") if b.strip()]
    if not bench_names:
        raise UserError("--benches: give at least one bench")
    plan = runner.plan_run(
        model=args.model,
        tier=args.tier,
        bench_names=bench_names,
        think=args.think,
        seed=args.seed,
        samples=args.samples,
        sampling=sampling,
        max_tokens=args.max_tokens,
        backend=args.backend,
        dtype=args.dtype,
        chunked_prefill=args.chunked_prefill,
        bs1=args.bs1,
        prefix_caching=args.prefix_caching,
        tensor_parallel=args.tp,
        max_model_len=args.max_model_len,
        data_dir=args.data_dir,
        limit=args.limit,
    )
    run_dir = args.out or runner.default_run_dir(plan.spec)
    runner.prepare_run_dir(run_dir, plan.spec)
    print(f"run dir: {run_dir}", file=sys.stderr)
    runner.run_event_loop(runner.execute(plan, run_dir, concurrency=args.concurrency, kv_cache_gib=args.kv_cache_gib))
    cand = read_run(run_dir)
    if args.baseline == "none":
        print(f"records are in {run_dir}")
        return EXIT_OK
    if args.baseline and Path(args.baseline).is_dir() and (Path(args.baseline) / "spec.json").is_file():
        base = read_run(args.baseline)
    else:
        names = [args.baseline, models.base_model_of(plan.checkpoint), plan.spec.model]
        base = compare.find_baseline(names, cand)
        if base is None:
            if args.baseline:
                raise UserError(f"--baseline {args.baseline}: neither a run dir nor a folder under {compare.baselines_root()}")
            print(f"no baseline for {plan.spec.model} under {compare.baselines_root()}: records are in {run_dir}")
            return EXIT_OK
    if base.dir.resolve() == Path(run_dir).resolve():
        print(f"{run_dir} is the baseline itself: nothing to compare")
        return EXIT_OK
    return _compare_and_print(base, cand, args.alpha, args.allow_differ, args.json)


def _compare_and_print(base, cand, alpha: float, allow_differ: str, as_json: bool) -> int:
    from engine import compare

    waive = tuple(f.strip() for f in allow_differ.split(",") if f.strip())
    result = compare.compare_runs(base, cand, alpha=alpha, waive=waive)
    compare.print_comparison(result, as_json=as_json)
    return EXIT_DEGRADED if result.degraded else EXIT_OK


def cmd_compare(argv: list[str]) -> int:
    from engine.records import read_run

    p = argparse.ArgumentParser(prog="python -m engine compare", description="Grade run CAND against baseline run BASE.")
    p.add_argument("base", type=Path)
    p.add_argument("cand", type=Path)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--allow-differ", default="", help="contract fields to waive (seed, engine.backend, engine.dtype, ...)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    return _compare_and_print(read_run(args.base), read_run(args.cand), args.alpha, args.allow_differ, args.json)


def cmd_degrade(argv: list[str]) -> int:
    from engine.degrade import degrade

    p = argparse.ArgumentParser(prog="python -m engine degrade", description="Write a degraded copy of a checkpoint.")
    p.add_argument("--model", required=True)
    p.add_argument("--method", required=True, help="rtn-int8 | rtn-int4 | rtn-int3 | prune-N | noise-S")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0, help="seed of noise-S")
    args = p.parse_args(argv)
    print(degrade(args.model, args.method, args.out, seed=args.seed))
    return EXIT_OK


def cmd_model(argv: list[str]) -> int:
    from engine import models

    p = argparse.ArgumentParser(prog="python -m engine model", description="Build or resolve a model; print its checkpoint dir.")
    p.add_argument("--model", default=models.SMOLLM2_NAME)
    args = p.parse_args(argv)
    checkpoint = models.resolve_model(args.model)
    print(checkpoint)
    print(f"fingerprint {models.checkpoint_fingerprint(checkpoint)}", file=sys.stderr)
    return EXIT_OK


SUBCOMMANDS = {"compare": cmd_compare, "degrade": cmd_degrade, "model": cmd_model}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = SUBCOMMANDS.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else cmd_run(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except NotComparable as exc:
        print(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished items are on disk; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
