"""Candidate sweeps: one ordinary run per candidate against one baseline, on a Ray cluster or one after another.

    python -m engine sweep --baseline B --models M1,M2,... [run flags] [--gpus-per-run K] [--out DIR]

Each candidate's run is the plain command `python -m engine --model M --baseline B --out DIR/<name> [run flags]`
started as a child process: its run directory, records, resume and exit code are exactly those of a run
started by hand, and every vLLM engine lives and dies in its own process. On a Ray cluster each child
is started by a Ray task that holds K GPUs (K CPUs on a cluster without GPUs), so Ray places the runs and
exports CUDA_VISIBLE_DEVICES for them; without Ray (`--ray-address local`, or ray not installed) the
children run one after another here.

No shared filesystem is assumed on a cluster the sweep connects to (`--ray-address`, $RAY_ADDRESS): the
baseline is shipped to each node through Ray's object store (engine/ship.py), a task runs the ordinary run
command into a directory on its node's local disk ($DH_NODE_DIR, else the node's temp dir), ships the
records back to the driver's `--out` as they grow and the finished run (manifest verified) at the end, each
verified by sha256 on arrival. `--shared-storage` (every node sees `--out` and the baseline at the same
path) runs straight into `--out`, as does the local cluster the sweep starts itself. A task whose node is
lost is started again on another node (NODE_LOSS_RETRIES times at most), resuming from the records that
had reached the driver; the table names the node that ran each candidate and what happened.

A candidate whose run directory holds a finished run (sealed by its manifest) is not started again; a
partial one is started again and resumes through the runner's own resume. The summary grades every
finished run against the baseline in this process (engine/compare.py), with the run's tier-0 KL probe
panel (probe.json) beside it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec

from engine import baselines, ship
from engine.errors import EXIT_CRASH, ExitCode, Interrupted, UserError
from engine.grade import GradeOptions
from engine.grade.load import grade_runs, write_verdict
from engine.grade.text import delta_cell
from engine.records import MANIFEST_FILE, RECORDS_DIR, SPEC_FILE, being_written, read_run

EXIT_OK, EXIT_DEGRADED, EXIT_INCOMPLETE, EXIT_GATE_FAILED = ExitCode.PASS, ExitCode.DEGRADED, ExitCode.INCOMPLETE, ExitCode.GATE_FAILED
# The sweep exits with the worst of its runs' exit codes (engine/errors.py ExitCode), worst last: a run
# that did not give an answer (interrupted, crashed, bad input, not comparable, invalid, incomplete)
# outranks any answer, and a failed trait gate outranks a plain degradation, as in a single run.
SEVERITY = (ExitCode.PASS, ExitCode.NOT_SHOWN, ExitCode.DEGRADED, ExitCode.GATE_FAILED, ExitCode.INCOMPLETE,
            ExitCode.INVALID, ExitCode.NOT_COMPARABLE, ExitCode.BAD_INPUT, ExitCode.ERROR, ExitCode.INTERRUPTED)  # fmt: skip
LOCAL = "local"  # --ray-address local: no Ray, the runs one after another in this process
CHILD_STOP_WAIT_S = 120.0  # a child told to stop (SIGTERM) closes its engine and keeps its records; then SIGKILL
PR_SET_PDEATHSIG = 1
NODE_LOSS_RETRIES = 2  # starts again of one candidate whose node (or worker) died under it
SHIP_EVERY_S = 30.0  # a running task ships its records to the driver this often (when they grew)
# In a shipped run's command line, the paths only the node knows: replaced there by its local ones.
RUN_DIR_SLOT, BASELINE_SLOT = "{node-local run dir}", "{node-local baseline}"


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
    node: str = ""  # where the run ran: "here", or a Ray node's address and id
    history: str = ""  # what happened on the way: a lost node, the retry and what it resumed from


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
    node_w = max([len("node"), *(len(o.node or "—") for o in outcomes)])
    header += f"  {'KL mean':>9}  {'top-1':>7}  {'node':<{node_w}}  run"
    lines = [f"sweep against baseline {baseline}", header, "-" * len(header)]
    for o in outcomes:
        kl = f"{o.probe.kl_mean:>9.6f}  {100 * o.probe.top1_agree:>6.2f}%" if o.probe else f"{'—':>9}  {'—':>7}"
        row = f"{o.name:<{name_w}}  {o.exit_code:>4}  " + "  ".join(f"{cells[o.name, b]:<{widths[b]}}" for b in bench_names)
        note = f" ({o.status})" if o.status != "ran" else ""
        lines.append(f"{row}  {kl}  {o.node or '—':<{node_w}}  {o.run_dir}{note}")
        if o.problem:
            lines.append(f"{'':<{name_w}}  ⚠ {o.problem}")
        if o.history:
            lines.append(f"{'':<{name_w}}  ↻ {o.history}")
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
        outcome = _outcome_of_code(candidate, code, wall)
        outcome.node = "here"
        outcomes.append(outcome)
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


# ---- Ray tasks: placement, shipping, lost nodes ---------------------------------------------------


class Placed(msgspec.Struct, kw_only=True):
    """What a Ray task hands back: the run's exit code and time, the node it ran on, and (shipped) the run."""

    code: int
    wall_s: float
    node: str
    run: ship.Shipment | None = None  # the run directory as it ended on the node (sealed when finished)
    log: bytes = b""  # the run's output on the node


