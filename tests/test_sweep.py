"""Candidate sweeps (engine/sweep.py): run directories, resume, the summary table and exit codes.

The fast tests replace the run command by a scripted child that writes a run directory from the committed
baseline's records (copied as they are: an A/A candidate; or with its right answers made wrong: a
degraded one), so that the sweep's own logic runs for real: child processes, resume of finished and
partial runs, grading, the table, the exit code, and on a local Ray cluster the same. The heavy test
runs the real harness on the tiny model and two degraded candidates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine import sweep
from engine.grade import GradeOptions
from tests.conftest import ROOT, run_cli

BASELINE = ROOT / "baselines" / "smollm2-135m" / "smoke-nothink-s0"

# A stand-in for `python -m engine --model M --baseline B --out DIR ...`: it logs its call, then writes
# DIR as a finished run of B's spec (arith only) unless DIR is finished already; models named
# "*worse*" answer wrong where the baseline was right, "*broken*" exits 4 having written nothing, and
# "*partial*" writes half the records and exits 130 the first time (a run interrupted midway); "*sleeper*"
# waits to be stopped; "*trickle*" writes its records 50 ms apart (a run to lose a node under).
SCRIPTED_RUN = textwrap.dedent(
    """
    import json, os, shutil, sys
    from pathlib import Path
    import msgspec
    from engine import records

    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    model, base, out = args["--model"], Path(args["--baseline"]), Path(args["--out"])
    with open(os.environ["SWEEP_CALLS"], "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    if "sleeper" in model:  # runs until told to stop; says so, and its pid, in files beside the calls
        import signal, time
        calls = Path(os.environ["SWEEP_CALLS"])
        signal.signal(signal.SIGTERM, lambda *a: (calls.with_name("stopped").write_text("SIGTERM"), sys.exit(130)))
        calls.with_name("pid").write_text(str(os.getpid()))
        time.sleep(600)
    if "broken" in model:
        sys.exit(4)
    spec = records.read_spec(base)
    spec = msgspec.structs.replace(spec, benches=tuple(b for b in spec.benches if b.name == "arith"))
    out.mkdir(parents=True, exist_ok=True)
    records.atomic_write(out / records.SPEC_FILE, records.encode_spec(spec))
    done = records.read_records(records.records_path(out, "arith")) if records.records_path(out, "arith").is_file() else []
    todo = records.read_records(records.records_path(base, "arith"))[len(done):]
    first_call = not done
    if "partial" in model and first_call:
        todo = todo[: len(todo) // 2]
    writer = records.RecordWriter(records.records_path(out, "arith"))
    for rec in todo:
        if "trickle" in model:
            import time
            time.sleep(0.05)
        if "worse" in model and rec.score == 1.0:
            rec = msgspec.structs.replace(rec, score=0.0, answer="wrong", completion="wrong", checksum="")
        writer.append(rec)
    writer.close()
    if "partial" in model and first_call:
        sys.exit(130)
    records.write_manifest(out, ["arith"])
    sys.exit(0)
    """
)


@pytest.fixture
def scripted(tmp_path, monkeypatch):
    """The sweep's children run SCRIPTED_RUN; the list of their calls is read back with calls()."""
    script = tmp_path / "scripted_run.py"
    script.write_text(SCRIPTED_RUN)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("SWEEP_CALLS", str(calls))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(
        sweep, "run_argv", lambda cand, base, flags: [sys.executable, str(script), "--model", cand.model, "--baseline", base,
                                                      "--out", str(cand.run_dir), *flags]  # fmt: skip
    )

    def read_calls() -> list[list[str]]:
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.is_file() else []

    return read_calls


GRADING = GradeOptions(alpha=0.05)


def _sweep(tmp_path: Path, models: list[str], capsys, ray_address: str | None = "local", per_run: int | None = None,
           **kw) -> tuple[int, str]:
    code = sweep.sweep(baseline=str(BASELINE), models=models, run_flags=["--benches", "arith"], out=tmp_path / "sweep",
                       ray_address=ray_address, per_run=per_run, grading=GRADING, **kw)  # fmt: skip
    return code, capsys.readouterr().out


def _row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(name + " "))


def test_sweep_flags_the_degraded_candidate_and_resumes_without_rerunning(tmp_path, scripted, capsys):
    code, table = _sweep(tmp_path, ["aa", "worse", "partial"], capsys)
    assert code == 130, table  # worst of: A/A 0, worse 1 (DEGRADED), partial 130 (interrupted: no grade)
    assert "DEGRADED" in _row(table, "worse") and "DEGRADED" not in _row(table, "aa")
    assert "no change: bit-identical" not in table and "no change bit-identical" in _row(table, "aa")
    assert "(interrupted)" in _row(table, "partial") and "⚠ the run exited 130" in table
    calls = scripted()
    assert [c[1] for c in calls] == ["aa", "worse", "partial"]
    assert calls[0][-2:] == ["--benches", "arith"]  # the run flags reach every run
    records = tmp_path / "sweep" / "aa" / "records" / "arith.jsonl"
    before = (records.stat().st_mtime_ns, records.read_bytes())

    # Rerun: the two finished runs are not started again, the partial one resumes from its records.
    code, table = _sweep(tmp_path, ["aa", "worse", "partial"], capsys)
    assert [c[1] for c in scripted()[3:]] == ["partial"]
    assert (records.stat().st_mtime_ns, records.read_bytes()) == before
    assert code == 1
    assert "(finished before)" in _row(table, "aa") and "(finished before)" in _row(table, "worse")
    assert "DEGRADED" in _row(table, "worse") and "no change bit-identical" in _row(table, "partial")
    assert "⚠" not in table

    # A finished run of another spec under the same --out is refused, not reported as this sweep's.
    from engine.errors import UserError

    with pytest.raises(UserError, match="holds a finished run of another spec .tier: 'smoke' there vs 'standard'"):
        _sweep(tmp_path, ["aa"], capsys, expected={"tier": "standard", "benches": ["arith"]})
    _sweep(tmp_path, ["aa"], capsys, expected={"tier": "smoke", "seed": 0, "samples": 1, "benches": ["arith"]})


def test_sweep_exit_code_is_the_worst_run_and_json(tmp_path, scripted, capsys):
    code, out = _sweep(tmp_path, ["worse", "broken"], capsys, as_json=True)
    assert code == 4
    summary = json.loads(out)
    assert summary["exit_code"] == 4
    by_name = {c["name"]: c for c in summary["candidates"]}
    assert by_name["worse"]["exit_code"] == 1 and by_name["worse"]["benches"]["arith"]["verdict"] == "DEGRADED"
    assert by_name["worse"]["benches"]["arith"]["delta"] < -0.1
    assert by_name["broken"]["status"] == "failed" and by_name["broken"]["benches"] == {}
    assert by_name["broken"]["probe"] is None
    assert sweep.worst([0, 1, 6, 5]) == 5 and sweep.worst([1, 130, 4]) == 130 and sweep.worst([]) == 0


def test_sweep_shows_the_probe_panel_of_a_run(tmp_path, scripted, capsys):
    _sweep(tmp_path, ["aa"], capsys)
    (tmp_path / "sweep" / "aa" / "probe.json").write_text(json.dumps({"kl_mean": 0.0123, "top1_agree": 0.875, "n_positions": 9}))
    _, table = _sweep(tmp_path, ["aa"], capsys)
    assert "0.012300" in _row(table, "aa") and "87.50%" in _row(table, "aa")


def test_sweep_bad_input(tmp_path, scripted, capsys):
    from engine.errors import UserError

    with pytest.raises(UserError, match="share the run directory"):
        _sweep(tmp_path, ["a/m", "b/m"], capsys)
    with pytest.raises(UserError, match="not a run directory"):
        sweep.sweep(baseline=str(tmp_path), models=["m"], run_flags=[], out=tmp_path / "o", ray_address="local",
                    per_run=1, grading=GRADING)  # fmt: skip
    result = run_cli("sweep", "--baseline", str(BASELINE), "--models", "m", "--out", str(tmp_path / "o"), "--model", "x")
    assert result.returncode == 2 and "set per candidate by the sweep" in result.stderr
    result = run_cli("sweep", "--baseline", str(BASELINE), "--models", "m", "--out", str(tmp_path / "o"), "--no-such-flag")
    assert result.returncode == 2 and "--no-such-flag" in result.stderr
    assert scripted() == []


def test_sweep_on_a_local_ray_cluster(tmp_path, scripted, capsys):
    pytest.importorskip("ray")
    t0 = time.monotonic()
    code, table = _sweep(tmp_path, ["aa", "worse"], capsys, ray_address=None, local_cpus=2)  # a task holds both CPUs
    assert code == 1
    assert "DEGRADED" in _row(table, "worse") and "no change" in _row(table, "aa")
    assert sorted(c[1] for c in scripted()) == ["aa", "worse"]
    print(f"local ray sweep of 2 scripted runs: {time.monotonic() - t0:.1f}s", file=sys.stderr)


@pytest.mark.parametrize("where", ["local", "ray"])
def test_killing_the_sweep_stops_its_runs(tmp_path, scripted, where):
    """SIGTERM to the sweep reaches the run it started (SIGTERM: the harness stops cleanly), here or in a Ray
    task; the sweep exits 130."""
    if where == "ray":
        pytest.importorskip("ray")
    argv = ["sweep", "--baseline", str(BASELINE), "--models", "sleeper,never", "--out", str(tmp_path / "o"),
            *(["--ray-address", "local"] if where == "local" else ["--ray-cpus", "2"])]  # fmt: skip
    script = [sys.executable, str(tmp_path / "scripted_run.py")]
    driver = textwrap.dedent(f"""
        import sys
        from engine import sweep, __main__ as cli
        sweep.run_argv = lambda c, b, f: {script!r} + ["--model", c.model, "--baseline", b, "--out", str(c.run_dir), *f]
        sys.exit(cli.main({argv!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "pid"
    _wait_for(pid_file.is_file, 120, proc)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "sweep interrupted" in stderr and "rerun the same command to resume" in stderr
    assert (tmp_path / "stopped").read_text() == "SIGTERM"
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert [c[1] for c in scripted()] == ["sleeper"]  # the next candidate was never started


# ---- the real harness ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int4_model(tiny_model: Path, tmp_path_factory) -> Path:
    from engine.degrade import degrade

    return degrade("smollm2-135m", "rtn-int4", tmp_path_factory.mktemp("cand") / "rtn-int4")


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(2)


@pytest.mark.slow
def test_real_sweep_on_local_ray_flags_int3_and_resumes_after_sigterm(tiny_model, int4_model, int3_model, tmp_path):
    """Three real runs (A/A, rtn-int4, rtn-int3; arith smoke) as tasks of a 2-CPU local Ray cluster, one at a
    time; SIGTERM once the first is sealed; the rerun keeps that run and finishes the others."""
    out = tmp_path / "sweep"
    argv = [sys.executable, "-m", "engine", "sweep", "--baseline", str(BASELINE), "--models",
            f"smollm2-135m,{int4_model},{int3_model}", "--out", str(out), "--ray-cpus", "2", "--gpus-per-run", "2",
            "--benches", "arith", "--kv-cache-gib", "0.25", "-c", "32"]  # fmt: skip
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "smollm2-135m"
    _wait_for(lambda: sweep.finished(first), 1500, proc)
    sealed_s = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    records = first / "records" / "arith.jsonl"
    before = (records.stat().st_mtime_ns, records.read_bytes())

    again = subprocess.run(argv + ["--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    total_s = time.monotonic() - t0
    assert "smollm2-135m: finished run in" in again.stderr and "not rerun" in again.stderr
    assert (records.stat().st_mtime_ns, records.read_bytes()) == before
    summary = json.loads(again.stdout)
    by_name = {c["name"]: c for c in summary["candidates"]}
    assert set(by_name) == {"smollm2-135m", "rtn-int4", "rtn-int3"}
    for name in by_name:
        assert sweep.finished(out / name)
    assert by_name["rtn-int3"]["benches"]["arith"]["verdict"].startswith("DEGRADED")
    assert not by_name["smollm2-135m"]["benches"]["arith"]["verdict"].startswith("DEGRADED")
    assert by_name["smollm2-135m"]["probe"] is not None  # the baseline dir holds a KL reference
    assert by_name["rtn-int3"]["probe"]["kl_mean"] > by_name["smollm2-135m"]["probe"]["kl_mean"]
    assert again.returncode == summary["exit_code"] == 1
    print(f"\nfirst run sealed after {sealed_s:.0f}s; whole sweep incl. resume {total_s:.0f}s\n{again.stderr}", file=sys.stderr)


def test_sweep_command_line_passes_run_flags_to_every_run(tmp_path, scripted, capsys):
    from engine import __main__ as cli

    code = cli.main(["sweep", "--baseline", str(BASELINE), "--models", "aa,worse", "--benches", "arith", "--out",
                     str(tmp_path / "o"), "--ray-address=local", "--seed", "0", "--alpha", "0.01", "--json"])  # fmt: skip
    assert code == 1
    summary = json.loads(capsys.readouterr().out)
    assert [c["exit_code"] for c in summary["candidates"]] == [0, 1]
    calls = scripted()
    assert [c[1] for c in calls] == ["aa", "worse"]
    assert all(c[6:] == ["--benches", "arith", "--seed", "0", "--alpha", "0.01"] for c in calls), calls
