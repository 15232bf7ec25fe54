"""Command line.

    python -m engine --model M --tier smoke|standard|full [...]   run (and compare against a baseline)
    python -m engine compare BASE CAND [--json]                    compare two run directories
    python -m engine report RUN [--baseline BASE] --html FILE      self-contained HTML report
    python -m engine degrade --model M --method METHOD --out DIR   write a degraded candidate checkpoint
    python -m engine model [--model M]                             build/resolve a model, print its path
    python -m engine probe --model M --build-reference --out REF   KL probe: store a baseline's reference
    python -m engine probe --model M --reference REF               KL probe: score a candidate against it
    python -m engine data fetch [--benches a,b]                    download pinned hub datasets for offline runs
    python -m engine determinism --model M [--configs ...]        which engine settings break bit-exact outputs
    python -m engine import lm-eval PATH --out RUN_DIR             an lm-eval --log_samples output as a run dir

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
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                   help="reasoning mode (chat template enable_thinking=True); default: on when every chosen bench "
                   "is a reasoning bench (aime, hmmt), else off")
    p.add_argument("--sandbox", default="bwrap", choices=("bwrap", "none"),
                   help="where model-written code runs: bwrap (default) or none = UNSANDBOXED, at your own risk")
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
    p.add_argument("--data-dir", type=Path, default=None, help="local data: DIR/<bench>/test.jsonl, DIR/gpqa/gpqa_diamond.csv, DIR/tradequiz/*.jsonl|csv "
                   "(default: pinned hub files; tradequiz: its shipped example)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<model>-<tier>-...); rerun to resume")
    p.add_argument("--baseline", default=None, help="baseline run dir, a name under baselines/ (default: found by model), or 'none'")
    p.add_argument("--allow-differ", default="", help="contract fields to waive in the comparison (seed, engine.*)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--early-stop", action="store_true", help="stop a bench once its degradation is certain "
                   "(sequential test against the baseline, which must be known before the run)")
    p.add_argument("--probe", type=Path, default=None, help="tier 0: KL probe against this reference (file or dir) before the benches "
                   "(default: the one stored in --baseline DIR, if any)")
    p.add_argument("--probe-gate", type=float, default=None, metavar="KL", help="stop before the benches when the probe's mean KL exceeds KL")
    return p


def cmd_run(argv: list[str]) -> int:
    import benches
    from engine import compare, models, runner, sandbox
    from engine.records import read_run
    from engine.sampling import resolve_sampling

    args = _run_parser().parse_args(argv)
    bench_names = [b.strip() for b in args.benches.split(",") if b.strip()]
    if not bench_names:
        raise UserError("--benches: give at least one bench")
    if args.think is None:
        args.think = all(getattr(benches.get_bench(b), "THINK", False) for b in bench_names)
    sandbox.set_mode(args.sandbox)
    if args.sandbox == "none":
        print("warning: --sandbox none: model-written code runs UNSANDBOXED as this user", file=sys.stderr)
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
    if _probe_tier0(args) == EXIT_DEGRADED:
        return EXIT_DEGRADED
    run_dir = args.out or runner.default_run_dir(plan.spec)
    runner.prepare_run_dir(run_dir, plan.spec)
    print(f"run dir: {run_dir}", file=sys.stderr)
    early_base = _early_stop_baseline(args, plan, run_dir) if args.early_stop else None
    runner.run_event_loop(
        runner.execute(
            plan, run_dir, concurrency=args.concurrency, kv_cache_gib=args.kv_cache_gib, baseline=early_base, alpha=args.alpha
        )
    )
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


def _probe_tier0(args) -> int:
    """The KL probe before any bench: prints its panel; EXIT_DEGRADED when --probe-gate trips."""
    from probes import run as probe_run
    from probes.metrics import format_summary
    from probes.store import REFERENCE_FILE

    reference = args.probe
    if reference is None and args.baseline and (Path(args.baseline) / REFERENCE_FILE).is_file():
        reference = Path(args.baseline) / REFERENCE_FILE
    if reference is None:
        if args.probe_gate is not None:
            raise UserError("--probe-gate needs a reference: pass --probe REF (built with `python -m engine probe --build-reference`)")
        return EXIT_OK
    summary = probe_run.score_candidate(model=args.model, reference=reference, backend=args.backend, dtype=args.dtype, tp=args.tp)
    print(format_summary(summary, "(tier 0)"))
    if args.probe_gate is not None and not summary.kl_mean <= args.probe_gate:
        print(f"probe gate: mean KL {summary.kl_mean:.6f} > {args.probe_gate:g}: the candidate is already broken; benches not run")
        return EXIT_DEGRADED
    return EXIT_OK


def cmd_probe(argv: list[str]) -> int:
    from probes import run as probe_run
    from probes.metrics import format_summary

    p = argparse.ArgumentParser(
        prog="python -m engine probe",
        description="KL probe: build a baseline's reference (--build-reference --out REF) or score a candidate against one (--reference REF).",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--build-reference", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="reference file (.dhref) or directory (default: --from-run's directory)")
    p.add_argument("--reference", type=Path, default=None, help="reference to score --model against")
    p.add_argument("--from-run", type=Path, default=None, help="baseline run whose completions are the probe text")
    p.add_argument("--data-dir", type=Path, default=None, help="adds reference solutions: DIR/gsm8k, DIR/humaneval")
    p.add_argument("--text", type=Path, action="append", default=[], help="own probe text: .jsonl {prompt, response} or plain text (repeatable)")
    p.add_argument("--tier", default="smoke", help="token budget: smoke 8k | standard 64k | full 256k scored tokens")
    p.add_argument("--tokens", type=int, default=None, help="override the tier's token budget")
    p.add_argument("--think", action="store_true", help="chat template with thinking (default: the --from-run's mode)")
    p.add_argument("--top-k", default="64", help="reference bins per position, or 'full' (whole vocabulary)")
    p.add_argument("--store-dtype", default="float32", help="float32 | float16 (log-probs of the bins)")
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--gate", type=float, default=None, metavar="KL", help="exit 1 when mean KL exceeds KL")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.build_reference:
        out = args.out or args.from_run
        if out is None:
            raise UserError("probe --build-reference: give --out REF (or --from-run RUN to store it with the baseline run)")
        top_k = 0 if args.top_k == "full" else int(args.top_k)
        path, ref = probe_run.build_reference(
            model=args.model, out=out, run_dir=args.from_run, data_dir=args.data_dir, text_files=args.text, tier=args.tier,
            think=args.think, top_k=top_k, logprob_dtype=args.store_dtype, backend=args.backend, dtype=args.dtype, tp=args.tp,
            budget=args.tokens,
        )  # fmt: skip
        floor = ref.header.storage_floor
        print(f"reference: {path} ({len(ref.target_lp)} positions, top-{ref.header.top_k}, {ref.header.logprob_dtype}; "
              f"storage floor mean KL {floor['kl_mean']:.2e}, max {floor['kl_max']:.2e})")  # fmt: skip
        return EXIT_OK
    if args.reference is None:
        raise UserError("probe: give --reference REF to score --model, or --build-reference --out REF")
    summary = probe_run.score_candidate(model=args.model, reference=args.reference, backend=args.backend, dtype=args.dtype, tp=args.tp)
    if args.json:
        import msgspec

        print(msgspec.json.encode(summary).decode())
    else:
        print(format_summary(summary, args.model))
    return EXIT_DEGRADED if args.gate is not None and not summary.kl_mean <= args.gate else EXIT_OK


def _early_stop_baseline(args, plan, run_dir: Path):
    """The baseline an --early-stop run tests against as it goes (checked comparable before any item)."""
    from engine import compare, models
    from engine.records import Run, read_run

    if args.baseline == "none":
        raise UserError("--early-stop needs a baseline to test against: drop --baseline none")
    planned = Run(dir=Path(run_dir), spec=plan.spec, records={})
    if args.baseline and (Path(args.baseline) / "spec.json").is_file():
        base = read_run(args.baseline)
    else:
        base = compare.find_baseline([args.baseline, models.base_model_of(plan.checkpoint), plan.spec.model], planned)
    if base is None:
        raise UserError(f"--early-stop needs a baseline: pass --baseline RUN_DIR (none found under {compare.baselines_root()})")
    compare.check_comparable(base, planned, tuple(f.strip() for f in args.allow_differ.split(",") if f.strip()))
    return base


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


def cmd_report(argv: list[str]) -> int:
    from engine import compare, report
    from engine.records import read_run

    p = argparse.ArgumentParser(
        prog="python -m engine report",
        description="Write a self-contained HTML report of RUN (graded against a baseline when one is given or found).",
    )
    p.add_argument("run", type=Path)
    p.add_argument("--baseline", default=None, help="baseline run dir or name under baselines/ (default: found by model)")
    p.add_argument("--html", type=Path, required=True, help="output file")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--allow-differ", default="", help="contract fields to waive (seed, engine.backend, engine.dtype, ...)")
    args = p.parse_args(argv)
    cand = read_run(args.run)
    if args.baseline and (Path(args.baseline) / "spec.json").is_file():
        base = read_run(args.baseline)
    else:
        try:
            base = compare.find_baseline([args.baseline, cand.spec.model], cand)
        except NotComparable as exc:
            if args.baseline:
                raise
            # Nothing was asked for: a baseline that does not line up just means a report of the run alone.
            print(f"{exc}\nreporting {args.run} on its own", file=sys.stderr)
            base = None
        if base is None and args.baseline:
            raise UserError(f"--baseline {args.baseline}: neither a run dir nor a folder under {compare.baselines_root()}")
    if base is not None and base.dir.resolve() == cand.dir.resolve():
        base = None
    waive = tuple(f.strip() for f in args.allow_differ.split(",") if f.strip())
    result = report.write_report(cand, base, args.html, alpha=args.alpha, waive=waive)
    print(f"report: {args.html}")
    return EXIT_DEGRADED if result is not None and result.degraded else EXIT_OK


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


def cmd_data(argv: list[str]) -> int:
    import benches
    from benches import data

    p = argparse.ArgumentParser(prog="python -m engine data", description="Datasets of the benches.")
    actions = p.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="download the benches' pinned hub files into the huggingface_hub cache")
    fetch.add_argument("--benches", default=None, help="comma list (default: every bench with a hub dataset)")
    args = p.parse_args(argv)
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise UserError("data fetch: HF_HUB_OFFLINE is set; unset it to download (this command needs the network)")
    named = [b.strip() for b in args.benches.split(",") if b.strip()] if args.benches else None
    failed = 0
    for name in named or benches.BENCHES:
        module = benches.get_bench(name)
        hub = getattr(module, "HUB", None)
        if hub is None:
            if named:
                print(f"{name}: nothing to fetch (no hub dataset: it is generated, or read from --data-dir)")
            continue
        if hub.gated and not named and not os.environ.get("HF_TOKEN"):
            # By default a gated set is skipped quietly; naming it shows what it needs.
            print(f"{name}: skipped ({hub.repo} is gated: set HF_TOKEN, or name it in --benches)")
            continue
        try:
            path = data.fetch(module)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {hub.label()} -> {path}")
    return UserError.exit_code if failed else EXIT_OK


def cmd_determinism(argv: list[str]) -> int:
    from engine import determinism
    from engine.sampling import resolve_sampling

    p = argparse.ArgumentParser(
        prog="python -m engine determinism",
        description="Run the same prompts (greedy and seeded-sampled) several times under each engine "
        "configuration, each in a fresh engine, and report which settings break bit-exact determinism.",
    )
    p.add_argument("--model", required=True, help="HF checkpoint dir, or 'smollm2-135m'")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--benches", default="arith", help="prompts from the first --n items of each bench (default arith)")
    source.add_argument("--prompts", type=Path, default=None, help="prompts file: one per line, or .jsonl with prompt/messages")
    p.add_argument("--data-dir", type=Path, default=None, help="local bench data (as for a run)")
    p.add_argument("--n", type=int, default=32, help="prompts per bench (or first N of --prompts; default 32)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per configuration (default 3)")
    p.add_argument("--configs", default=",".join(determinism.CONFIGS), help=f"comma list of {', '.join(determinism.CONFIGS)}")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--think", action="store_true", help="reasoning mode (chat template and sampling preset)")
    p.add_argument("--sampling", default=None, help="preset of the sampled mode (default follows --think)")
    p.add_argument("--kv-cache-gib", type=float, default=None)
    p.add_argument("--out", type=Path, default=None, help="records dir (default runs/determinism-<model>-...)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    determinism.command(
        model=args.model,
        bench_names=[b.strip() for b in args.benches.split(",") if b.strip()],
        prompts_file=args.prompts,
        data_dir=args.data_dir,
        n=args.n,
        repeats=args.repeats,
        config_names=[c.strip() for c in args.configs.split(",") if c.strip()],
        max_tokens=args.max_tokens,
        backend=args.backend,
        dtype=args.dtype,
        seed=args.seed,
        think=args.think,
        sampling=resolve_sampling(args.sampling, args.think),
        kv_cache_gib=args.kv_cache_gib,
        out_dir=args.out,
        as_json=args.json,
    )
    return EXIT_OK


def cmd_import(argv: list[str]) -> int:
    from engine.importers import lm_eval

    p = argparse.ArgumentParser(prog="python -m engine import", description="Turn another harness's output into a run directory.")
    sources = p.add_subparsers(dest="source", required=True)
    lm = sources.add_parser("lm-eval", help="lm-evaluation-harness output written with --log_samples")
    lm.add_argument("path", type=Path, help="lm-eval --output_path folder, or one results_*.json with its samples_*.jsonl beside it")
    lm.add_argument("--out", type=Path, required=True, help="run directory to write")
    lm.add_argument("--metric", default=None, help=f"per-document score (default: each task's primary metric; e.g. acc_norm, {lm_eval.MARGIN})")
    args = p.parse_args(argv)
    lm_eval.print_summary(lm_eval.import_run(args.path, args.out, args.metric), args.out)
    return EXIT_OK


SUBCOMMANDS = {
    "compare": cmd_compare, "report": cmd_report, "degrade": cmd_degrade, "model": cmd_model, "data": cmd_data,
    "determinism": cmd_determinism, "probe": cmd_probe, "import": cmd_import,
}


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
