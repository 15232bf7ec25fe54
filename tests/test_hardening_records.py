"""Issue 18, items 1-3: writes stay in the run dir, complete records are never dropped, records are checked."""

from __future__ import annotations

import os

import msgspec
import pytest

from engine import runner
from engine.compare import compare_runs, format_verdict
from engine.errors import UserError
from engine.records import (
    MANIFEST_FILE,
    ItemRecord,
    RecordWriter,
    RunLock,
    atomic_write,
    encode_spec,
    read_records,
    read_run,
    records_path,
    seal,
    write_manifest,
)
from engine.spec import BenchSpec, RunSpec, SamplingConfig, VllmEngine


def make_spec():
    return RunSpec(
        model="m",
        model_fingerprint="f",
        tier="smoke",
        seed=0,
        think=False,
        samples=1,
        sampling=SamplingConfig(preset="qwen-nothink", temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5),
        benches=(BenchSpec(name="arith", version="1", data_fingerprint="d", n_items=4, items_fingerprint="i", max_tokens=128),),
        engine=VllmEngine(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=512),
    )


def record(item: str, score: float) -> ItemRecord:
    return ItemRecord(
        item_id=item, sample=0, seed=1, prompt_hash="h", completion="x", prompt_tokens=3, completion_tokens=2,
        finish_reason="stop", truncated=False, answer="1", score=score, latency_s=0.1,
    )


@pytest.fixture
def victim(tmp_path):
    """A file outside the run directory that a planted symlink points at."""
    path = tmp_path / "outside" / "precious.txt"
    path.parent.mkdir()
    path.write_text("do not touch\n")
    return path


def test_symlinked_lock_is_refused_and_its_target_untouched(tmp_path, victim):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(victim)
    with pytest.raises(UserError, match=r"\.lock: is a symlink"):
        RunLock(run_dir)
    assert victim.read_text() == "do not touch\n"


def test_symlinked_spec_tmp_is_refused_and_its_target_untouched(tmp_path, victim):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.tmp").symlink_to(victim)  # where the runner used to write the spec first
    with pytest.raises(UserError, match=r"spec\.tmp: is a symlink"):
        runner.prepare_run_dir(run_dir, make_spec())
    assert victim.read_text() == "do not touch\n"
    assert not (run_dir / "spec.json").exists()


def test_symlinked_records_file_is_refused_and_its_target_untouched(tmp_path, victim):
    path = tmp_path / "run" / "records" / "arith.jsonl"
    path.parent.mkdir(parents=True)
    path.symlink_to(victim)
    with pytest.raises(UserError, match=r"arith\.jsonl: is a symlink"):
        RecordWriter(path)
    assert victim.read_text() == "do not touch\n"
    (tmp_path / "run" / "spec.json").write_bytes(encode_spec(make_spec()))
    with pytest.raises(UserError, match="is a symlink"):
        read_run(tmp_path / "run")


def test_symlinked_records_folder_is_refused(tmp_path, victim):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "records").symlink_to(victim.parent, target_is_directory=True)
    with pytest.raises(UserError, match=r"records: is a symlink"):
        RunLock(run_dir)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path, victim):
    target = tmp_path / "spec.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "spec.json"]
    link = tmp_path / "link.json"
    link.symlink_to(victim)
    with pytest.raises(UserError, match="is a symlink"):
        atomic_write(link, b"x")
    assert victim.read_text() == "do not touch\n"


def _write(path, *records: ItemRecord) -> bytes:
    writer = RecordWriter(path)
    for rec in records:
        writer.append(rec)
    writer.close()
    return path.read_bytes()


def test_complete_but_corrupt_last_line_is_an_error_and_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    good = _write(path, record("a", 1))
    damaged = good + b'{"item_id": "b", "sampl\n'  # complete (newline-terminated) but not a record
    path.write_bytes(damaged)
    with pytest.raises(UserError, match=r"r\.jsonl:2: corrupt record at byte \d+"):
        read_records(path)
    with pytest.raises(UserError, match="corrupt record"):
        RecordWriter(path)
    assert path.read_bytes() == damaged  # nothing cut


