"""Overhead of shipping run directories between Ray nodes (engine/ship.py), in seconds per MB.

A two-node Ray cluster on this host (ray.cluster_utils.Cluster, each node its own working directory);
synthetic finished runs of a few sizes (spec, one records file of JSON lines, manifest). Timed:

- back (worker -> driver, what every sweep task does at its end): pack on node b (read + sha256 of every
  file, manifest verified), the task's return value fetched by the driver, unpack on the driver (sha256
  of every file, written + fsynced in a fresh folder, manifest verified again, renamed into place);
- out (driver -> worker, the baseline): pack here, ray.put, unpack_cached by a task on node b.

    python bench_kernels/ship_overhead.py [--sizes-mb 1,8,64] [--repeat 3]

Both nodes share this host's memory, so the transfer is a copy between two object stores, not a network:
on a real cluster add the size over the link's bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import records, ship  # noqa: E402

BASELINE = ROOT / "baselines" / "smollm2-135m" / "smoke-nothink-s0"


def make_run(folder: Path, megabytes: float) -> Path:
    """A finished run of about `megabytes` of records: the committed baseline's lines, repeated."""
    lines = (BASELINE / "records" / "arith.jsonl").read_bytes().splitlines(keepends=True)
    target = int(megabytes * 1e6)
    out, size, i = [], 0, 0
    while size < target:
        line = lines[i % len(lines)]
        out.append(line)
        size += len(line)
        i += 1
    folder.mkdir(parents=True)
    (folder / "spec.json").write_bytes((BASELINE / "spec.json").read_bytes())
    records.records_path(folder, "arith").parent.mkdir()
    records.records_path(folder, "arith").write_bytes(b"".join(out))
    records.write_manifest(folder, ["arith"])
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="1,8,64")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes_mb.split(",")]

    import ray
    from ray.cluster_utils import Cluster

    store = int(max(sizes) * 4e6) + 100 * 1024 * 1024
    tmp = Path(tempfile.mkdtemp(prefix="ship-bench-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store, "include_dashboard": False,
                                                           "env_vars": {"DH_NODE_DIR": str(tmp / "disk-a")}})  # fmt: skip
    cluster.add_node(num_cpus=1, resources={"node_b": 1}, object_store_memory=store, env_vars={"DH_NODE_DIR": str(tmp / "disk-b")})
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})

    @ray.remote(num_cpus=1, resources={"node_b": 1})
    def pack_on_b(megabytes: float, index: int):
        run = make_run(Path(os.environ["DH_NODE_DIR"]) / f"run-{megabytes}-{index}", megabytes)
        t0 = time.perf_counter()
        shipment = ship.pack(run)
        return shipment, time.perf_counter() - t0

    @ray.remote(num_cpus=1, resources={"node_b": 1})
    def unpack_on_b(shipment: ship.Shipment, index: int) -> float:
        t0 = time.perf_counter()
        ship.unpack_cached(shipment, Path(os.environ["DH_NODE_DIR"]) / f"baselines-{index}")
        return time.perf_counter() - t0

    rows = []
    try:
        ray.get(unpack_on_b.remote(ship.pack(make_run(tmp / "warm", 0.1)), -1))  # a worker up on node b
        for mb in sizes:
            back, out = [], []
            for i in range(args.repeat):
                ref = pack_on_b.remote(mb, i)
                ray.wait([ref])  # the task is done; what follows is the fetch
                t0 = time.perf_counter()
                shipment, pack_s = ray.get(ref)
                fetch_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                ship.unpack(shipment, tmp / "driver" / f"run-{mb}-{i}")
                unpack_s = time.perf_counter() - t0
                back.append((pack_s, fetch_s, unpack_s))

                source = make_run(tmp / "source" / f"run-{mb}-{i}", mb)
                t0 = time.perf_counter()
                ref = ray.put(ship.pack(source))
                put_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                remote_unpack = ray.get(unpack_on_b.remote(ref, i))
                out.append((put_s, time.perf_counter() - t0, remote_unpack))
            n_mb = shipment.n_bytes / 1e6
            med = [statistics.median(col) for col in zip(*back, strict=True)]
            med_out = [statistics.median(col) for col in zip(*out, strict=True)]
            rows.append({"mb": round(n_mb, 2), "pack_s": med[0], "fetch_s": med[1], "unpack_s": med[2], "back_s": sum(med),
                         "back_s_per_mb": sum(med) / n_mb, "out_s": med_out[0] + med_out[1],
                         "out_s_per_mb": (med_out[0] + med_out[1]) / n_mb, "out_unpack_s": med_out[2]})  # fmt: skip
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"shipping runs between two Ray nodes on one host ({os.cpu_count()} CPUs), median of {args.repeat}")
    print(f"{'MB':>7}{'pack s':>9}{'fetch s':>9}{'unpack s':>10}{'back s':>9}{'s/MB':>8}   {'out s':>8}{'s/MB':>8}")
    for r in rows:
        print(f"{r['mb']:>7.2f}{r['pack_s']:>9.3f}{r['fetch_s']:>9.3f}{r['unpack_s']:>10.3f}{r['back_s']:>9.3f}"
              f"{r['back_s_per_mb']:>8.4f}   {r['out_s']:>8.3f}{r['out_s_per_mb']:>8.4f}")  # fmt: skip
    print("RESULT " + json.dumps(rows))


if __name__ == "__main__":
    main()