class Shipping(msgspec.Struct, frozen=True, kw_only=True):
    """What a task needs to run on a node that does not see the driver's disk."""

    sweep_key: str  # this sweep's folder on every node
    attempt: int  # 1, then 2, ... after a lost node: shipments of an attempt given up are ignored
    seed: ship.Shipment | None  # the candidate's records the driver holds: the run resumes from them
    every_s: float  # ship the records back this often while they grow


def node_label(ray) -> str:
    """A node as the table names it: its address and the head of its Ray id (one host can hold several)."""
    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"


def node_local_dir(ray) -> Path:
    """This node's working area on its own disk: $DH_NODE_DIR (set where `ray start` runs), else a folder
    of the temp dir named after the Ray node."""
    return Path(os.environ.get("DH_NODE_DIR") or Path(tempfile.gettempdir()) / f"dh-node-{ray.get_runtime_context().get_node_id()[:12]}")


def _records_state(run_dir: Path) -> tuple:
    folder = run_dir / RECORDS_DIR
    return tuple(sorted((p.name, p.stat().st_size) for p in folder.glob("*.jsonl"))) if folder.is_dir() else ()


def _ship_while_running(run_dir: Path, send, stop: threading.Event, every_s: float) -> None:
    """Send the run's records (whole lines) to the driver whenever they grew, until `stop`."""
    last: tuple = ()
    while not stop.wait(every_s):
        try:
            state = _records_state(run_dir)
            if state == last:
                continue
            send(ship.pack(run_dir, partial=True))
            last = state
        except Exception as exc:  # the next round tries again; the final shipment carries everything anyway
            print(f"sweep: shipping {run_dir.name}'s records failed ({exc}); trying again", file=sys.stderr, flush=True)


def _shipped_run(ray, name: str, argv: list[str], baseline: ship.Shipment, shipping: Shipping, receiver, node: str) -> Placed:
    """The run command on this node's local disk, the baseline and the driver's records shipped in first,
    the records shipped back while it runs and the run when it ends."""
    work = node_local_dir(ray) / shipping.sweep_key
    local_run = work / name
    local_base = ship.unpack_cached(baseline, node_local_dir(ray) / "baselines")
    if shipping.seed is not None:
        ship.unpack(shipping.seed, local_run)
    elif local_run.exists():
        shutil.rmtree(local_run)  # an earlier sweep's copy: the driver holds nothing, so nothing is resumed
    receiver.started.remote(name, shipping.attempt, node)
    argv = [str(local_run) if a == RUN_DIR_SLOT else str(local_base) if a == BASELINE_SLOT else a for a in argv]
    log_path = work / "logs" / f"{name}.log"
    log_start = log_path.stat().st_size if log_path.is_file() else 0

    def send(shipment: ship.Shipment) -> None:
        ray.get(receiver.take.remote(name, shipping.attempt, shipment))

    stop = threading.Event()
    shipper = threading.Thread(target=_ship_while_running, args=(local_run, send, stop, shipping.every_s), daemon=True)
    shipper.start()
    t0 = time.monotonic()
    try:
        code = run_child(argv, str(log_path))
    except KeyboardInterrupt:
        stop.set()
        shipper.join()
        try:  # the records of a stopped run reach the driver, as they stay on disk in a run started by hand
            if (local_run / SPEC_FILE).is_file():
                send(ship.pack(local_run, partial=True))
        except Exception:
            pass
        raise
    finally:
        stop.set()
        shipper.join()
    wall = time.monotonic() - t0
    run = ship.pack(local_run, partial=not finished(local_run)) if (local_run / SPEC_FILE).is_file() else None
    with open(log_path, "rb") as log:
        log.seek(log_start)
        output = log.read()
    if run is not None and run.sealed:
        shutil.rmtree(local_run, ignore_errors=True)  # it lives on at the driver; a retry is seeded from there
    return Placed(code=code, wall_s=wall, node=node, run=run, log=output)


