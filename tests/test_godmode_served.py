"""godmode through a real `vllm serve` of the tiny model (Qwen3's chat template, which renders tools),
with and without the server's tool-call flags."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_cli

from bench_kernels.endpoint_overhead import start_vllm_serve, stop_vllm_serve
from engine import sandbox
from engine.episodes import health
from engine.records import read_run

TEMPLATE = Path(__file__).parent / "fixtures" / "chat_templates" / "qwen3.jinja"

pytestmark = [
    pytest.mark.heavy,
    pytest.mark.slow,  # two server starts and 6 short episodes: 167 s on 2 shared cores; `make test-slow`
    pytest.mark.skipif(sandbox.shutil.which("bwrap") is None and not os.environ.get("CI"), reason="bubblewrap not installed"),
]


def _run(url: str, out: Path):
    return run_cli(
        "--model", "smollm2-135m", "--backend", "openai", "--base-url", url, "--benches", "godmode", "--tier", "full",
        "--limit", "2", "--max-tokens", "24", "--sampling", "greedy", "--baseline", "none", "-c", "6", "--out", str(out),
        timeout=1500,
    )  # fmt: skip


def test_served_godmode_needs_the_tool_call_flags(tiny_model, tmp_path):
    proc, url = start_vllm_serve(tiny_model, tmp_path / "plain", served_name="smollm2-135m", extra=("--chat-template", str(TEMPLATE)))
    try:
        refused = _run(url, tmp_path / "refused")
    finally:
        stop_vllm_serve(proc)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert "--enable-auto-tool-choice --tool-call-parser NAME" in last, refused.stderr[-2000:]

    flags = ("--chat-template", str(TEMPLATE), "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
    proc, url = start_vllm_serve(tiny_model, tmp_path / "tools", served_name="smollm2-135m", extra=flags)
    try:
        ran = _run(url, tmp_path / "ran")
    finally:
        stop_vllm_serve(proc)
    assert ran.returncode == 0, ran.stderr[-3000:]
    run = read_run(tmp_path / "ran")
    records = run.records["godmode"]
    assert run.spec.benches[0].scoring_versions["tool_format"] == "served"
    assert len({r.item_id for r in records}) == 2 and all(r.error is None and r.turns for r in records)
    verdict = health(records, tool_format="served")  # a 135M model rarely writes a readable call: said, not hidden
    assert verdict is not None and verdict.episodes == len(records)
