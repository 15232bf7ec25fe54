"""Issue 29, item 5: the agent sandbox leaves nothing behind after a SIGKILL, its staged data is its
episode's alone, the scratch quota stops a command while it runs, and the file-size limit is told to
the model."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine import sandbox

pytestmark = pytest.mark.skipif(sandbox.shutil.which("bwrap") is None, reason="bubblewrap not installed")


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "prices.csv").write_text("day,price\n1,10\n2,11\n")
    (folder / "sub" / "notes.txt").write_text("secret answer key\n")
    return folder


def _shell(data_dir, **limits):
    return sandbox.AgentShell(data_dir, limits=sandbox.ShellLimits(**{"wall_s": 20.0, **limits}))


def test_a_sigkilled_episode_leaves_no_scratch_no_data_copy_and_no_sandbox(data_dir, tmp_path):
    """Two episodes open, one command in flight: SIGKILL the harness; its agent folder (scratch dirs
    and data copies) and every sandbox process are gone within the watchdog's time."""
    script = textwrap.dedent(f"""
        import sys, threading, time
        from pathlib import Path
        from engine import sandbox
        shells = [sandbox.AgentShell(Path({str(data_dir)!r})) for _ in range(2)]
        for shell in shells:
            shell.run("head -c 1000000 /dev/urandom > kept.bin && cp /data/prices.csv .")
        threading.Thread(target=shells[1].run, args=("sleep 600",), daemon=True).start()
        time.sleep(1.0)
        print(sandbox.agent_area(), shells[0].scratch, shells[0]._data, flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        area, scratch, data = (Path(p) for p in proc.stdout.readline().split())
        assert (scratch / "kept.bin").is_file() and (Path(data) / "prices.csv").is_file()
        sleepers = _sandboxed_sleepers()
        assert sleepers, "the in-flight command runs"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (area.exists() or _sandboxed_sleepers() & sleepers):
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not area.exists(), f"left behind: {sorted(p.name for p in area.iterdir())}"
    assert not _sandboxed_sleepers() & sleepers


def _sandboxed_sleepers() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == b"sleep\x00600\x00":
                    found.add(int(entry))
            except OSError:
                pass
    return found


def test_staged_data_is_readable_by_the_episode_only(data_dir):
    with _shell(data_dir) as first, _shell(data_dir) as second:
        assert first._data != second._data  # a copy per episode
        for root, dirs, files in os.walk(first._data):
            for name in [*dirs, *files, "."]:
                info = os.lstat(os.path.join(root, name))
                assert info.st_mode & 0o077 == 0, (root, name, oct(info.st_mode))  # nothing for group/others
                assert info.st_uid == first.uid
                assert not info.st_mode & stat.S_IWUSR  # read-only for its owner too
        assert first.run("cat /data/sub/notes.txt").output == "secret answer key\n"
        assert first.run("echo x > /data/new").exit_code != 0
        staged = Path(first._data)
    assert not staged.exists()  # removed with the episode


WRITERS = {
    "many files": "i=0; while true; do head -c 2000000 /dev/zero > f$i; i=$((i+1)); done",
    "parallel writers": "for j in 1 2 3 4; do (i=0; while true; do head -c 1000000 /dev/zero > w$j-$i; i=$((i+1)); done) & done; wait",
    "python, many files": "python3 -c \"\nimport itertools\nfor i in itertools.count(): open(f'p{i}', 'wb').write(bytes(1 << 20))\"",
    "one growing file": "cat /dev/zero > big",
}


@pytest.mark.parametrize("writer", WRITERS)
def test_an_over_quota_command_is_stopped_while_it_runs(data_dir, writer, monkeypatch):
    quota_mb = 32
    peak = [0]
    usage = sandbox._usage

    def measured(folder):
        value = usage(folder)
        peak[0] = max(peak[0], value)
        return value

    monkeypatch.setattr(sandbox, "_usage", measured)
    with _shell(data_dir, scratch_mb=quota_mb, file_mb=64) as shell:
        started = time.monotonic()
        result = shell.run(WRITERS[writer])
        elapsed = time.monotonic() - started
        assert elapsed < 10, "stopped by the quota, not by the 20 s wall clock"
        assert result.status == "error"
        assert f"reached its {quota_mb} MB quota: its files were removed" in result.output, result.output
        # Unchecked, the writer would fill the disk until the wall clock. The watcher polls every 10 ms:
        # a few MB past the quota on an idle machine (docs/hardening.md), more on a loaded one (the
        # watcher thread waits for a core: 2x was exceeded once with 8 processes on 2 cores).
        assert peak[0] <= 4 * (quota_mb << 20), f"{peak[0] >> 20} MB written against a {quota_mb} MB quota"
        assert shell.run("echo fine > ok && cat ok").output.strip() == "fine"  # the episode goes on


FILE_LIMIT = {
    "bash redirect": ("head -c 20000000 /dev/zero > big", "killed: output or a file passed the 8 MB file size limit"),
    "python3 (ignores SIGXFSZ)": (
        "python3 -c \"open('big', 'wb').write(bytes(20_000_000))\"",
        "a write failed: output or a file reached the 8 MB file size limit",
    ),
    "output": ("head -c 20000000 /dev/zero", "passed the 8 MB file size limit"),
}


@pytest.mark.parametrize("case", FILE_LIMIT)
def test_the_file_size_limit_is_told_to_the_model(data_dir, case):
    command, note = FILE_LIMIT[case]
    with _shell(data_dir, file_mb=8, scratch_mb=256) as shell:
        result = shell.run(command)
    assert result.exit_code != 0 and note in result.output, result.output[-500:]
