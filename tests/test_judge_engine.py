"""The tiny real model as candidate and as judge, through in-process vLLM: the phases run, every answer
is judged or left unscored, a second pass is served from the cache, and A/A judging agrees."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from engine import judge
from tests.conftest import run_cli

pytestmark = [pytest.mark.heavy, pytest.mark.slow]  # ~5 min quiet, 18 min under load: `make test-slow`

ENV = {"VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
JUDGE = ["--judge", "smollm2-135m", "--judge-dtype", "float32", "--kv-cache-gib", "1", "-c", "8"]


def _calls(stderr: str) -> int:
    found = re.search(
        r"judge: (\d+) judged \((\d+) from the cache\), (\d+) judge calls, (\d+) unscored", stderr
    )
    assert found, stderr[-3000:]
    return int(found.group(3))


def _verdicts(run_dir):
    lines = [json.loads(x) for x in (run_dir / judge.JUDGMENTS_FILE).read_bytes().splitlines()]
    return {(j["item_id"], j["sample"]): (j["verdict"], j.get("rationale", "")) for j in lines if j["repeat"] == 0}


def test_tiny_model_answers_and_judges_then_the_cache_answers(tiny_model, tmp_path):
    run = tmp_path / "run"
    proc = run_cli(
        "--model", "smollm2-135m", "--benches", "trader_traits", "--limit", "2", "--dtype", "float32",
        "--max-tokens", "96", "--baseline", "none", "--out", str(run), *JUDGE, env=ENV,
    )  # fmt: skip
    assert proc.returncode in (0, 6), proc.stderr[-3000:]
    first = _calls(proc.stderr)
    verdicts = _verdicts(run)
    assert len(verdicts) == 6  # 2 scenarios x 3 seeds, each a verdict or unscored
    assert {v for v, _ in verdicts.values()} <= {"PASS", "FAIL", None}
    assert 6 <= first <= 6 * (1 + judge.REASKS)
    assert "trader_traits: judged by" in proc.stdout and "GATES" in proc.stdout
    assert proc.returncode == (6 if "GATES FAILED" in proc.stdout else 0)
    print(proc.stdout, proc.stderr[-600:])

    again = run_cli("judge", str(run), *JUDGE, env=ENV)
    assert again.returncode == proc.returncode, again.stderr[-3000:]
    assert _calls(again.stderr) == 0 and "judge: starting" not in again.stderr  # no engine started
    assert _verdicts(run) == verdicts

    # A/A: the same answers judged afresh with the same seed give the same verdicts.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / judge.JUDGMENTS_FILE).unlink()
    fresh = run_cli("judge", str(copy), *JUDGE, env=ENV)
    assert fresh.returncode == proc.returncode, fresh.stderr[-3000:]
    assert _calls(fresh.stderr) == first
    assert _verdicts(copy) == verdicts
