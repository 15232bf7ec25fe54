"""The noise floor: a separate item seed, discordance of reruns, and compare planning from a measured
discordance stored beside the baseline."""

from __future__ import annotations

import msgspec
import pytest
from conftest import run_cli
from test_spec import make_spec, write_run

from engine.compare import compare_runs
from engine.noise_floor import discordance
from engine.records import NOISE_FLOOR_FILE, BenchNoise, NoiseFloor, read_noise_floor, read_run
from engine.runner import plan_run
from engine.spec import SamplingConfig, VllmEngine


def test_compare_plans_from_the_stored_noise_floor(tmp_path):
    scores = {f"i{k}": float(k % 3 == 0) for k in range(40)}
    base = write_run(tmp_path / "base", make_spec(), scores)
    rerun = write_run(tmp_path / "rerun", make_spec(), {k: (1 - v if k in ("i1", "i2") else v) for k, v in scores.items()})
    assert discordance(base, rerun, "arith") == (40, 0.05)
    assert compare_runs(base, rerun).benches[0].planned is None
    floor = NoiseFloor(same_seed_run="x", other_seed_run="y", benches={"arith": BenchNoise(n=40, same_seed=0.05, other_seed=0.3)})
    (tmp_path / "base" / NOISE_FLOOR_FILE).write_bytes(msgspec.json.encode(floor))
    assert read_noise_floor(tmp_path / "base") == floor
    row = compare_runs(read_run(tmp_path / "base"), rerun).benches[0]
    assert row.planned is not None and row.planned.discordance == 0.05


def test_item_seed_keeps_the_items_while_the_sampling_seed_moves(tiny_model):
    common = dict(
        model="smollm2-135m", tier="smoke", bench_names=["arith"], think=False, samples=1,
        sampling=SamplingConfig(preset="greedy", temperature=0.0), max_tokens=None, data_dir=None,
        engine=VllmEngine(dtype="float32", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=256),
    )  # fmt: skip
    base = plan_run(seed=0, **common)
    other_items = plan_run(seed=1, **common)
    same_items = plan_run(seed=1, item_seed=0, **common)
    fp = lambda plan: plan.spec.benches[0].items_fingerprint  # noqa: E731
    assert fp(base) == fp(same_items) != fp(other_items)
    assert (same_items.spec.seed, same_items.spec.item_seed) == (1, 0) and base.spec.item_seed == 0


@pytest.mark.heavy
@pytest.mark.slow  # three runs of the tiny model: `make test-slow`
def test_noise_floor_command_measures_both_reruns(tiny_model, tmp_path):
    base = tmp_path / "base"
    common = ["--model", "smollm2-135m", "--benches", "arith", "--tier", "full", "--limit", "24", "--dtype", "float32",
              "--max-tokens", "32", "-c", "8"]  # fmt: skip
    proc = run_cli(*common, "--out", str(base), "--baseline", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("noise-floor", "--model", "smollm2-135m", "--baseline", str(base), "--out", str(tmp_path / "nf"), "-c", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    floor = read_noise_floor(base)
    arith = floor.benches["arith"]
    # float32: the same seeds reproduce the baseline exactly; other seeds on the same items do not.
    assert arith.n == 24 and arith.same_seed == 0.0 and arith.other_seed > 0.0
    assert read_run(tmp_path / "nf" / "other-seed").spec.benches[0].items_fingerprint == read_run(base).spec.benches[0].items_fingerprint
    proc = run_cli("compare", str(base), str(tmp_path / "nf" / "other-seed"), "--allow-differ", "seed")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "planned from discordance 0.0%" in proc.stdout
