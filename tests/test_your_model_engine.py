"""The README's recipes run as written on the tiny model: `baseline` then a candidate, and a served
candidate through `python -m vllm.entrypoints.openai.api_server`; --engine-arg reaches vLLM's config.

Every `python -m engine` line of a recipe runs with `--benches arith --limit 4 --max-tokens 32 -c 8`
appended (the recipe's own flags unchanged), so that the whole recipe takes minutes, not hours.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from test_your_model import COMMIT, hub_cache

from engine.errors import ExitCode

pytestmark = pytest.mark.heavy

QUICK = ["--benches", "arith", "--limit", "4", "--max-tokens", "32", "-c", "8"]
ENV = {"VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def recipe(name: str) -> list[str]:
    """The shell commands of the README block marked `<!-- recipe:NAME -->` (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    block = text.split(f"<!-- recipe:{name} -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _argv(command: str) -> list[str]:
    words = [os.path.expanduser(w) for w in shlex.split(command.removesuffix("&").strip())]
    assert words[0] == "python", command
    return [sys.executable, *words[1:]]


def _engine(command: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = _argv(command)
    assert argv[1:3] == ["-m", "engine"], command
    return subprocess.run([*argv, *QUICK], cwd=cwd, capture_output=True, text=True, timeout=1200, env={**os.environ, **ENV})


@pytest.fixture(scope="module")
def candidate(tiny_model) -> Path:
    """The candidate the README names: the int3 copy `make demo` writes."""
    commands = recipe("two-commands")
    path = Path(_argv(commands[1])[_argv(commands[1]).index("--model") + 1])
    if not (path / "config.json").is_file():
        from engine.degrade import degrade

        degrade("smollm2-135m", "rtn-int3", path)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("user")
    (cwd / "baselines").mkdir()  # the harness keeps baselines under ./baselines when there is one
    return cwd


@pytest.fixture(scope="module")
def two_commands(candidate, workdir):
    baseline_cmd, candidate_cmd = recipe("two-commands")
    made = _engine(baseline_cmd, workdir)
    graded = _engine(candidate_cmd, workdir)
    return made, graded


def test_baseline_then_candidate_as_the_readme_says(two_commands, workdir):
    made, graded = two_commands
    assert made.returncode == 0, made.stderr[-3000:]
    base = workdir / "baselines" / "tiny" / "smoke-nothink-s0-n4"
    assert {"spec.json", "kl_reference.dhref", "noise_floor.json"} <= {p.name for p in base.iterdir()}
    assert f"commit it:   git add {base.relative_to(workdir)}" in made.stdout
    assert "a candidate: python -m engine --model CANDIDATE --tier smoke --benches arith --limit 4" in made.stdout
    assert graded.returncode in (ExitCode.PASS, ExitCode.DEGRADED), graded.stdout[-3000:] + graded.stderr[-3000:]
    assert f"{base.relative_to(workdir)})" in graded.stdout  # graded against the baseline just made


def test_a_hub_id_candidate_finds_the_baseline_without_being_told(two_commands, candidate, workdir, tmp_path):
    """The same int3 weights as a hub id (from a local HF cache) and no --baseline: found by the model
    it was made from, once the baseline sits under that model's name."""
    shutil.copytree(workdir / "baselines" / "tiny", workdir / "baselines" / "smollm2-135m")
    cache = tmp_path / "hub"
    hub_cache(cache, candidate, repo="someone/smollm2-135m-rtn-int3")
    (next(cache.glob("models--*/snapshots/*")) / "dh_degrade.json").symlink_to(candidate / "dh_degrade.json")
    proc = run_cli(
        "--model", "someone/smollm2-135m-rtn-int3", "--tier", "smoke", *QUICK, "--engine-arg", "gpu_memory_utilization=0.5",
        "--out", "runs/hub-candidate", cwd=workdir, env={**ENV, "HF_HUB_CACHE": str(cache)},
    )  # fmt: skip
    assert proc.returncode in (ExitCode.PASS, ExitCode.DEGRADED), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "baselines/smollm2-135m/smoke-nothink-s0-n4" in proc.stdout
    from engine.records import read_spec

    spec = read_spec(workdir / "runs" / "hub-candidate")  # its own dir: the same weights' default dir would resume
    assert (spec.model, spec.model_repo, spec.model_revision) == ("smollm2-135m-rtn-int3", "someone/smollm2-135m-rtn-int3", COMMIT)
    assert spec.engine.engine_args == {"gpu_memory_utilization": 0.5}


def test_engine_arg_reaches_vllms_config(tiny_model):
    from engine.backends import open_backend
    from engine.spec import VllmEngine

    spec = VllmEngine(dtype="float32", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=256,
                      engine_args={"max_num_seqs": 3})  # fmt: skip

    async def started():
        backend = await open_backend(spec, checkpoint=tiny_model, seed=0, concurrency=16, kv_cache_gib=0.25)
        try:
            return backend._engine.vllm_config.scheduler_config.max_num_seqs, backend.queue_ahead
        finally:
            await backend.close()

    assert asyncio.run(started()) == (3, 3)  # the harness's own cap (16) gave way to the user's
    # The KL probe's engine takes them too: the probe scores the candidate the benches run.
    from engine.backends.vllm_logits import open_probe_engine

    probe = open_probe_engine(tiny_model, dtype="float32", max_model_len=256, engine_args={"max_num_seqs": 3})
    try:
        assert probe.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs == 3
    finally:
        probe.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_recipe_as_the_readme_says(two_commands, candidate, workdir):
    serve, grade = recipe("endpoint")
    port = str(_free_port())
    server = subprocess.Popen(
        _argv(serve.replace("8000", port)), cwd=workdir, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=open(workdir / "serve.log", "wb"), env={**os.environ, **ENV, "TMPDIR": str(workdir)},
    )  # fmt: skip
    try:
        import httpx

        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (workdir / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(1)
        proc = _engine(grade.replace("8000", port), workdir)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert proc.returncode in (ExitCode.PASS, ExitCode.DEGRADED), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "baselines/tiny/smoke-nothink-s0-n4" in proc.stdout
    # Grading the finished endpoint run again needs no server.
    run_dir = proc.stderr.split("run dir: ", 1)[1].split()[0]
    again = run_cli("compare", "baselines/tiny/smoke-nothink-s0-n4", run_dir, "--allow-differ", "engine", cwd=workdir, env=ENV)
    assert again.returncode == proc.returncode, again.stdout[-2000:] + again.stderr[-2000:]
