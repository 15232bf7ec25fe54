"""compare's per-bench rows, verdicts, strata, canaries and JSON; the HTML report; the early-stop hook.

Runs are written to disk with the real records API (no engine): each test builds the per-item
outcomes it needs, so the expected numbers are known exactly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from html.parser import HTMLParser
from pathlib import Path

import msgspec
import numpy as np
import pytest

from engine import compare, report, sequential, stats
from engine.__main__ import main
from engine.backends import GenResult
from engine.records import (
    SPEC_FILE,
    ItemRecord,
    RecordWriter,
    encode_spec,
    read_run,
    records_path,
)
from engine.spec import BenchSpec, RunSpec, SamplingConfig, VllmEngine


def _spec(model: str, benches: dict[str, tuple[int, int, dict[str, int]]], think: bool = False) -> RunSpec:
    """benches: name -> (n items, samples, strata_sizes)."""
    return RunSpec(
        model=model,
        model_fingerprint=model,
        tier="smoke",
        seed=0,
        think=think,
        samples=1,
        sampling=SamplingConfig(preset="greedy", temperature=0.0),
        benches=tuple(
            BenchSpec(
                name=name, version="1", data_fingerprint="d", n_items=n, items_fingerprint="i", max_tokens=128,
                samples=samples, strata_sizes=sizes,
            )
            for name, (n, samples, sizes) in benches.items()
        ),
        engine=VllmEngine(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=256),
    )


def _record(item_id: str, score: float, *, sample: int = 0, category: str | None = None, truncated: bool = False, tokens: int = 10) -> ItemRecord:
    return ItemRecord(
        item_id=item_id, sample=sample, seed=0, prompt_hash="h", completion="x", prompt_tokens=5,
        completion_tokens=128 if truncated else tokens, finish_reason="length" if truncated else "stop",
        truncated=truncated, answer="1", score=score, latency_s=0.1, reasoning_tokens=tokens, category=category,
    )


def _write_run(run_dir: Path, spec: RunSpec, records: dict[str, list[ItemRecord]]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / SPEC_FILE).write_bytes(encode_spec(spec))
    for bench, recs in records.items():
        writer = RecordWriter(records_path(run_dir, bench))
        for rec in recs:
            writer.append(rec)
        writer.close()
    return run_dir


def _pair(tmp_path: Path, base_scores, cand_scores, *, categories=None, strata_sizes=None, cand_trunc=None, cand_tokens=None):
    n = len(base_scores)
    categories = categories or [None] * n
    sizes = strata_sizes or {}
    base = [_record(f"q{i}", s, category=categories[i]) for i, s in enumerate(base_scores)]
    cand = [
        _record(
            f"q{i}", s, category=categories[i],
            truncated=bool(cand_trunc[i]) if cand_trunc else False,
            tokens=int(cand_tokens[i]) if cand_tokens else 10,
        )
        for i, s in enumerate(cand_scores)
    ]
    base_dir = _write_run(tmp_path / "base", _spec("base", {"arith": (n, 1, sizes)}), {"arith": base})
    cand_dir = _write_run(tmp_path / "cand", _spec("cand", {"arith": (n, 1, sizes)}), {"arith": cand})
    return read_run(base_dir), read_run(cand_dir)


def _flips(n: int, both: int, b: int, c: int, seed: int = 0) -> tuple[list[float], list[float]]:
    cells = [(1.0, 1.0)] * both + [(1.0, 0.0)] * b + [(0.0, 1.0)] * c + [(0.0, 0.0)] * (n - both - b - c)
    random.Random(seed).shuffle(cells)
    return [x for x, _ in cells], [y for _, y in cells]


def test_degraded_bench_row(tmp_path):
    base, cand = _pair(tmp_path, *_flips(200, 80, 30, 8))
    row = compare.compare_runs(base, cand).benches[0]
    assert (row.both_right, row.b, row.c, row.both_wrong) == (80, 30, 8, 82)
    assert row.binary and row.test.startswith("exact McNemar")
    assert row.delta == pytest.approx(-22 / 200)
    exact = stats.mcnemar_exact(30, 8)
    assert row.p_two_sided == exact.p_two_sided and row.p_degraded_midp == exact.p_degraded_midp
    # One bench: Holm's only step is alpha itself, and the interval inverts the exact test there.
    assert row.ci_level == pytest.approx(0.95)
    assert row.delta_ci == pytest.approx(stats.binary_delta_interval(30, 8, 200, 0.95))
    assert row.delta_ci[1] < 0
    assert row.verdict == "DEGRADED"


def test_no_change_says_what_drop_it_excludes(tmp_path):
    base, cand = _pair(tmp_path, *_flips(300, 120, 12, 11))
    cmp = compare.compare_runs(base, cand)
    row = cmp.benches[0]
    assert row.verdict == f"no change detected: no drop > {100 * row.drop_bound:.1f} pts"
    assert row.drop_bound == pytest.approx(-row.delta_ci[0])
    assert 0.02 < row.drop_bound < 0.1
    assert cmp.decision != "DEGRADED" and cmp.exit_code == 0


def test_improved_bench(tmp_path):
    base, cand = _pair(tmp_path, *_flips(200, 50, 3, 25))
    assert compare.compare_runs(base, cand).benches[0].verdict == "IMPROVED"


def test_strata_table_and_stratified_test(tmp_path):
    categories = ["add"] * 100 + ["mul"] * 100
    # add: unchanged (5 flips each way); mul: 20 losses, 2 wins.
    add_b, add_c = _flips(100, 40, 5, 5, seed=1)
    mul_b, mul_c = _flips(100, 40, 20, 2, seed=2)
    base, cand = _pair(tmp_path, add_b + mul_b, add_c + mul_c, categories=categories)
    row = compare.compare_runs(base, cand).benches[0]
    strata = {s.stratum: s for s in row.strata.rows}
    assert (strata["add"].b, strata["add"].c, strata["mul"].b, strata["mul"].c) == (5, 5, 20, 2)
    assert row.strata.moved_most == "mul"
    assert row.strata.test.statistic == pytest.approx((25 - 7) ** 2 / 32)
    assert strata["mul"].p_two_sided == stats.mcnemar_exact(20, 2).p_two_sided
    assert row.full_split is None  # the whole split ran


def test_full_split_reweighting(tmp_path):
    # The subset took 100 items of each category, but the split holds 900 "add" and 100 "mul".
    categories = ["add"] * 100 + ["mul"] * 100
    add_b, add_c = _flips(100, 80, 2, 2, seed=3)
    mul_b, mul_c = _flips(100, 20, 30, 0, seed=4)
    base, cand = _pair(tmp_path, add_b + mul_b, add_c + mul_c, categories=categories, strata_sizes={"add": 900, "mul": 100})
    row = compare.compare_runs(base, cand).benches[0]
    fs = row.full_split
    assert fs.delta == pytest.approx(0.9 * 0.0 + 0.1 * (-0.30))
    assert fs.base_acc == pytest.approx(0.9 * np.mean(add_b) + 0.1 * np.mean(mul_b))
    assert row.delta == pytest.approx(fs.delta)  # the table's Δ is the one the test decides on
    assert row.test.startswith("McNemar weighted to the full split")
    assert row.delta_ci[0] < fs.delta < row.delta_ci[1]
    assert row.strata.test_method.endswith("weighted to the full split")
    assert json.loads(msgspec.json.encode(compare.compare_runs(base, cand)))["benches"][0]["full_split"]["delta"] == pytest.approx(fs.delta)


def test_truncation_canary_fires_while_accuracy_holds(tmp_path):
    base_scores, cand_scores = _flips(200, 60, 6, 6)
    looping = [i % 5 == 0 for i in range(200)]  # 20% of the candidate's items hit the cap
    base, cand = _pair(tmp_path, base_scores, cand_scores, cand_trunc=looping)
    cmp = compare.compare_runs(base, cand)
    row = cmp.benches[0]
    assert row.verdict.startswith("no change detected")
    assert row.truncation.flagged and row.truncation.up == 40 and row.truncation.down == 0
    assert row.length.flagged  # capped completions are also longer
    assert cmp.decision == "DEGRADED" and cmp.exit_code == 1  # the canary counts in the decision
    assert any(f.startswith("truncation on arith 0.0% → 20.0%") for f in cmp.reasons)
    assert "verdict: DEGRADED: truncation on arith" in compare.format_verdict(cmp)


def test_length_canary_quiet_when_lengths_do_not_move(tmp_path):
    base, cand = _pair(tmp_path, *_flips(100, 30, 4, 4))
    row = compare.compare_runs(base, cand).benches[0]
    assert not row.truncation.flagged and not row.length.flagged


def test_several_samples_use_the_sign_flip_test(tmp_path):
    rng = random.Random(9)
    base_recs, cand_recs = [], []
    for i in range(60):
        p = rng.random()
        for k in range(4):
            base_recs.append(_record(f"q{i}", float(rng.random() < p), sample=k))
            cand_recs.append(_record(f"q{i}", float(rng.random() < p - 0.3), sample=k))
    spec = {"arith": (60, 4, {})}
    base = read_run(_write_run(tmp_path / "b", _spec("b", spec), {"arith": base_recs}))
    cand = read_run(_write_run(tmp_path / "c", _spec("c", spec), {"arith": cand_recs}))
    row = compare.compare_runs(base, cand).benches[0]
    assert not row.binary and row.test.startswith("paired t")
    assert row.per_item == "mean of 4 samples (avg@4)"
    assert row.p_degraded_midp != row.p_degraded_midp  # nan: no mid-p for this test
    assert row.verdict == "DEGRADED"
    assert row.ci_method == "inverted paired t" and row.delta_ci[1] < 0
    assert row.within_item_var is not None and 0 < row.within_item_var[0] < 0.3


def _two_benches(tmp_path: Path, arith_flips, gsm8k_flips):
    ids = [f"q{i}" for i in range(200)]
    spec = {"arith": (200, 1, {}), "gsm8k": (200, 1, {})}
    runs = []
    for side, name in ((0, "b"), (1, "c")):
        records = {
            bench: [_record(i, s) for i, s in zip(ids, flips[side], strict=True)]
            for bench, flips in (("arith", arith_flips), ("gsm8k", gsm8k_flips))
        }
        runs.append(read_run(_write_run(tmp_path / name, _spec(name, spec), records)))
    return compare.compare_runs(*runs, signals=("accuracy",))  # the accuracy family alone: its Holm numbers


def test_holm_across_benches_and_combined_verdict(tmp_path):
    # 20 losses / 8 wins: two-sided p = 0.036 on its own; twice over two benches Holm lifts it to 0.072.
    cmp = _two_benches(tmp_path / "weak", _flips(200, 80, 20, 8, seed=5), _flips(200, 80, 20, 8, seed=6))
    arith, gsm8k = cmp.benches
    assert [arith.p_holm, gsm8k.p_holm] == pytest.approx(stats.holm([arith.p_two_sided, gsm8k.p_two_sided]))
    assert arith.p_two_sided < 0.05 <= arith.p_holm  # significant alone, not after Holm
    assert cmp.decision != "DEGRADED" and cmp.families[0].tarone_k == 2 and cmp.families[0].share == 1.0
    # Not rejected: both intervals at alpha / 2 and both contain 0.
    assert arith.ci_level == pytest.approx(0.975) and arith.delta_ci[0] < 0 < arith.delta_ci[1]
    # A strong drop on one bench: Holm's first step passes it, the weak one gets p x 1 at the second.
    cmp = _two_benches(tmp_path / "strong", _flips(200, 80, 30, 5, seed=7), _flips(200, 80, 20, 8, seed=8))
    arith, gsm8k = cmp.benches
    assert arith.verdict == gsm8k.verdict == "DEGRADED"
    # Each interval sits at the Holm step that rejected its bench, and excludes 0.
    assert (arith.ci_level, gsm8k.ci_level) == pytest.approx((0.975, 0.95))
    assert arith.delta_ci[1] < 0 and gsm8k.delta_ci[1] < 0
    assert cmp.headline.startswith("DEGRADED: accuracy on arith") and "; accuracy on gsm8k" in cmp.headline
    assert cmp.signals == ["accuracy"]


def test_cli_json_carries_the_table_numbers(tmp_path, capsys):
    base, cand = _pair(tmp_path, *_flips(200, 80, 30, 8))
    assert main(["compare", str(base.dir), str(cand.dir), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    row = data["benches"][0]
    ref = compare.compare_runs(base, cand).benches[0]
    for field in ("b", "c", "p_two_sided", "p_holm", "p_degraded_midp", "drop_bound", "delta", "verdict"):
        assert row[field] == pytest.approx(getattr(ref, field)) if isinstance(row[field], float) else row[field] == getattr(ref, field)
    assert row["delta_ci"] == pytest.approx(list(ref.delta_ci))
    assert row["truncation"]["p_more"] == ref.truncation.p_more
    assert data["headline"].startswith("DEGRADED")
    assert main(["compare", str(base.dir), str(cand.dir)]) == 1
    table = capsys.readouterr().out
    assert "Δ pts [interval]" in table and "no drop larger than" in table and "verdict: DEGRADED" in table


# --- early stop -----------------------------------------------------------------------------------


def _design(run_dir: Path, benches: list[str], family: int = 1) -> None:
    sequential.write_design(
        run_dir,
        sequential.EarlyStopDesign(
            alpha=0.05, family=family, share=sequential.SHARE, prior_a=stats.SEQUENTIAL_PRIOR_A, seed=0,
            benches={b: sequential.BenchStop() for b in benches},
        ),
    )


def test_compare_grades_an_early_stopped_bench_with_the_design(tmp_path):
    base_scores, cand_scores = _flips(400, 100, 120, 5, seed=7)
    base, cand = _pair(tmp_path, base_scores, cand_scores)
    _design(cand.dir, ["arith"])
    # Keep only the design-order prefix up to where the boundary is reached (what the runner leaves).
    order = sorted(cand.records["arith"], key=lambda r: sequential.order_key(0, "arith", r.item_id))
    values = {r.item_id: r.score for r in base.records["arith"]}
    path, at, _ = sequential.loss_path([r.item_id for r in order], values, {r.item_id: r.score for r in order})
    p, stop = stats.sequential_p_value(path, 0.25 * 0.05)
    assert stop is not None
    kept = order[: at[stop - 1]]
    cand.records["arith"] = kept
    row = compare.compare_runs(base, cand).benches[0]
    assert row.early_stop.stopped and row.early_stop.after_items == len(kept)
    assert row.p_degraded == pytest.approx(p) and p <= 0.25 * 0.05
    assert row.verdict == f"DEGRADED (stopped early after {len(kept)} items)"
    assert row.n == len(kept) < row.n_baseline


def test_design_without_a_stop_grades_at_the_end(tmp_path):
    base, cand = _pair(tmp_path, *_flips(300, 100, 14, 12))
    _design(cand.dir, ["arith"])
    row = compare.compare_runs(base, cand).benches[0]
    assert not row.early_stop.stopped and row.early_stop.after_items == 300
    assert row.p_degraded >= stats.mcnemar_exact(14, 12).p_degraded - 1e-12  # never more liberal than fixed-n
    assert row.verdict.startswith("no change detected")


class _WrongBackend:
    """Answers every question with a number no arith item has: a candidate that lost all its skill."""

    max_model_len = 256

    def __init__(self):
        self.calls = 0

    async def generate(self, request):
        self.calls += 1
        await asyncio.sleep(0)
        return GenResult(text="-999", token_ids=[], finish_reason="stop", prompt_tokens=5, completion_tokens=3)

    async def close(self):
        pass


def test_runner_stops_a_degraded_bench_early(tmp_path, monkeypatch, tiny_model):
    from engine import runner

    plan = runner.plan_run(
        model="smollm2-135m", tier="smoke", bench_names=["arith"], think=False, seed=0, samples=1,
        sampling=SamplingConfig(preset="greedy", temperature=0.0), max_tokens=None,
        engine=VllmEngine(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=256),
        data_dir=None,
    )
    # A baseline that answered every item right.
    base_dir = tmp_path / "base"
    runner.prepare_run_dir(base_dir, plan.spec)
    writer = RecordWriter(records_path(base_dir, "arith"))
    for item in plan.benches["arith"].items:
        writer.append(_record(item.id, 1.0, category=item.category))
    writer.close()
    fake = _WrongBackend()
    cand_dir = tmp_path / "cand"
    runner.prepare_run_dir(cand_dir, plan.spec)
    asyncio.run(runner.execute(plan, cand_dir, fake, concurrency=4, baseline=read_run(base_dir), alpha=0.05))
    design = sequential.read_design(cand_dir)
    stop = design.benches["arith"]
    assert stop.stopped and stop.losses == stop.discordant
    # Every pair is a loss: the boundary at alpha_seq = 0.0125 is reached after a handful of items.
    boundary = stats.sequential_boundary(150, design.alpha_seq)
    first = int(np.nonzero(boundary[1:] <= np.arange(1, 151))[0][0]) + 1
    assert stop.discordant == first
    # Requests already past the gate finish; nothing new starts after the stop.
    assert fake.calls < 60
    row = compare.compare_runs(read_run(base_dir), read_run(cand_dir)).benches[0]
    assert row.verdict.startswith("DEGRADED (stopped early")


# --- HTML report ------------------------------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[bytes] = []
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                if value.startswith("data:image/png;base64,"):
                    self.images.append(base64.b64decode(value.split(",", 1)[1], validate=True))
                else:
                    self.external.append(value)

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_html_report_is_self_contained_with_its_plots(tmp_path):
    categories = ["add", "mul"] * 100
    base_scores, cand_scores = _flips(200, 80, 30, 8)
    looping = [i % 4 == 0 for i in range(200)]
    base, cand = _pair(tmp_path, base_scores, cand_scores, categories=categories, cand_trunc=looping)
    out = tmp_path / "out" / "report.html"
    cmp = compare.compare_runs(base, cand)
    report.write_report(cand, base, out, cmp)  # the page renders the verdict; it decides nothing
    page = _parse(out)
    assert page.external == []  # nothing fetched at view time
    # forest plot, truncation bars, per-category bars, length scatter: all real PNGs
    assert len(page.images) == 4
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 2000 for img in page.images)
    text = " ".join(page.text)
    assert cmp.headline in text
    assert "Flip matrix" in text and "Per category" in text and "truncation on arith" in text


def test_html_report_of_a_run_alone(tmp_path):
    base, _ = _pair(tmp_path, *_flips(100, 40, 5, 5), categories=["add", "sub"] * 50)
    out = tmp_path / "alone.html"
    assert report.write_report(base, None, out) is None
    page = _parse(out)
    assert page.external == [] and len(page.images) >= 3
    assert "no baseline" in " ".join(page.text)


def test_report_cli(tmp_path, capsys):
    base, cand = _pair(tmp_path, *_flips(200, 80, 30, 8))
    out = tmp_path / "r.html"
    assert main(["report", str(cand.dir), "--baseline", str(base.dir), "--html", str(out)]) == 1
    assert out.is_file() and len(_parse(out).images) >= 3
