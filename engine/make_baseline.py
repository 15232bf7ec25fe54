"""`python -m engine baseline --model BASE --tier T`: everything a candidate is graded against, in one command.

Under `baselines/NAME/RUN/` (NAME: the model's label unless --name): the baseline run itself, its KL
reference (the probe's tier 0) and its noise floor (how often it disagrees with itself). A candidate
run later finds it by name: the same model label, or the model `engine degrade` made it from; any other
candidate names it with `--baseline NAME`. Rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from engine import checks
from engine.errors import ExitCode, UserError

# Set for the baseline by this command; a candidate's command must not carry them over.
_OWN_RUN_FLAGS = {"--out", "--baseline", "--early-stop", "--probe", "--probe-gate", "--dry-run", "--calibrate", "--json"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine baseline",
        allow_abbrev=False,  # a run flag must never be taken for an abbreviation of one of these
        description="Make a baseline in one command: run BASE on the benches, store the KL probe's reference and the "
        "noise floor beside the run under baselines/NAME/, then print how to commit it and the command that grades "
        "a candidate against it. Other flags are run flags (see `python -m engine -h`: --benches, --data-dir, --seed, "
        "--limit, --dtype, --engine-arg, ...), used for the baseline and repeated in the candidate command.",
    )
    p.add_argument("--model", required=True, help="the baseline model: HF checkpoint dir, hub id owner/name, or smollm2-135m")
    p.add_argument("--tier", default="smoke", help="smoke | standard | full (default smoke)")
    p.add_argument("--name", default=None, help="folder under baselines/ (default: the model's name)")
    p.add_argument("--run-name", default=None, help="the run's folder inside it (default TIER-MODE-sSEED[-nLIMIT])")
    p.add_argument("--no-probe", action="store_true", help="skip the KL reference")
    p.add_argument("--no-noise-floor", action="store_true", help="skip the noise floor (two reruns of the baseline)")
    return p


def command(argv: list[str], *, run: Callable[[list[str]], int], run_parser: Callable[[], argparse.ArgumentParser]) -> int:
    """`run` is the run command (`python -m engine ...` as a function), `run_parser` its parser: passed in
    by the command line, which this module sits under."""
    import benches
    from engine import baselines, battery, models

    p = _parser()
    own, run_flags = checks.split_own_flags(p, argv)
    args = p.parse_args(own)
    taken = _OWN_RUN_FLAGS & {f.split("=")[0] for f in run_flags}
    if taken:
        raise UserError(f"baseline: {', '.join(sorted(taken))} is set by this command; drop it")
    flags = run_parser().parse_args(["--model", args.model, "--tier", args.tier, *run_flags])
    if flags.backend == "openai":
        raise UserError(
            "baseline: a served model's baseline is a run: `python -m engine --backend openai --base-url URL --model NAME "
            "--tier T --baseline none --out baselines/NAME/RUN` (its KL reference needs the weights in-process: "
            "`python -m engine probe --build-reference --model CHECKPOINT --from-run baselines/NAME/RUN`)"
        )
    model = models.with_revision(args.model, flags.revision)
    name = args.name or models.model_label(model)
    bench_names = flags.benches.split(",") if flags.benches else battery.default_benches(flags.data_dir)[0]
    think = flags.think if flags.think is not None else all(getattr(benches.get_bench(b), "THINK", False) for b in bench_names)
    run_name = args.run_name or f"{args.tier}-{'think' if think else 'nothink'}-s{flags.seed}" + (
        f"-n{flags.limit}" if flags.limit else ""
    )
    run_dir = baselines.baselines_root() / name / run_name
    existed = (run_dir / "spec.json").is_file()
    try:
        code = run(["--model", args.model, "--tier", args.tier, *run_flags, "--baseline", "none", "--out", str(run_dir)])
    except UserError as exc:
        if existed and "holds a run of another spec" in str(exc):  # --out is ours: name what the user can change
            raise UserError(f"{exc.args[0].removesuffix('; choose another --out')}; give this baseline "
                            f"another --run-name (or --name)") from None  # fmt: skip
        raise
    if code != ExitCode.PASS:
        print(f"baseline: the run stopped (exit {code}); rerun this command to resume", file=sys.stderr)
        return code
    made = ["run"]
    if not args.no_probe:
        made += _probe_reference(model, run_dir, flags)
    if not args.no_noise_floor:
        from engine import noise_floor

        floor = noise_floor.measure(
            run_dir, model=model, data_dir=flags.data_dir, out_root=Path("runs") / f"noise-floor-{name}-{run_name}",
            concurrency=flags.concurrency, kv_cache_gib=flags.kv_cache_gib,
        )  # fmt: skip
        print(noise_floor.format_floor(floor))
        made.append("noise floor")
    print(_summary(run_dir, name, made, args.tier, [*run_flags]))
    return ExitCode.PASS


def _probe_reference(model: str, run_dir: Path, flags: argparse.Namespace) -> list[str]:
    from engine import engine_args
    from probes import run as probe_run

    path, ref = probe_run.build_reference(
        model=model, out=run_dir, run_dir=run_dir, data_dir=flags.data_dir, text_files=[], tier=flags.tier,
        backend=flags.backend, dtype=flags.dtype, tp=flags.tp, engine_args=engine_args.validate(engine_args.parse(flags.engine_arg)),
    )  # fmt: skip
    print(f"KL reference: {path} ({len(ref.target_lp)} positions)")
    return ["KL reference"]


def candidate_command(name: str, tier: str, run_flags: list[str]) -> str:
    """The command that grades a candidate against baselines/NAME with the baseline's own settings."""
    keep, rest = [], list(run_flags)
    while rest:  # the baseline's --revision is the baseline's own
        token = rest.pop(0)
        if token == "--revision":
            rest = rest[1:]
        elif not token.startswith("--revision="):
            keep.append(token)
    return shlex.join(["python", "-m", "engine", "--model", "CANDIDATE", "--tier", tier, *keep, "--baseline", name])


def _summary(run_dir: Path, name: str, made: list[str], tier: str, run_flags: list[str]) -> str:
    return "\n".join([
        f"baseline {name}: {', '.join(made)} in {run_dir}",
        f"commit it:   git add {shlex.quote(str(run_dir))} && git commit -m 'baseline {name} ({run_dir.name})'",
        f"a candidate: {candidate_command(name, tier, run_flags)}",
        f"             (--baseline {name} may be left out for the same model name, or a candidate made from it by `engine degrade`)",
    ])  # fmt: skip
