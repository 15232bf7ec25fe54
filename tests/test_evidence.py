"""The evidence: items files, `show`, provenance, `report --markdown/--exit-zero`, the KL panel with its
ladder, the yardstick card, `export` and the Python API in docs/evidence.md.

The demo pair is the committed baseline and a scripted candidate written with the real records API:
its arith records are the baseline's with a known set of items flipped, so every count is known.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

import benches.arith as arith
from engine import card, evidence, export, kl_panel, provenance, report, runner, show
from engine.__main__ import main
from engine.errors import UserError
from engine.records import (
    SPEC_FILE,
    ItemText,
    RecordWriter,
    encode_spec,
    items_path,
    read_items,
    read_run,
    records_path,
    verify_manifest,
    write_items,
    write_manifest,
)
from engine.spec import SamplingConfig, VllmEngine

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "baselines" / "smollm2-135m" / "smoke-nothink-s0"
GOLDEN = Path(__file__).parent / "fixtures" / "evidence"


def _candidate(run_dir: Path, lost: int, gained: int, *, items_file: bool = True, base_dir: Path = BASELINE) -> Path:
    """The baseline's records with `lost` right arith answers made wrong and `gained` wrong ones made right."""
    base = read_run(base_dir)
    gold = {item.id: item for item in arith.load()}
    spec = msgspec.structs.replace(base.spec, model="smollm2-135m-rtn-int3", model_fingerprint="c0ffee", base_model="smollm2-135m")
    run_dir.mkdir(parents=True)
    (run_dir / SPEC_FILE).write_bytes(encode_spec(spec))
    n_lost = n_gained = 0
    for bench, records in base.records.items():
        writer = RecordWriter(records_path(run_dir, bench))
        for rec in sorted(records, key=lambda r: r.item_id):
            if bench == "arith" and rec.score == 1.0 and n_lost < lost:
                rec = msgspec.structs.replace(rec, score=0.0, answer="999", completion="Surely it is 999.", checksum="")
                n_lost += 1
            elif bench == "arith" and rec.score == 0.0 and rec.answer is not None and n_gained < gained:
                target = gold[rec.item_id].target
                rec = msgspec.structs.replace(rec, score=1.0, answer=target, completion=f"The answer is {target}.", checksum="")
                n_gained += 1
            writer.append(rec)
        writer.close()
    if items_file:
        ids = {r.item_id for r in base.records["arith"]}
        write_items(run_dir, "arith", [
            ItemText(id=i.id, question=i.question, target=i.target, category=i.category, messages=arith.messages(i, False))
            for i in arith.load() if i.id in ids
        ])  # fmt: skip
    write_manifest(run_dir, [b.name for b in spec.benches])
    return run_dir


@pytest.fixture()
def demo(tmp_path) -> tuple[Path, Path]:
    return BASELINE, _candidate(tmp_path / "cand", lost=6, gained=2)


# --- items files --------------------------------------------------------------------------------------


class _WrongBackend:
    max_model_len = 256

    async def generate(self, request):
        from engine.backends import GenResult

        await asyncio.sleep(0)
        return GenResult(text="-999", token_ids=[], finish_reason="stop", prompt_tokens=5, completion_tokens=3)

    async def close(self):
        pass


def _arith_plan(limit: int = 12):
    return runner.plan_run(
        model="smollm2-135m", tier="smoke", bench_names=["arith"], think=False, seed=0, samples=1,
        sampling=SamplingConfig(preset="greedy", temperature=0.0), max_tokens=None,
        engine=VllmEngine(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=256),
        data_dir=None, limit=limit,
    )  # fmt: skip


def test_runner_writes_the_items_once_in_the_manifest_and_records_hardware(tmp_path, tiny_model):
    plan = _arith_plan()
    assert plan.spec.hardware.startswith(("CPU: ", "1×", "2×", "4×", "8×")) and plan.spec.weights_bytes > 100_000_000
    run_dir = tmp_path / "run"
    runner.prepare_run_dir(run_dir, plan.spec)
    asyncio.run(runner.execute(plan, run_dir, _WrongBackend(), concurrency=4))
    items = read_items(run_dir, "arith")
    asked = {item.id: item for item in plan.benches["arith"].items}
    assert set(items) == set(asked) and len(items) == 12
    first = next(iter(items.values()))
    assert first.question == asked[first.id].question and first.target == asked[first.id].target
    assert first.messages == arith.messages(asked[first.id], False)
    assert "records/arith.items.jsonl" in json.loads((run_dir / "manifest.json").read_text())
    assert verify_manifest(run_dir) == "verified (2 files)"
    # A resumed run keeps the file; an edited one no longer matches the manifest.
    written = items_path(run_dir, "arith").read_bytes()
    asyncio.run(runner.execute(plan, run_dir, _WrongBackend(), concurrency=4))
    assert items_path(run_dir, "arith").read_bytes() == written
    items_path(run_dir, "arith").write_bytes(written.replace(b'"target":"', b'"target":"1', 1))
    with pytest.raises(UserError, match="does not match"):
        read_run(run_dir)