def _placed_run(name: str, argv: list[str], log_path: str, baseline: ship.Shipment | None, shipping: Shipping | None,
                receiver) -> Placed:  # fmt: skip
    """What a Ray task runs: the candidate's run here (shared storage), or shipped (_shipped_run)."""
    import ray

    node = node_label(ray)
    if shipping is None:
        code, wall = _timed_child(argv, log_path)
        return Placed(code=code, wall_s=wall, node=node)
    assert baseline is not None
    return _shipped_run(ray, name, argv, baseline, shipping, receiver, node)


class Receiver:
    """A Ray actor on the driver's node: running tasks' records land in --out through it, and it notes on
    which node each attempt started (to name a node that is lost)."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.attempt: dict[str, int] = {}
        self.node: dict[str, str] = {}

    def begin(self, name: str, attempt: int) -> None:
        self.attempt[name] = attempt
        self.node.pop(name, None)

    def started(self, name: str, attempt: int, node: str) -> None:
        if self.attempt.get(name) == attempt:
            self.node[name] = node

    def where(self, name: str) -> str:
        return self.node.get(name, "")

    def take(self, name: str, attempt: int, shipment: ship.Shipment) -> bool:
        if self.attempt.get(name) != attempt:
            return False  # from an attempt given up (its node was lost): the retry's records are the run's
        ship.unpack(shipment, self.out / name)
        return True


def _sweep_key(out: Path) -> str:
    """This sweep's folder name on every node: one per driver host and --out."""
    return hashlib.sha256(f"{socket.gethostname()}:{out.resolve()}".encode()).hexdigest()[:12]