def test_only_an_unterminated_tail_is_cut(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    good = _write(path, record("a", 1))
    path.write_bytes(good + b'{"item_id": "b"')
    RecordWriter(path).close()
    assert path.read_bytes() == good
    assert "torn last line 2" in capsys.readouterr().err


def _edit_line(path, line_no: int, **changes) -> None:
    lines = path.read_bytes().splitlines()
    fields = msgspec.json.decode(lines[line_no - 1])
    fields.update(changes)
    lines[line_no - 1] = msgspec.json.encode(fields)
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_hand_edited_score_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, record("a", 1), record("b", 0))
    _edit_line(path, 2, score=1.0)
    with pytest.raises(UserError, match=r"r\.jsonl:2: record 'b' sample 0: content does not match its checksum"):
        read_records(path)


def test_score_outside_the_range_is_an_error_even_with_a_matching_checksum(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, record("a", 1))
    forged = seal(msgspec.structs.replace(record("a", 1), score=2.0))
    path.write_bytes(msgspec.json.encode(forged) + b"\n")
    with pytest.raises(UserError, match=r"r\.jsonl:1: .*score 2\.0 outside \[0, 1\]"):
        read_records(path)


def test_conflicting_duplicate_placed_first_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    _write(path, record("a", 1))
    conflicting = msgspec.json.encode(seal(record("a", 0))) + b"\n"
    path.write_bytes(conflicting + path.read_bytes())  # used to win silently as the first occurrence
    with pytest.raises(UserError, match=r"r\.jsonl:2: record 'a' sample 0 duplicates line 1 with other content"):
        read_records(path)
    with pytest.raises(UserError, match="duplicates line 1"):
        RecordWriter(path)


def test_identical_duplicate_is_harmless(tmp_path):
    path = tmp_path / "r.jsonl"
    data = _write(path, record("a", 1))
    path.write_bytes(data + data)
    assert [(r.item_id, r.score) for r in read_records(path)] == [("a", 1.0)]


def test_record_without_checksum_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(msgspec.json.encode(record("a", 1)) + b"\n")
    with pytest.raises(UserError, match=r"r\.jsonl:1: .*has no checksum"):
        read_records(path)


def _run_dir(tmp_path, name: str, scores: dict[str, float], model: str):
    run_dir = tmp_path / name
    run_dir.mkdir()
    spec = msgspec.structs.replace(make_spec(), model=model, model_fingerprint=model)
    (run_dir / "spec.json").write_bytes(encode_spec(spec))
    _write(records_path(run_dir, "arith"), *(record(item, score) for item, score in scores.items()))
    return run_dir


def test_manifest_is_verified_and_reported_by_compare(tmp_path):
    base_dir = _run_dir(tmp_path, "base", {"a": 1, "b": 1, "c": 0, "d": 1}, "m")
    cand_dir = _run_dir(tmp_path, "cand", {"a": 1, "b": 0, "c": 0, "d": 1}, "c")
    write_manifest(base_dir, ["arith"])
    text = format_verdict(compare_runs(read_run(base_dir), read_run(cand_dir)))
    assert "baseline manifest verified (1 files); candidate manifest absent (run not completed)" in text
    # A valid, correctly sealed record appended after completion still changes the file: caught.
    path = records_path(base_dir, "arith")
    path.write_bytes(path.read_bytes() + msgspec.json.encode(seal(record("e", 1))) + b"\n")
    with pytest.raises(UserError, match=r"arith\.jsonl:5: does not match .*manifest\.json"):
        read_run(base_dir)


def test_committed_baseline_reads_back_verified():
    from engine.baselines import baselines_root

    run = read_run(baselines_root() / "smollm2-135m" / "smoke-nothink-s0")
    assert run.manifest == "verified (2 files)"
    assert all(r.checksum for records in run.records.values() for r in records)


async def _never_started():
    raise AssertionError("every item is on disk: no backend may start")


def test_execute_writes_the_manifest_on_completion_and_clears_it_on_resume(tmp_path):
    """The runner's hooks, without an engine: a plan whose every item is already on disk."""
    run_dir = _run_dir(tmp_path, "run", {"a": 1}, "m")
    (run_dir / MANIFEST_FILE).write_bytes(b"{}")
    from benches import Item
    from engine.runner import BenchPlan, RunPlan

    plan = RunPlan(
        spec=read_run(run_dir).spec,
        checkpoint=tmp_path,
        benches={"arith": BenchPlan(module=os, items=[Item(id="a", question="q", target="1")], prompts={}, max_tokens=8, samples=1)},
    )
    runner.run_event_loop(runner.execute(plan, run_dir, _never_started, concurrency=1))
    assert read_run(run_dir).manifest == "verified (2 files)"  # the records and the items file