def test_a_run_without_items_files_still_reads_and_takes_its_questions_from_the_data(tmp_path):
    run = read_run(BASELINE)  # committed before items files existed
    assert read_items(BASELINE, "arith") == {}
    cand = _candidate(tmp_path / "cand", lost=3, gained=0, items_file=False)
    found, source = evidence.items_of([read_run(cand), run], "arith")
    assert "data on this machine" in source and found["mul-008"].target == "6"
    found, source = evidence.items_of([read_run(cand), run], "gsm8k")  # needs --data-dir
    assert found == {} and "--data-dir" in source


# --- show ---------------------------------------------------------------------------------------------


def test_show_flips_prints_question_gold_and_both_answers(demo, capsys):
    base, cand = demo
    assert main(["show", str(cand), "--baseline", str(base), "--bench", "arith", "--n", "0"]) == 0
    out = capsys.readouterr().out
    assert "arith: 8 flipped of 150 paired items (6 lost: baseline better, 2 gained: candidate better)" in out
    flips = evidence.flips(read_run(base), read_run(cand), "arith")
    assert [f.direction for f in flips].count("lost") == 6
    gold = {i.id: i for i in arith.load()}
    for flip in flips:
        block = out.split(f"{flip.direction}: arith {flip.item_id} ")[1].split("── ")[0]
        assert f"question   {gold[flip.item_id].question}" in block
        assert f"gold       {gold[flip.item_id].target}" in block
        assert f"answer {flip.base.records[0].answer!r}" in block and f"answer {flip.cand.records[0].answer!r}" in block
        for line in flip.base.records[0].completion.splitlines() + flip.cand.records[0].completion.splitlines():
            assert line in block
    assert main(["show", str(cand), "--baseline", str(base), "--item", "mul-008"]) == 0
    assert "What is 3 * 2? Answer with just the number." in capsys.readouterr().out  # the prompt as sent
    assert main(["show", str(cand), "--baseline", str(base), "--bench", "nope"]) == 2


def test_show_a_multi_turn_trajectory(tmp_path):
    from engine.records import Turn
    from tests.test_report import _record, _spec, _write_run

    spec = _spec("m", {"godmode": (1, 1, {})})
    turns = [Turn(role="assistant", tokens=12, text="let me look"), Turn(role="tool", tokens=40, text="ls -la /data", exit_code=0)]
    base = _write_run(tmp_path / "b", spec, {"godmode": [_record("t1", 1.0)]})
    cand_rec = msgspec.structs.replace(_record("t1", 0.0), turns=turns, stop_reason="turn_limit")
    cand = _write_run(tmp_path / "c", spec, {"godmode": [cand_rec]})
    text = show.format_flips(read_run(base), read_run(cand), "godmode", None, None, None)
    assert "lost: godmode t1" in text and "tool (exit 0, 40 bytes): ls -la /data" in text and "stop: turn_limit" in text


def test_show_a_judged_bench_gives_the_judges_rationale(tmp_path):
    from engine import judge
    from engine.spec import BenchSpec
    from tests.test_report import _record, _spec, _write_run

    spec = _spec("m", {"trader_traits": (1, 1, {})})
    bench = msgspec.structs.replace(spec.benches[0], scoring_versions={"judge_prompt": judge.PROMPT_VERSION, "judge_model": "J"})
    assert isinstance(bench, BenchSpec)
    spec = msgspec.structs.replace(spec, benches=(bench,))
    runs = {}
    for side, verdict, why in (("b", "PASS", "names the stop-loss"), ("c", "FAIL", "no risk limit stated")):
        run_dir = _write_run(tmp_path / side, spec, {"trader_traits": [_record("s1-risk", 0.0)]})
        key = judge.judgment_key("J", judge.PROMPT_VERSION, "scn", "x", 0, judge.PASS_FAIL)
        line = judge.Judgment(
            key=key, bench="trader_traits", item_id="s1-risk", sample=0, repeat=0, judge="J", prompt_version=judge.PROMPT_VERSION,
            scenario="scn", seed=judge.JUDGE_SEED, verdict=verdict, attempts=1, rationale=why,
        )  # fmt: skip
        (run_dir / judge.JUDGMENTS_FILE).write_bytes(msgspec.json.encode(line) + b"\n")
        runs[side] = read_run(run_dir)
    (flip,) = evidence.flips(runs["b"], runs["c"], "trader_traits")
    assert flip.direction == "lost" and flip.base.rationale == ["names the stop-loss"]
    text = show.format_flip(flip)
    assert "judge: names the stop-loss" in text and "judge: no risk limit stated" in text


