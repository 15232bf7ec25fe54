"""Candidate sweeps: one ordinary run per candidate against one baseline, on a Ray cluster or one after another.

    python -m engine sweep --baseline B --models M1,M2,... [run flags] [--gpus-per-run K] [--out DIR]

Each candidate's run is the plain command `python -m engine --model M --baseline B --out DIR/<name> [run flags]`
started as a child process: its run directory, records, resume and exit code are exactly those of a run
started by hand, and every vLLM engine lives and dies in its own process. On a Ray cluster each child
is started by a Ray task that holds K GPUs (K CPUs on a cluster without GPUs), so Ray places the runs and
exports CUDA_VISIBLE_DEVICES for them; without Ray (`--ray-address local`, or ray not installed) the
children run one after another here. The run directories must be on a filesystem every node sees.

A candidate whose run directory holds a finished run (sealed by its manifest) is not started again; a
partial one is started again and resumes through the runner's own resume. The summary grades every
finished run against the baseline in this process (engine/compare.py), with the run's tier-0 KL probe
panel (probe.json) beside it.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec

from engine import baselines
from engine.errors import EXIT_CRASH, ExitCode, Interrupted, UserError
from engine.grade import GradeOptions
from engine.grade.load import grade_runs, write_verdict
from engine.grade.text import delta_cell
from engine.records import MANIFEST_FILE, SPEC_FILE, being_written, read_run

EXIT_OK, EXIT_DEGRADED, EXIT_INCOMPLETE, EXIT_GATE_FAILED = ExitCode.PASS, ExitCode.DEGRADED, ExitCode.INCOMPLETE, ExitCode.GATE_FAILED
# The sweep exits with the worst of its runs' exit codes (engine/errors.py ExitCode), worst last: a run
# that did not give an answer (interrupted, crashed, bad input, not comparable, invalid, incomplete)
# outranks any answer, and a failed trait gate outranks a plain degradation, as in a single run.
SEVERITY = (ExitCode.PASS, ExitCode.NOT_SHOWN, ExitCode.DEGRADED, ExitCode.GATE_FAILED, ExitCode.INCOMPLETE,
            ExitCode.INVALID, ExitCode.NOT_COMPARABLE, ExitCode.BAD_INPUT, ExitCode.ERROR, ExitCode.INTERRUPTED)  # fmt: skip
LOCAL = "local"  # --ray-address local: no Ray, the runs one after another in this process
CHILD_STOP_WAIT_S = 120.0  # a child told to stop (SIGTERM) closes its engine and keeps its records; then SIGKILL
PR_SET_PDEATHSIG = 1


class Candidate(msgspec.Struct, kw_only=True):
    name: str  # its run directory's name under --out, and its row in the summary
    model: str  # as given to --model (a checkpoint dir made absolute, or a known name)
    run_dir: Path


class ProbePanel(msgspec.Struct, kw_only=True):
    """The two numbers of a run's tier-0 probe (probes/metrics.py Summary) the summary shows."""

    kl_mean: float
    top1_agree: float


class BenchCell(msgspec.Struct, kw_only=True):
    verdict: str  # compare's verdict line for the bench
    delta: float  # candidate - baseline, accuracy units
    delta_ci: tuple[float, float]
    p_holm: float
    shown: str  # Δ as compare's table prints it


class Outcome(msgspec.Struct, kw_only=True):
    name: str
    model: str
    run_dir: str
    exit_code: int
    status: str  # "ran" | "finished before" (not rerun) | "failed" | "interrupted" | "not run"
    wall_s: float | None = None  # this sweep's time on the run (None: not run now)
    benches: dict[str, BenchCell] = {}
    verdict_line: str = ""
    probe: ProbePanel | None = None
    problem: str = ""  # why there is no grade (not comparable, exit code of a failed run, ...)


# ---- the candidates and their run directories ----------------------------------------------------------


def _name_of(model: str) -> str:
    name = Path(model).name if os.sep in model or Path(model).exists() else model
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def plan_candidates(models: list[str], out: Path) -> list[Candidate]:
    """One run directory per candidate under `out`, named after the model (its folder name)."""
    if not models:
        raise UserError("--models: give at least one candidate (comma list of checkpoint dirs or names)")
    seen: dict[str, str] = {}
    found = []
    for model in models:
        path = Path(model).expanduser()
        if path.exists():
            model = str(path.resolve())  # a child may start elsewhere (a Ray worker on another node)
        name = _name_of(model)
        if name in seen:
            raise UserError(f"--models: {seen[name]} and {model} would share the run directory {out / name}; "
                            "give the checkpoints distinct folder names")  # fmt: skip
        seen[name] = model
        found.append(Candidate(name=name, model=model, run_dir=out.resolve() / name))
    return found


