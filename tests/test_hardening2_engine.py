"""Issue 29, item 7: one scoped environment for every engine the harness starts (a run's, the KL
probe's, a determinism configuration's), restored afterwards, TMPDIR included; the probe engine under
the same watchdog as a run's engine, at any tensor-parallel size."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT

from engine import reaper
from engine.backends import vllm_backend

# Every variable the harness itself sets for an engine. vLLM sets others of its own while an engine
# runs in this process (LD_PRELOAD, LOCAL_WORLD_SIZE, ...): those are vLLM's and left to it.
HARNESS_SET = {"VLLM_HOST_IP", "VLLM_CACHE_ROOT", "VLLM_LOGGING_LEVEL", "VLLM_LOGGING_STREAM", "TOKENIZERS_PARALLELISM",
               "TMPDIR", "VLLM_USE_V2_MODEL_RUNNER", "VLLM_ENABLE_V1_MULTIPROCESSING",
               "VLLM_ALLOW_INSECURE_SERIALIZATION", "VLLM_CPU_OMP_THREADS_BIND"}  # fmt: skip


def _assert_restored(before: dict[str, str]) -> None:
    changed = {k for k in before if os.environ.get(k) != before[k]}
    assert not changed, {k: (before[k], os.environ.get(k)) for k in changed}
    assert not (set(os.environ) - set(before)) & HARNESS_SET


def _watchdogs() -> set[int]:
    table = reaper._all_processes()
    return {pid for pid in reaper._descendants({os.getpid()}, table) if reaper._is_watchdog(pid)}


def test_engine_scope_sets_everything_and_restores_the_environment_exactly(monkeypatch):
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    monkeypatch.setenv("VLLM_HOST_IP", "10.0.0.7")  # the user's own value wins and survives
    monkeypatch.setenv("TMPDIR", os.environ.get("TMPDIR", "/tmp"))
    before = dict(os.environ)
    scope = vllm_backend.engine_scope({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1"})
    try:
        scratch = Path(os.environ["TMPDIR"])
        assert scratch.parent == reaper.scratch_root() and scratch.is_dir()
        assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"
        assert os.environ["VLLM_HOST_IP"] == "127.0.0.1"
        assert len(_watchdogs()) >= 1
    finally:
        scope.close()
    assert dict(os.environ) == before
    assert not scratch.exists()


def _import_vllm() -> None:
    """Importing vLLM sets variables of its own (LD_LIBRARY_PATH, ...): done before `before` is taken."""
    pytest.importorskip("vllm")
    import vllm.v1.engine.async_llm  # noqa: F401
    from vllm import LLM  # noqa: F401


def test_a_failed_engine_start_restores_the_environment_too(monkeypatch):
    _import_vllm()
    before = dict(os.environ)

    def broken(*args, **kwargs):
        raise RuntimeError("engine failed to start")

    monkeypatch.setattr(vllm_backend, "engine_kwargs", broken)
    from engine.spec import VllmEngine

    spec = VllmEngine(dtype="float32", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=256)
    with pytest.raises(RuntimeError, match="failed to start"):
        asyncio.run(vllm_backend.VllmBackend.start(Path("/nonexistent"), spec, seed=0, concurrency=1, kv_cache_gib=None))
    assert dict(os.environ) == before


@pytest.mark.heavy
def test_run_and_probe_engines_restore_the_environment_and_are_watched(tiny_model):
    """The real engines (tiny model): while each is open a watchdog watches it; after close the
    environment is what it was, TMPDIR included."""
    from engine.backends.vllm_logits import open_probe_engine
    from engine.spec import VllmEngine

    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    _import_vllm()
    before = dict(os.environ)
    engine = open_probe_engine(tiny_model, dtype="float32", max_model_len=64)
    try:
        assert _watchdogs(), "the probe engine is watched"
        assert os.environ["TMPDIR"] != before.get("TMPDIR")
    finally:
        engine.close()
    _assert_restored(before)

    async def run_engine():
        spec = VllmEngine(dtype="float32", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=256)
        backend = await vllm_backend.VllmBackend.start(tiny_model, spec, seed=0, concurrency=1, kv_cache_gib=None)
        try:
            assert _watchdogs()
        finally:
            await backend.close()

    asyncio.run(run_engine())
    _assert_restored(before)


@pytest.mark.slow
def test_killing_a_tp3_probe_leaves_no_worker_and_no_shared_memory(tiny_model):
    """The KL probe's own engine at TP=3 (the tiny model has 9 heads), harness SIGKILLed while it is open: the watchdog reaps the
    ranks and unlinks their shared memory."""
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from engine.backends.vllm_logits import open_probe_engine
        engine = open_probe_engine(Path({str(tiny_model)!r}), dtype="float32", max_model_len=64, tensor_parallel=3)
        print("open", flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "open", "the TP=3 probe engine did not start"
        table = reaper._all_processes()
        children = {pid for pid in reaper._descendants({proc.pid}, table) if not reaper._is_watchdog(pid)}
        shm = set().union(*(reaper._shm_files(pid) for pid in children | {proc.pid}))
        assert len(children) >= 4, "an engine core and three worker ranks"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while ((alive := children & set(reaper._all_processes())) or any(map(os.path.exists, shm))) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not alive, f"worker processes survived: {sorted(alive)}"
    assert not [p for p in shm if os.path.exists(p)], "shared memory left behind"
