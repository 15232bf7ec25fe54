"""The bubblewrap sandbox: it runs programs, and it contains hostile ones, each within its limit.

Leftovers are live processes whose command line carries a per-test marker: the attacks exec
`sleep MARKER`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from engine import sandbox
from engine.errors import UserError

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap)"
)

QUICK = sandbox.Limits(wall_s=3.0, cpu_s=1, processes=16)


@pytest.fixture(autouse=True)
def bwrap_mode():
    sandbox.set_mode("bwrap")
    yield
    sandbox.set_mode("bwrap")


def _marker() -> str:
    # A sleep duration nobody else uses: `sleep` accepts it, and it names our processes in /proc.
    return f"{9000 + secrets.randbelow(999)}.{secrets.randbelow(10**6):06d}"


def _running(marker: str) -> list[str]:
    """Live (non-zombie) processes whose command line carries `marker`.

    By marker, not by the sandbox uids: other runs on a shared machine use those uids too.
    """
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(f"{pid} {state}: {cmdline.strip()[:80]}")
    return found


def _assert_nothing_left(marker: str) -> None:
    assert _running(marker) == []


def test_runs_a_program_and_reports_its_exit():
    ok = sandbox.run_python("print(6 * 7)")
    assert (ok.status, ok.exit_code, ok.output, ok.sandbox) == ("ok", 0, "42\n", "bwrap")
    failed = sandbox.run_python("import sys\nprint('bye')\nsys.exit(3)")
    assert (failed.status, failed.exit_code, failed.output) == ("error", 3, "bye\n")
    raised = sandbox.run_python("raise ValueError('boom')")
    assert raised.status == "error" and raised.output.rstrip().endswith("ValueError: boom")


def test_main_block_runs_only_as_main():
    program = "if __name__ == '__main__':\n    print('main')\nprint('always')"
    assert sandbox.run_python(program).output == "main\nalways\n"
    assert sandbox.run_python(program, as_main=False).output == "always\n"


def test_runs_unprivileged_with_an_empty_environment(monkeypatch):
    monkeypatch.setenv("DH_SECRET_TOKEN", "hunter2")
    out = sandbox.run_python(
        "import os\nprint(os.getuid(), os.getgid(), os.geteuid())\nprint(sorted(os.environ))\nprint(os.environ.get('DH_SECRET_TOKEN'))"
    )
    uid_line, env_line, secret_line = out.output.splitlines()
    assert uid_line == "65534 65534 65534"
    assert set(eval(env_line)) <= {"PWD", "LC_CTYPE"}  # what bwrap and Python add themselves
    assert secret_line == "None"


def test_loopback_listener_is_unreachable():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(4)
    port = listener.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: _accept(listener, accepted))
    thread.start()
    out = sandbox.run_python(
        "import socket\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('CONNECTED')\n"
        "except OSError as e:\n    print('BLOCKED', type(e).__name__)\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n    print('OUTSIDE')\n"
        "except OSError as e:\n    print('BLOCKED', type(e).__name__)\n"
    )
    thread.join()
    listener.close()
    assert out.output.splitlines() == ["BLOCKED ConnectionRefusedError", "BLOCKED OSError"]
    assert accepted == []


def _accept(listener: socket.socket, accepted: list) -> None:
    try:
        accepted.append(listener.accept())
    except OSError:
        pass


def test_cannot_write_outside_its_tmp(tmp_path):
    target = tmp_path / "pwned"
    inside = f"dh-{secrets.token_hex(4)}"
    out = sandbox.run_python(
        "import os\n"
        f"for path in ['/usr/pwned', '/etc/pwned', '/pwned', {str(target)!r}, '/root/pwned', '/proc/sys/kernel/hostname']:\n"
        "    try:\n        open(path, 'w').write('x')\n        print('WROTE', path)\n"
        "    except OSError as e:\n        print('DENIED', path, type(e).__name__)\n"
        f"open('/tmp/{inside}', 'w').write('scratch')\nprint('TMP', open('/tmp/{inside}').read())\n"
    )
    lines = out.output.splitlines()
    assert not [line for line in lines if line.startswith("WROTE")]
    assert len([line for line in lines if line.startswith("DENIED")]) == 6
    assert lines[-1] == "TMP scratch"
    assert not target.exists() and not Path("/tmp", inside).exists()  # its /tmp was a throwaway tmpfs


def test_cannot_read_root_or_the_repo():
    repo_file = Path(__file__).resolve()
    out = sandbox.run_python(
        "import os\n"
        f"for path in ['/root', '/home', {str(repo_file.parent)!r}]:\n"
        "    try:\n        print('LISTED', path, os.listdir(path)[:3])\n"
        "    except OSError as e:\n        print('DENIED', path, type(e).__name__)\n"
        f"for path in ['/etc/passwd', '/etc/shadow', {str(repo_file)!r}]:\n"
        "    try:\n        open(path).read(1)\n        print('READ', path)\n"
        "    except OSError as e:\n        print('DENIED', path, type(e).__name__)\n"
        "print('ETC', sorted(os.listdir('/etc')))\n"
        "print('PIDS', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
    )
    lines = out.output.splitlines()
    assert [line.split()[0] for line in lines[:-2]] == ["DENIED"] * 6, lines
    assert set(eval(lines[-2].split(" ", 1)[1])) <= {"ld.so.cache"}  # the one host file it gets from /etc
    assert max(eval(lines[-1].split(" ", 1)[1])) < 10  # its own pid space: no host process is visible


def test_cannot_signal_host_processes():
    out = sandbox.run_python(
        f"import os\ntry:\n    os.kill({os.getpid()}, 15)\n    print('SENT')\nexcept OSError as e:\n    print('DENIED', type(e).__name__)\n"
    )
    assert out.output == "DENIED ProcessLookupError\n"


def test_cannot_raise_its_own_limits():
    out = sandbox.run_python(
        "import resource\ntry:\n    resource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))\n    print('RAISED')\n"
        "except (ValueError, OSError) as e:\n    print('DENIED', type(e).__name__)\n"
    )
    assert out.output == "DENIED ValueError\n"


def test_fork_bomb_is_capped_and_cleaned_up():
    marker = _marker()
    started = time.monotonic()
    out = sandbox.run_python(
        "import os\nforks = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        f"            os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n        forks += 1\n"
        "except OSError as e:\n    print('STOPPED', forks, type(e).__name__, flush=True)\n"
        f"os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n",
        QUICK,
    )
    elapsed = time.monotonic() - started
    stopped, forks, error = out.output.split()
    assert stopped == "STOPPED" and error == "BlockingIOError"
    assert 1 <= int(forks) < QUICK.processes  # RLIMIT_NPROC holds inside the sandbox's own user namespace
    assert out.status == "timeout" and elapsed < QUICK.wall_s + 2
    _assert_nothing_left(marker)


def test_memory_bomb_hits_the_address_space_limit():
    started = time.monotonic()
    limits = sandbox.Limits(wall_s=10, cpu_s=5, memory_mb=256)
    out = sandbox.run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))\n", limits)
    assert out.status == "error" and out.output.rstrip().endswith("MemoryError")
    assert time.monotonic() - started < limits.wall_s
    huge = sandbox.run_python("x = bytearray(8 << 30)", limits)  # one allocation past the limit
    assert huge.status == "error" and huge.output.rstrip().endswith("MemoryError")


def test_infinite_loop_hits_the_cpu_limit():
    # SIGXCPU, well before the wall clock: the CPU limit ended it (the wall is generous because a
    # loaded machine hands out one CPU second slowly).
    out = sandbox.run_python("while True:\n    pass\n", sandbox.Limits(wall_s=60, cpu_s=1))
    assert out.status == "error" and out.exit_code == 128 + signal.SIGXCPU


def test_sleep_forever_is_killed_at_the_wall_clock():
    marker = _marker()
    started = time.monotonic()
    out = sandbox.run_python(f"import os\nos.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n", sandbox.Limits(wall_s=1.0))
    elapsed = time.monotonic() - started
    assert out.status == "timeout" and out.exit_code is None
    assert 1.0 <= elapsed < 5.0
    _assert_nothing_left(marker)


DAEMON = (
    "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
    "        os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n    os._exit(0)\nprint('parent done')\n"
)


def test_a_daemon_dies_with_its_sandbox():
    marker = _marker()
    out = sandbox.run_python(DAEMON.format(marker=marker))
    assert out.status == "ok" and out.output == "parent done\n"
    _assert_nothing_left(marker)


def test_output_flood_and_disk_fill_are_capped():
    # Python ignores SIGXFSZ, so the write past file_mb fails (EFBIG) and the program exits in error,
    # long before its CPU or wall-clock limit.
    flood = sandbox.run_python("while True:\n    print('x' * 1000)\n", sandbox.Limits(file_mb=4, cpu_s=30, wall_s=60))
    # (Its traceback cannot be written either: stderr is the same full file. 120: Python's exit status
    # when flushing stdout fails at exit.)
    assert flood.status == "error" and flood.exit_code in (1, 120) and flood.wall_s < 30
    assert len(flood.output) <= sandbox.OUTPUT_TAIL
    fill = sandbox.run_python(
        "import os\ntry:\n    for i in range(100):\n        open(f'/tmp/f{i}', 'wb').write(os.urandom(8 << 20))\n"
        "except OSError as e:\n    print('STOPPED', i, e.strerror)\n",
        sandbox.Limits(file_mb=16, tmpfs_mb=64),
    )
    assert fill.output.startswith("STOPPED") and "No space left" in fill.output
    too_many = sandbox.run_python(
        "files = []\ntry:\n    while True:\n        files.append(open('/dev/null'))\nexcept OSError as e:\n    print(len(files), e.strerror)\n",
        sandbox.Limits(open_files=32),
    )
    assert too_many.output.split(" ", 1)[1].strip() == "Too many open files"
    assert int(too_many.output.split()[0]) < 32


def test_parallel_runs_are_isolated_and_leave_nothing():
    marker = _marker()
    # Each program leaves a child sleeping behind it and exits at once.
    programs = [
        f"import os\nif os.fork() == 0:\n    os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\nprint({i}, os.getpid())"
        for i in range(24)
    ]
    results = sandbox.run_many(programs, workers=8)
    assert [r.output.split()[0] for r in results] == [str(i) for i in range(24)]
    assert all(r.passed for r in results)
    _assert_nothing_left(marker)


def test_unsandboxed_mode_only_by_name_and_says_so():
    with pytest.raises(UserError, match="--sandbox bogus"):
        sandbox.set_mode("bogus")
    sandbox.set_mode("none")
    out = sandbox.run_python("import os\nprint(sorted(os.environ))", QUICK)
    assert out.sandbox == "none" and out.passed
    hung = sandbox.run_python("import time\ntime.sleep(60)", sandbox.Limits(wall_s=0.5))
    assert hung.status == "timeout" and hung.sandbox == "none"
    # No isolation at all: a daemon outlives the run. (Also shows the leftover check can fail.)
    marker = _marker()
    sandbox.run_python(DAEMON.format(marker=marker), QUICK)
    deadline = time.monotonic() + 5
    while not _running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    escaped = _running(marker)
    for entry in escaped:
        os.kill(int(entry.split()[0]), signal.SIGKILL)
    assert len(escaped) == 1


def test_missing_bwrap_is_a_one_line_error_naming_the_package(monkeypatch):
    monkeypatch.setattr(sandbox, "_probed", {})
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(UserError) as error:
        sandbox.run_python("print(1)")
    message = str(error.value)
    assert "apt-get install bubblewrap" in message and "--sandbox none" in message and "\n" not in message