def finished(run_dir: Path) -> bool:
    """A run completed and sealed: its manifest is written once every item is on disk, and removed
    before any append. Nothing must be writing to it right now."""
    return (run_dir / SPEC_FILE).is_file() and (run_dir / MANIFEST_FILE).is_file() and not being_written(run_dir)


def check_same_run(run_dir: Path, expected: dict[str, object]) -> None:
    """A finished run that is not rerun must be the run this sweep asks for: the run command would refuse
    a run directory of another spec, the sweep (which does not start it) checks the fields the flags set."""
    from engine.records import read_spec

    spec = read_spec(run_dir)
    held = {"tier": spec.tier, "seed": spec.seed, "samples": spec.samples, "benches": sorted(b.name for b in spec.benches)}
    for field, want in expected.items():
        if field in held and held[field] != want:
            raise UserError(f"{run_dir} holds a finished run of another spec ({field}: {held[field]!r} there vs "
                            f"{want!r} now); choose another --out")  # fmt: skip


def run_argv(candidate: Candidate, baseline: str, run_flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "engine", "--model", candidate.model, "--baseline", baseline,
            "--out", str(candidate.run_dir), *run_flags]  # fmt: skip


# ---- one run as a child process -----------------------------------------------------------------


def _die_with_parent() -> None:
    # In the child before exec: SIGTERM when the thread that started it dies (a killed sweep, a Ray
    # worker torn down). The harness takes SIGTERM as Ctrl-C: it stops its engine and keeps its records;
    # its own watchdog (engine/reaper.py) reaps the engine's processes should it die harder.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _child_pythonpath() -> str:
    """PYTHONPATH with this harness's package root first: a child runs the same code as the sweep."""
    return os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]))