# --- HTML report: provenance, flips, KL panel -------------------------------------------------------------


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.tags: dict[str, int] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.ids += [v for k, v in attrs if k == "id"]

    def handle_data(self, data):
        self.text.append(data)


def _probe_file(run_dir: Path) -> None:
    from probes.metrics import PROBE_FILE, summarize

    rng = np.random.default_rng(0)
    n = 400
    summary = summarize(
        kl=rng.exponential(0.4, n), base_top1=rng.integers(0, 4, n), cand_top1=rng.integers(0, 4, n),
        base_target_lp=-rng.exponential(1.0, n), cand_target_lp=-rng.exponential(1.2, n),
        sequence=np.repeat(np.arange(8), n // 8), sources=["arith"] * 4 + ["gsm8k"] * 4,
    )  # fmt: skip
    (run_dir / PROBE_FILE).write_bytes(msgspec.json.encode(summary))


def test_html_report_has_provenance_flips_and_the_kl_panel_with_the_ladder(demo, tmp_path):
    base, cand = demo
    _probe_file(cand)
    out = tmp_path / "r.html"
    report.write_report(read_run(cand), read_run(base), out)
    page = _Page()
    page.feed(out.read_text())
    text = " ".join(page.text)
    assert {"flips", "kl"} <= set(page.ids)
    assert page.tags["details"] >= 1 + 8  # provenance + one per completion shown
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert commit in text
    for dist in ("torch", "transformers"):
        assert f"{dist} {metadata.version(dist)}" in text
    assert "vllm" in text and str(cand) in text and "c0ffee" in text and "qwen-nothink" in text
    assert "arith: 6 lost, 2 gained" in text
    ladder = kl_panel.find_ladder(read_run(base))
    assert [r.name for r in ladder.rungs][1:] == ["rtn-int8", "rtn-int4", "rtn-int3"]
    assert "ladder: rtn-int4" in text and "between" in text and "--probe-gate" in text
    panel = kl_panel.html_section(read_run(cand), read_run(base), gates=[("kl mean 0.4506 > 0.1", True)])
    assert "<span class=bad>tripwire: kl mean 0.4506 &gt; 0.1</span>" in panel
    assert kl_panel.one_line(kl_panel.read_probe(cand), ladder).endswith("between rtn-int4 (0.394) and rtn-int3 (3)")


def test_provenance_versions_commit_and_hardware():
    prov = provenance.collect(read_run(BASELINE), read_run(BASELINE), argv=["report", "X"])
    assert prov["packages"]["transformers"] == metadata.version("transformers")
    assert prov["command"] == "python -m engine report X"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert prov["git_commit"].startswith(head)
    hw = provenance.hardware()
    assert ("gpu" in hw and hw["count"] >= 1) or ("cpu" in hw and hw["cores"] >= 1)
    assert prov["baseline"]["model_fingerprint"] == "98003b374390df87"
    assert any(line.startswith("  baseline: ") for line in provenance.footer_lines(prov))


def test_hardware_from_nvidia_smi(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 143771'\necho 'NVIDIA H200, 143771'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    hw = provenance.hardware()
    assert hw == {"gpu": "NVIDIA H200", "count": 2, "memory_gib": 140.4}
    assert provenance.describe_hardware(hw) == "2× NVIDIA H200 (140.4 GiB each)"


# --- report --markdown, --exit-zero ----------------------------------------------------------------------


def _normalized(text: str, cand: Path) -> str:
    text = re.sub(r"<details><summary>Provenance</summary>.*</details>", "<details>PROVENANCE</details>", text, flags=re.S)
    return text.replace(str(cand), "<cand>")


def test_report_markdown_golden_and_exit_zero(tmp_path, capsys):
    cand = _candidate(tmp_path / "cand", lost=25, gained=1)
    md = tmp_path / "pr.md"
    assert main(["report", str(cand), "--baseline", str(BASELINE), "--markdown", str(md)]) == 1  # degraded
    assert main(["report", str(cand), "--baseline", str(BASELINE), "--markdown", str(md), "--html", str(tmp_path / "r.html"), "--exit-zero"]) == 0
    text = md.read_text()
    assert "harness commit" in text and "<details><summary>Provenance</summary>" in text
    golden = GOLDEN / "report.md"
    assert _normalized(text, cand) == golden.read_text(), "regenerate tests/fixtures/evidence/report.md if the change is meant"
    assert main(["report", str(cand), "--baseline", str(BASELINE)]) == 2  # neither --html nor --markdown


# --- card ---------------------------------------------------------------------------------------------


def test_card_renders_bars_hardware_throughput_and_a_headline(tmp_path, capsys):
    base_dir = tmp_path / "base"
    shutil.copytree(BASELINE, base_dir)
    spec = read_run(base_dir).spec
    (base_dir / SPEC_FILE).write_bytes(
        encode_spec(msgspec.structs.replace(spec, hardware="4× NVIDIA B300 (179 GiB each)", weights_bytes=269_060_552))
    )
    ref = _candidate(tmp_path / "ref", lost=6, gained=2, base_dir=base_dir)
    html_path = tmp_path / "card.html"
    assert main(["card", str(base_dir), "--reference", str(ref), "--usd-per-hour", "10", "--html", str(html_path)]) == 0
    text = capsys.readouterr().out
    assert "4× NVIDIA B300" in text and "60 tok/s (31942 tokens generated)" in text and "0.25 GiB" in text
    assert "$1.47 at $10/h" in text and "█" in text
    assert "smollm2-135m ≈ smollm2-135m-rtn-int3 on every bench — all within noise: no drop > 7.7 pts on arith" in text
    page = _Page()
    page.feed(html_path.read_text())
    assert page.tags["img"] == 1 and page.tags["h1"] == 1
    words = " ".join(page.text)
    assert "Accuracy per bench" in words and "4× NVIDIA B300" in words and "within noise" in words
    assert main(["card", str(base_dir), "--markdown"]) == 0
    assert "| arith | nothink, 1 sample | 150 |" in capsys.readouterr().out


def test_card_headline_names_a_degraded_bench(tmp_path):
    ref = _candidate(tmp_path / "ref", lost=25, gained=0)
    built = card.build(read_run(BASELINE), read_run(ref))
    assert built.headline.startswith("smollm2-135m-rtn-int3 vs smollm2-135m: arith DEGRADED")


def test_card_lists_the_agentic_exam(tmp_path):
    from tests.test_report import _record, _spec, _write_run

    spec = _spec("m", {"arith": (2, 1, {}), "godmode": (3, 1, {})})
    run = _write_run(tmp_path / "b", spec, {
        "arith": [_record("a1", 1.0), _record("a2", 0.0)],
        "godmode": [_record("t1", 1.0), _record("t2", 1.0), _record("t3", 0.0)],
    })  # fmt: skip
    built = card.build(read_run(run))
    assert [b.bench for b in built.benches] == ["arith"] and built.exams == ["godmode: 2/3 tasks solved (nothink, 1 sample)"]
    assert "godmode: 2/3 tasks solved" in card.format_text(built)


# --- dry run --------------------------------------------------------------------------------------------


def test_dry_run_shows_the_estimate_and_the_cap_bound(tiny_model):
    plan = _arith_plan(limit=None)
    text = runner.dry_run(plan, read_run(BASELINE))
    assert "upper bound: 19200 tokens (every request to its cap" in text
    line = next(x for x in text.splitlines() if x.startswith("arith"))
    expected = sum(r.completion_tokens for r in read_run(BASELINE).records["arith"])
    assert line.split()[4:6] == [str(expected), "19200"] and "baseline mean" in line


# --- export and the Python API ---------------------------------------------------------------------------


def test_export_rows_reproduce_the_grade_counts(demo, tmp_path):
    base, cand = (read_run(p) for p in demo)
    graded = evidence.grade_pair(base, cand)
    table = export.rows(cand, base)
    for row in graded.benches:
        mine = [r for r in table if r["bench"] == row.bench and r["side"] == "candidate"]
        assert sum(r["flip"] == "lost" for r in mine) == row.b and sum(r["flip"] == "gained" for r in mine) == row.c
    for fmt in ("csv", "jsonl", "parquet"):
        path = tmp_path / f"x.{fmt}"
        assert main(["export", str(demo[1]), "--baseline", str(demo[0]), "--format", fmt, "--out", str(path)]) == 0
        frame = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[fmt](path)
        assert len(frame) == 600
        counts = frame[frame.side == "candidate"].groupby("bench").flip.value_counts()
        assert counts[("arith", "lost")] == 6 and counts[("arith", "gained")] == 2
        assert [float(t) for t in frame[frame.item_id == "mul-008"].target] == [6.0, 6.0]


def test_the_documented_example_runs(demo, capsys):
    text = (ROOT / "docs" / "evidence.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code.replace("runs/demo-rtn-int3", str(demo[1])), "docs/evidence.md", "exec"), {})
    out = capsys.readouterr().out
    assert "arith: b=6 c=2" in out and re.search(r"lost\s+6\n", out)