def run_ray(ray, jobs: list[tuple[Candidate, list[str]]], log_dir: Path, per_run: int | None, *,
            ship_baseline: Path | None = None, ship_every_s: float = SHIP_EVERY_S) -> list[Outcome]:  # fmt: skip
    """One Ray task per run, each holding `per_run` GPUs (default 1), or on a cluster without GPUs
    `per_run` CPUs (default: a whole node's, since a CPU engine uses every core it is given).

    `ship_baseline`: no shared filesystem; that baseline is shipped to the nodes, the runs back to
    their run_dir (the argv name the node's paths by RUN_DIR_SLOT and BASELINE_SLOT). A task whose node or
    worker died is started again (NODE_LOSS_RETRIES), resuming from the records the driver holds."""
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
    # records are kept; rerunning the sweep resumes it). A lost node is retried below, by name.
    task = ray.remote(max_retries=0, **need)(_placed_run)
    baseline_ref = receiver = None
    if ship_baseline is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        baseline = ship.pack(ship_baseline)
        baseline_ref = ray.put(baseline)  # one copy per node, fetched by the first task there
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        receiver = ray.remote(num_cpus=0, scheduling_strategy=here)(Receiver).remote(str(jobs[0][0].run_dir.parent))
        _say(f"baseline {ship_baseline.name} packed for the nodes: {baseline.n_bytes / 1e6:.2f} MB")
    lost_errors = (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
    tries: dict[str, int] = {}
    history: dict[str, list[str]] = {c.name: [] for c, _ in jobs}
    pending: dict = {}

    def submit(candidate: Candidate, argv: list[str]) -> ship.Shipment | None:
        attempt = tries[candidate.name] = tries.get(candidate.name, 0) + 1
        shipping = seed = None
        log_path = str(log_dir / f"{candidate.name}.log")
        if receiver is not None:
            ray.get(receiver.begin.remote(candidate.name, attempt))  # from now on, older attempts are not taken
            if (candidate.run_dir / SPEC_FILE).is_file():
                seed = ship.pack(candidate.run_dir, partial=True)
            shipping = Shipping(sweep_key=_sweep_key(candidate.run_dir.parent), attempt=attempt, seed=seed, every_s=ship_every_s)
        pending[task.remote(candidate.name, argv, log_path, baseline_ref, shipping, receiver)] = (candidate, argv, time.monotonic())
        return seed

    for candidate, argv in jobs:
        submit(candidate, argv)
        _say(f"{candidate.name}: submitted ({per_run} {kind} each; log {log_dir / (candidate.name + '.log')})")
    outcomes: dict[str, Outcome] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            candidate, argv, started = pending.pop(done[0])
            problem = ""
            try:
                placed = ray.get(done[0])
            except lost_errors as exc:  # the node or the worker died under the run
                lost = ray.get(receiver.where.remote(candidate.name)) if receiver is not None else ""
                what = f"node {lost or '(unknown)'} lost after {time.monotonic() - started:.0f}s ({type(exc).__name__})"
                if tries[candidate.name] <= NODE_LOSS_RETRIES:
                    seed = submit(candidate, argv)
                    n_records = ship.records_in(seed) if seed is not None else 0
                    resumed = ("resumed from its records on shared storage" if receiver is None else
                               f"resumed from {n_records} records shipped before" if n_records else
                               "started again from nothing (no records had reached the driver)")  # fmt: skip
                    history[candidate.name].append(f"{what}; retried, {resumed}")
                    _say(f"{candidate.name}: {what}: retried, {resumed}")
                    continue
                history[candidate.name].append(f"{what}; not retried ({NODE_LOSS_RETRIES} retries spent)")
                placed = Placed(code=EXIT_CRASH, wall_s=0.0, node=lost)
            except ray.exceptions.RayError as exc:  # the task itself failed: no exit code of the run
                _say(f"{candidate.name}: the Ray task failed: {_last_line(exc)}")
                placed = Placed(code=EXIT_CRASH, wall_s=0.0, node="")
            if placed.log:
                log_dir.mkdir(parents=True, exist_ok=True)
                with open(log_dir / f"{candidate.name}.log", "ab") as log:
                    log.write(placed.log)
            if placed.run is not None:
                t0 = time.monotonic()
                try:
                    ship.unpack(placed.run, candidate.run_dir)
                    _say(f"{candidate.name}: {'run' if placed.run.sealed else 'records'} shipped back from "
                         f"{placed.node}: {placed.run.n_bytes / 1e6:.2f} MB verified and in place in "
                         f"{time.monotonic() - t0:.2f}s")  # fmt: skip
                except UserError as exc:
                    placed.code, problem = EXIT_CRASH, f"shipped back from {placed.node} but refused: {exc}"
            _say(f"{candidate.name}: exit {placed.code} after {placed.wall_s:.0f}s on {placed.node or '?'}")
            outcome = _outcome_of_code(candidate, placed.code, placed.wall_s)
            outcome.node, outcome.problem = placed.node, problem or outcome.problem
            if history[candidate.name]:
                outcome.history = "; ".join([*history[candidate.name], f"finished on {placed.node}"])
            outcomes[candidate.name] = outcome
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
    shared_storage: bool = False,
    ship_every_s: float | None = None,
) -> int:
    """Run (or resume) every candidate's run, print the summary; the worst exit code of the runs.
    `expected`: what the run flags set (tier, seed, samples, benches), checked in finished runs.
    `shared_storage`: every node of the Ray cluster sees `out` and the baseline at the same paths; else
    (a cluster the sweep connects to) runs and baseline are shipped, every `ship_every_s` while running."""
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
            # A cluster the sweep started itself is this machine alone: its disk is every node's.
            started_here = ray_address is None and not os.environ.get("RAY_ADDRESS")
            shipped = not (shared_storage or started_here)
            if shipped:
                jobs = [(c, run_argv(msgspec.structs.replace(c, run_dir=Path(RUN_DIR_SLOT)), BASELINE_SLOT, run_flags))
                        for c, _ in jobs]  # fmt: skip
            try:
                ran = run_ray(ray, jobs, log_dir, per_run, ship_baseline=base_dir.resolve() if shipped else None,
                              ship_every_s=ship_every_s or SHIP_EVERY_S)  # fmt: skip
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