def run_child(argv: list[str], log_path: str) -> int:
    """Run one harness command to its end, output appended to `log_path`; its exit code.

    Interrupted (KeyboardInterrupt: Ctrl-C, the SIGTERM handler of engine/__main__.py, a Ray cancel),
    it tells the child to stop, waits for it to close cleanly, then re-raises.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": _child_pythonpath()}
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 preexec_fn=_die_with_parent)  # fmt: skip
        try:
            while True:
                # Waits of a second: Ray's cancel interrupts a task's thread between bytecodes only.
                try:
                    return child.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    continue
        except BaseException:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=CHILD_STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            raise


# ---- grading and the summary --------------------------------------------------------------------


def _probe_panel(run_dir: Path) -> ProbePanel | None:
    from probes.metrics import PROBE_FILE

    path = run_dir / PROBE_FILE
    if not path.is_file():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=ProbePanel)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UserError(f"{path}: not a probe panel ({exc}); it is written by the harness, do not edit it") from exc


def grade(outcome: Outcome, base, grading: GradeOptions) -> Outcome:
    """Fill the outcome of a run from its records: the Verdict against the baseline (engine/grade/,
    the same value `compare` prints, saved as the run's verdict.json), and the exit code a run command
    would give (a run that failed keeps its own code)."""
    run_dir = Path(outcome.run_dir)
    outcome.probe = _probe_panel(run_dir)
    if not finished(run_dir):
        outcome.problem = outcome.problem or "no finished run"
        return outcome
    try:
        verdict = grade_runs(base, read_run(run_dir), grading)
    except UserError as exc:
        outcome.problem = str(exc).strip().splitlines()[0]
        outcome.exit_code = max(outcome.exit_code, type(exc).exit_code, key=SEVERITY.index)
        return outcome
    try:
        write_verdict(run_dir, verdict)
    except OSError as exc:
        _say(f"{outcome.name}: verdict.json not written ({exc.strerror or exc})")
    if verdict.decision == "NOT_COMPARABLE":
        outcome.problem = verdict.headline
    outcome.benches = {
        r.bench: BenchCell(verdict=r.verdict, delta=r.delta, delta_ci=r.delta_ci, p_holm=r.p_holm, shown=delta_cell(r))
        for r in verdict.benches
    }
    outcome.verdict_line = verdict.headline
    outcome.exit_code = max(outcome.exit_code, verdict.exit_code, key=SEVERITY.index)
    return outcome


def worst(codes: list[int]) -> int:
    return max(codes, key=lambda c: SEVERITY.index(c) if c in SEVERITY else SEVERITY.index(EXIT_CRASH), default=EXIT_OK)


def _short(verdict: str) -> str:
    """DEGRADED / IMPROVED / INCOMPLETE / EQUIVALENT / NOT SHOWN / no change ...: the verdict's head."""
    return verdict.split(" (")[0].split(":")[0]


def format_summary(outcomes: list[Outcome], baseline: str) -> str:
    bench_names = list(dict.fromkeys(b for o in outcomes for b in o.benches))
    cells = {
        (o.name, b): f"{_short(o.benches[b].verdict)} {o.benches[b].shown}" if b in o.benches else "—"
        for o in outcomes
        for b in bench_names
    }
    name_w = max([len("candidate"), *(len(o.name) for o in outcomes)])
    widths = {b: max([len(b), *(len(cells[o.name, b]) for o in outcomes)]) for b in bench_names}
    header = f"{'candidate':<{name_w}}  {'exit':>4}  " + "  ".join(f"{b:<{widths[b]}}" for b in bench_names)
    header += f"  {'KL mean':>9}  {'top-1':>7}  run"
    lines = [f"sweep against baseline {baseline}", header, "-" * len(header)]
    for o in outcomes:
        kl = f"{o.probe.kl_mean:>9.6f}  {100 * o.probe.top1_agree:>6.2f}%" if o.probe else f"{'—':>9}  {'—':>7}"
        row = f"{o.name:<{name_w}}  {o.exit_code:>4}  " + "  ".join(f"{cells[o.name, b]:<{widths[b]}}" for b in bench_names)
        note = f" ({o.status})" if o.status != "ran" else ""
        lines.append(f"{row}  {kl}  {o.run_dir}{note}")
        if o.problem:
            lines.append(f"{'':<{name_w}}  ⚠ {o.problem}")
    lines.append("Δ in accuracy points, candidate − baseline [interval at the bench's Holm level]; KL: tier-0 probe "
                 "(mean KL(base‖cand), same top-1 token), — where the run has none")  # fmt: skip
    if any("ʷ" in cell for cell in cells.values()):
        lines.append("ʷ full-split estimate: a subset tier's items reweighted to the split's categories "
                     "(`python -m engine compare BASE RUN` for the details)")  # fmt: skip
    return "\n".join(lines)


# ---- running the sweep ----------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"sweep: {message}", file=sys.stderr, flush=True)


def _outcome_of_code(candidate: Candidate, code: int, wall_s: float) -> Outcome:
    # A run graded DEGRADED (1), INCOMPLETE (5) or gate-failed (6) still finished: grade() reads it.
    # A run that gave a verdict (whatever it is) ran; the others failed before one.
    failed = code not in (ExitCode.PASS, ExitCode.DEGRADED, ExitCode.INCOMPLETE, ExitCode.GATE_FAILED, ExitCode.NOT_SHOWN,
                          ExitCode.INVALID, ExitCode.NOT_COMPARABLE)
    status = "interrupted" if code == Interrupted.exit_code else "failed" if failed else "ran"
    problem = f"the run exited {code}: see {candidate.run_dir.parent / 'logs' / (candidate.name + '.log')}" if failed else ""
    return Outcome(name=candidate.name, model=candidate.model, run_dir=str(candidate.run_dir), exit_code=code,
                   status=status, wall_s=round(wall_s, 1), problem=problem)  # fmt: skip


def _timed_child(argv: list[str], log_path: str) -> tuple[int, float]:
    """What a Ray task runs: the child, and its wall time on the worker."""
    t0 = time.monotonic()
    return run_child(argv, log_path), time.monotonic() - t0


def run_local(jobs: list[tuple[Candidate, list[str]]], log_dir: Path) -> list[Outcome]:
    outcomes = []
    for candidate, argv in jobs:
        _say(f"{candidate.name}: running (log {log_dir / (candidate.name + '.log')})")
        try:
            code, wall = _timed_child(argv, str(log_dir / f"{candidate.name}.log"))
        except KeyboardInterrupt:
            raise Interrupted(f"sweep interrupted during {candidate.name}: finished runs are kept; rerun the same "
                              "command to resume") from None  # fmt: skip
        _say(f"{candidate.name}: exit {code} after {wall:.0f}s")
        outcomes.append(_outcome_of_code(candidate, code, wall))
    return outcomes


def connect_ray(address: str | None, local_cpus: int | None):
    """The ray module, connected: to `address` (a cluster, or 'auto'), else RAY_ADDRESS's, else a fresh
    local cluster (`local_cpus` CPUs, the machine's by default). None when ray is not installed."""
    try:
        import ray
    except ImportError:
        return None
    # ray.init replaces the SIGTERM handler with one that exits 1 ("degraded" in our scheme) without
    # stopping the runs; ours (engine/__main__.py) turns it into an interrupt that stops them cleanly.
    on_sigterm = signal.getsignal(signal.SIGTERM)
    # The workers import this module from where the driver has it (the same path on every node), so a
    # checkout that is not installed works too.
    runtime_env = {"env_vars": {"PYTHONPATH": _child_pythonpath()}}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # A cluster of this machine alone, on loopback, without the dashboard (nothing to serve).
        ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env,
                 _node_ip_address="127.0.0.1")  # fmt: skip
    else:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    if on_sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    return ray


