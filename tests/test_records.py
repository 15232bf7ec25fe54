import os

import msgspec
import pytest

from engine.compare import compare_runs
from engine.errors import UserError
from engine.records import (
    ItemRecord,
    RecordWriter,
    encode_spec,
    read_records,
    read_run,
    records_path,
)
from engine.spec import BenchSpec, RunSpec, SamplingConfig, VllmEngine


def make_spec(**changes) -> RunSpec:
    spec = RunSpec(
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
    return msgspec.structs.replace(spec, **changes)


def record(item: str, score: float, sample: int = 0, truncated: bool = False) -> ItemRecord:
    return ItemRecord(
        item_id=item, sample=sample, seed=1, prompt_hash="h", completion="x", prompt_tokens=3, completion_tokens=2,
        finish_reason="length" if truncated else "stop", truncated=truncated, answer="1", score=score, latency_s=0.1,
    )


def write_run(path, spec: RunSpec, scores: dict[str, float]):
    path.mkdir(parents=True)
    (path / "spec.json").write_bytes(encode_spec(spec))
    writer = RecordWriter(records_path(path, "arith"))
    for item, score in scores.items():
        writer.append(record(item, score))
    writer.close()
    return read_run(path)


def test_writer_appends_dedups_and_reads_back(tmp_path):
    path = tmp_path / "r.jsonl"
    w = RecordWriter(path)
    w.append(record("a", 1))
    w.append(record("a", 0))  # same key: ignored
    w.append(record("b", 0))
    w.close()
    assert [(r.item_id, r.score) for r in read_records(path)] == [("a", 1), ("b", 0)]


def test_torn_last_line_is_dropped_and_cut_before_resume(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    w = RecordWriter(path)
    w.append(record("a", 1))
    w.close()
    good = path.read_bytes()
    path.write_bytes(good + msgspec.json.encode(record("b", 1))[:25])  # killed mid-write
    assert [r.item_id for r in read_records(path)] == ["a"]
    assert "torn last line" in capsys.readouterr().err
    w = RecordWriter(path)
    assert w.done == {("a", 0)}
    assert path.read_bytes() == good  # tail cut off, nothing else touched
    w.append(record("b", 0))
    w.close()
    assert [r.item_id for r in read_records(path)] == ["a", "b"]


def test_corrupt_line_in_the_middle_is_an_error_not_silent_loss(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"garbage": 1}\n' + msgspec.json.encode(record("a", 1)) + b"\n")
    from engine.errors import UserError

    with pytest.raises(UserError, match="corrupt record"):
        read_records(path)
    with pytest.raises(UserError):
        RecordWriter(path)
    assert path.read_bytes().startswith(b'{"garbage"')  # untouched


def test_compare_counts_flips(tmp_path):
    spec = make_spec()
    base = write_run(tmp_path / "base", spec, {"a": 1, "b": 1, "c": 0, "d": 1})
    cand = write_run(tmp_path / "cand", msgspec.structs.replace(spec, model="c", model_fingerprint="g"), {"a": 0, "b": 0, "c": 1, "d": 1})
    result = compare_runs(base, cand)
    row = result.benches[0]
    assert (row.n, row.b, row.c) == (4, 2, 1)
    assert row.base_acc == 0.75 and row.cand_acc == 0.5
    assert row.verdict.startswith("no change detected")


def test_model_difference_alone_is_comparable(tmp_path):
    base = write_run(tmp_path / "base", make_spec(), {"a": 1})
    cand = write_run(tmp_path / "cand", make_spec(model="quant", model_fingerprint="zz"), {"a": 1})
    assert compare_runs(base, cand).benches[0].n == 1


def test_waiving_seed_is_reported(tmp_path):
    base = write_run(tmp_path / "base", make_spec(), {"a": 1})
    cand = write_run(tmp_path / "cand", make_spec(seed=7), {"a": 1})
    result = compare_runs(base, cand, waive=("seed",))
    assert [(d.field, d.baseline, d.candidate) for d in result.waived] == [("seed", 0, 7)]
    with pytest.raises(UserError, match="not a waivable field"):
        compare_runs(base, cand, waive=("tier",))


def test_spec_file_written_atomically_roundtrips(tmp_path):
    spec = make_spec()
    (tmp_path / "spec.json").write_bytes(encode_spec(spec))
    assert read_run(tmp_path).spec == spec
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert os.path.getsize(tmp_path / "spec.json") > 0
