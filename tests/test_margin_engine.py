"""Answer margins through the real engine (tiny model, float32): the baseline against itself is
bit-identical per item, whatever the batch; rtn-int3 loses margin on mmlu_pro and arith; the command
writes a checksummed file per bench; in-process equals a real served endpoint (slow)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, need_shared_data, run_cli

from engine.margin import (
    build_queries,
    in_process_llm,
    paired_margins,
    read_margins,
    score_endpoint,
    score_vllm,
)
from engine.margin_stats import format_margin_test, margin_tests

BASELINE = ROOT / "baselines" / "smollm2-135m" / "smoke-nothink-s0"
INT3 = Path.home() / ".cache" / "degradation-harness" / "candidates" / "smollm2-135m-rtn-int3"


def _queries(tokenizer_dir: Path):
    import benches
    from engine.backends.protocol import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    out = {}
    arith = benches.get_bench("arith")
    out["arith"], _ = build_queries("arith", arith, arith.load()[:16], tokenizer)
    data = need_shared_data("mmlu_pro").parent
    mmlu = benches.get_bench("mmlu_pro")
    out["mmlu_pro"], _ = build_queries("mmlu_pro", mmlu, mmlu.load(data)[:16:2], tokenizer)
    return out


def _as_dict(items) -> dict[str, float]:
    return {i.item_id: i.margin for i in items}


@pytest.fixture(scope="module")
def margins(tiny_model):
    """Per model and bench {item_id: margin}; the baseline twice, in other batch compositions."""
    queries = _queries(tiny_model)
    got = {}
    with in_process_llm(tiny_model, dtype="float32", max_model_len=1024) as llm:
        got["base"] = {b: _as_dict(score_vllm(llm, q)) for b, q in queries.items()}
        # again: the two benches in one batch, in reverse order, and one by one
        both = [q for qs in queries.values() for q in qs][::-1]
        again = _as_dict(score_vllm(llm, both[:5], batch=1) + score_vllm(llm, both[5:], batch=64))
        got["again"] = {b: {i: again[i] for i in got["base"][b]} for b in queries}
    if not INT3.is_dir():
        pytest.skip(f"{INT3} absent (python -m engine degrade --model smollm2-135m --method rtn-int3 --out {INT3})")
    with in_process_llm(INT3, dtype="float32", max_model_len=1024) as llm:
        got["int3"] = {b: _as_dict(score_vllm(llm, q)) for b, q in queries.items()}
    got["queries"] = queries
    return got


@pytest.mark.heavy
def test_baseline_against_itself_is_bit_identical(margins):
    assert margins["base"] == margins["again"]  # exact float equality, item by item
    tests = margin_tests(margins["base"], margins["again"])
    assert [t.bench for t in tests] == ["arith", "mmlu_pro"]
    for t in tests:
        assert t.identical and not t.fired and t.effect == 0.0
        assert "identical" in format_margin_test(t)
    # not vacuous: the margins differ across items and are finite
    values = np.array(list(margins["base"]["arith"].values()))
    assert np.isfinite(values).all() and values.std() > 0.1


@pytest.mark.heavy
def test_rtn_int3_loses_margin(margins):
    for bench in ("arith", "mmlu_pro"):
        base, cand = margins["base"][bench], margins["int3"][bench]
        diff = np.array([cand[i] - base[i] for i in base])
        assert diff.mean() < -0.5, (bench, diff)
    tests = {t.bench: t for t in margin_tests(margins["base"], margins["int3"])}
    assert tests["arith"].worse and tests["arith"].interval[1] < 0


@pytest.mark.heavy
def test_margin_command_writes_a_checked_file_per_bench(tmp_path, tiny_model):
    run = tmp_path / "a"
    shutil.copytree(BASELINE, run)
    proc = run_cli("margin", str(run), "--benches", "arith", "--dtype", "float32", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "arith: 150 items" in proc.stdout
    stored = read_margins(run, "arith")
    assert stored.dtype == "float32" and stored.prefix == "" and len(stored.items) == 150 and stored.checksum
    assert all(i.margin < 0 and i.tokens >= 1 for i in stored.items)
    other = tmp_path / "b"
    shutil.copytree(run, other)
    base, cand = paired_margins(run, other)
    tests = {t.bench: t for t in margin_tests(base, cand)}  # arith, and gsm8k as committed with the baseline
    assert tests["arith"].identical and tests["arith"].n == 150 and all(t.identical for t in tests.values())
    # an edited file is refused, naming it
    path = other / "margins" / "arith.json"
    path.write_text(path.read_text().replace('"margin": -', '"margin": -1', 1))
    proc = run_cli("plan", "--baseline", str(run), "--drop", "5", "--discordance", "0.05", "--margin-candidate", str(other))
    assert proc.returncode == 2 and "does not match its checksum" in proc.stderr


@pytest.mark.heavy
@pytest.mark.slow  # a real server (about a minute to start on 2 cores): `make test-slow`
def test_endpoint_equals_in_process(margins, tiny_model, tmp_path):
    from bench_kernels.endpoint_overhead import start_vllm_serve, stop_vllm_serve

    proc, url = start_vllm_serve(tiny_model, tmp_path / "serve", served_name="smollm2-135m", dtype="float32")
    try:
        for bench, queries in margins["queries"].items():
            items, _ = asyncio.run(score_endpoint(url, queries))
            served = _as_dict(items)
            worst = max(abs(served[i] - m) for i, m in margins["base"][bench].items())
            assert worst <= 1e-4, (bench, worst)
    finally:
        stop_vllm_serve(proc)