def _last_line(exc: BaseException) -> str:
    """A Ray error's own message: its last line (the lines before are the remote traceback)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def run_ray(ray, jobs: list[tuple[Candidate, list[str]]], log_dir: Path, per_run: int | None) -> list[Outcome]:
    """One Ray task per run, each holding `per_run` GPUs (default 1), or on a cluster without GPUs
    `per_run` CPUs (default: a whole node's, since a CPU engine uses every core it is given)."""
    resources = ray.cluster_resources()
    if resources.get("GPU", 0) > 0:
        per_run = per_run or 1
        need, kind = {"num_gpus": per_run, "num_cpus": 0}, "GPU"
    else:
        per_run = per_run or int(max(node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]))
        need, kind = {"num_cpus": per_run}, "CPU"
    if resources.get(kind, 0) < per_run:
        raise UserError(f"--gpus-per-run {per_run}: the Ray cluster has {resources.get(kind, 0):g} {kind}s in all")
    # max_retries=0: a run that failed is reported, not started again behind the user's back (its
    # records are kept; rerunning the sweep resumes it).
    task = ray.remote(max_retries=0, **need)(_timed_child)
    pending = {}
    for candidate, argv in jobs:
        pending[task.remote(argv, str(log_dir / f"{candidate.name}.log"))] = candidate
        _say(f"{candidate.name}: submitted ({per_run} {kind} each; log {log_dir / (candidate.name + '.log')})")
    outcomes: dict[str, Outcome] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            candidate = pending.pop(done[0])
            try:
                code, wall = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the worker or its node died: no exit code of the run
                _say(f"{candidate.name}: the Ray task failed: {_last_line(exc)}")
                code, wall = EXIT_CRASH, 0.0
            _say(f"{candidate.name}: exit {code} after {wall:.0f}s")
            outcomes[candidate.name] = _outcome_of_code(candidate, code, wall)
    except KeyboardInterrupt:
        # Each task's child gets SIGTERM (run_child's handler) and closes its engine with its records kept.
        for ref in pending:
            ray.cancel(ref)
        ray.wait(list(pending), num_returns=len(pending), timeout=CHILD_STOP_WAIT_S + 10)
        raise Interrupted("sweep interrupted: finished runs are kept; rerun the same command to resume") from None
    return [outcomes[c.name] for c, _ in jobs if c.name in outcomes]


def sweep(
    *,
    baseline: str,
    models: list[str],
    run_flags: list[str],
    out: Path,
    ray_address: str | None,
    per_run: int | None,
    grading: GradeOptions,
    local_cpus: int | None = None,
    as_json: bool = False,
    expected: dict[str, object] | None = None,
) -> int:
    """Run (or resume) every candidate's run, print the summary; the worst exit code of the runs.
    `expected`: what the run flags set (tier, seed, samples, benches), checked in finished runs."""
    base_dir = Path(baseline)
    if not (base_dir / SPEC_FILE).is_file():
        raise UserError(f"--baseline {baseline}: not a run directory (no {SPEC_FILE}); give the baseline's run dir")
    base = read_run(base_dir)
    baselines.check_gradable(base, "baseline")
    candidates = plan_candidates(models, out)
    log_dir = out.resolve() / "logs"
    outcomes: dict[str, Outcome] = {}
    jobs = []
    for candidate in candidates:
        if finished(candidate.run_dir):
            check_same_run(candidate.run_dir, expected or {})
            _say(f"{candidate.name}: finished run in {candidate.run_dir}, not rerun")
            outcomes[candidate.name] = Outcome(name=candidate.name, model=candidate.model, run_dir=str(candidate.run_dir),
                                               exit_code=EXIT_OK, status="finished before")  # fmt: skip
        else:
            jobs.append((candidate, run_argv(candidate, str(base_dir.resolve()), run_flags)))
    t0 = time.monotonic()
    if jobs:
        ray = None if ray_address == LOCAL else connect_ray(ray_address, local_cpus)
        if ray is None:
            if ray_address != LOCAL:
                _say("ray is not installed (pip install 'degradation-harness[scale]'): running the candidates one after another here")
            ran = run_local(jobs, log_dir)
        else:
            try:
                ran = run_ray(ray, jobs, log_dir, per_run)
            finally:
                ray.shutdown()
        outcomes.update({o.name: o for o in ran})
        _say(f"{len(jobs)} run(s) in {time.monotonic() - t0:.0f}s")
    ordered = [grade(outcomes[c.name], base, grading) for c in candidates]
    if as_json:
        print(msgspec.json.encode({"baseline": str(base_dir), "exit_code": worst([o.exit_code for o in ordered]),
                                   "candidates": ordered}).decode())  # fmt: skip
    else:
        print(format_summary(ordered, str(base_dir)))
    return worst([o.exit_code for o in ordered])
