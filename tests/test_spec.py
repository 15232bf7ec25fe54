"""The comparability contract: every spec field has a role, every contract field blocks a comparison,
old and newer run formats are refused in one line, dtype spellings compare equal."""

import json

import msgspec
import pytest

from engine import spec as specs
from engine.baselines import check_comparable, resolve_baseline
from engine.compare import compare_runs
from engine.errors import NotComparable, UserError
from engine.records import ItemRecord, RecordWriter, encode_spec, read_run, read_spec, records_path
from engine.spec import BenchSpec, HfEngine, OpenAIEngine, RunSpec, SamplingConfig, VllmEngine


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


def write_run(path, spec: RunSpec, scores: dict[str, float], bench: str = "arith"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "spec.json").write_bytes(encode_spec(spec))
    writer = RecordWriter(records_path(path, bench))
    for item, score in scores.items():
        writer.append(
            ItemRecord(
                item_id=item, sample=0, seed=1, prompt_hash="h", completion="x", prompt_tokens=3, completion_tokens=2,
                finish_reason="stop", truncated=False, answer="1", score=score, latency_s=0.1,
            )
        )  # fmt: skip
    writer.close()
    return read_run(path)


def _all_structs():
    return [RunSpec, SamplingConfig, BenchSpec, VllmEngine, HfEngine, OpenAIEngine]


@pytest.mark.parametrize("struct", _all_structs(), ids=lambda s: s.__name__)
def test_every_field_has_exactly_one_role(struct):
    names = {f.name for f in msgspec.structs.fields(struct)}
    tag_field = struct.__struct_config__.tag_field
    if tag_field:
        names.add(tag_field)
    roles = specs.ROLES[struct]
    assert names == set(roles), f"fields without a role: {names - set(roles)}; roles without a field: {set(roles) - names}"
    assert set(roles.values()) <= {specs.CONTRACT, specs.INFORMATIVE}


# One change per contract key of make_spec()'s flattened contract.
def _engine(**kw):
    base = dict(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=512)
    return VllmEngine(**(base | kw))


def _sampling(**kw):
    base = dict(preset="x", temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5)
    return SamplingConfig(**(base | kw))


def _bench(**kw):
    return (msgspec.structs.replace(make_spec().benches[0], **kw),)


CONTRACT_CHANGES = {
    "source": {"source": "lm-eval"},
    "tier": {"tier": "standard"},
    "seed": {"seed": 1},
    "item_seed": {"item_seed": 5},
    "think": {"think": True},
    "samples": {"samples": 4},
    "scoring_version": {"scoring_version": "0"},
    "sampling.temperature": {"sampling": _sampling(temperature=0.6)},
    "sampling.top_p": {"sampling": _sampling(top_p=0.95)},
    "sampling.top_k": {"sampling": _sampling(top_k=40)},
    "sampling.min_p": {"sampling": _sampling(min_p=0.1)},
    "sampling.presence_penalty": {"sampling": _sampling(presence_penalty=0.0)},
    "sampling.repetition_penalty": {"sampling": _sampling(repetition_penalty=1.1)},
    "engine.backend": {"engine": HfEngine(dtype="bfloat16", bs1=False, max_model_len=512)},
    "engine.dtype": {"engine": _engine(dtype="float32")},
    "engine.chunked_prefill": {"engine": _engine(chunked_prefill=True)},
    "engine.bs1": {"engine": _engine(bs1=True)},
    "engine.prefix_caching": {"engine": _engine(prefix_caching=True)},
    "engine.tensor_parallel": {"engine": _engine(tensor_parallel=4)},
    "engine.max_num_batched_tokens": {"engine": _engine(max_num_batched_tokens=64)},
    "engine.data_parallel": {"engine": _engine(data_parallel=2)},
    "arith.version": {"benches": _bench(version="2")},
    "arith.scoring_versions": {"benches": _bench(scoring_versions={"math_answer": "9"})},
    "arith.data_fingerprint": {"benches": _bench(data_fingerprint="other")},
    "arith.n_items": {"benches": _bench(n_items=5)},
    "arith.items_fingerprint": {"benches": _bench(items_fingerprint="other")},
    "arith.max_tokens": {"benches": _bench(max_tokens=999)},
    "arith.samples": {"benches": _bench(samples=4)},
    "arith.per_item": {"benches": _bench(per_item="majority")},
    "arith.source_fields": {"benches": _bench(source_fields={"num_fewshot": "5"})},
}


def test_every_contract_field_is_covered():
    assert set(CONTRACT_CHANGES) == set(specs.contract(make_spec()))


@pytest.mark.parametrize("field", sorted(CONTRACT_CHANGES))
def test_not_comparable_for_each_contract_field(tmp_path, field):
    base = write_run(tmp_path / "base", make_spec(), {"a": 1})
    cand = write_run(tmp_path / "cand", make_spec(model="c", **CONTRACT_CHANGES[field]), {"a": 0})
    with pytest.raises(NotComparable) as exc:
        compare_runs(base, cand)
    text = str(exc.value)
    assert text.startswith("⚠ NOT COMPARABLE")
    assert f"  {field}: baseline" in text
    if field != "engine.backend":  # another backend differs in every engine field it lacks
        assert len(text.splitlines()) == 2, text


def test_informative_fields_never_block(tmp_path):
    base = write_run(tmp_path / "base", make_spec(), {"a": 1})
    cand_spec = make_spec(
        model="q", model_fingerprint="z", base_model="m", harness_version="9", versions={"torch": "0"},
        sampling=_sampling(preset="renamed"), engine=_engine(max_model_len=4096),
        benches=_bench(strata_sizes={"x": 3}),
    )  # fmt: skip
    cand = write_run(tmp_path / "cand", cand_spec, {"a": 1})
    assert compare_runs(base, cand).benches[0].n == 1


def test_endpoint_candidate_needs_engine_waived(tmp_path):
    base = write_run(tmp_path / "base", make_spec(), {"a": 1})
    served = OpenAIEngine(base_url="http://127.0.0.1:1", served_model="m", server_version="0.32", max_model_len=2048)
    cand = write_run(tmp_path / "cand", make_spec(engine=served), {"a": 1})
    with pytest.raises(NotComparable) as exc:
        compare_runs(base, cand)
    assert "engine.chunked_prefill: baseline False vs candidate 'unknown'" in str(exc.value)
    waived = compare_runs(base, cand, waive=specs.expand_waivers(["engine"]))
    assert {w.field for w in waived.waived} >= {"engine.backend", "engine.chunked_prefill", "engine.dtype"}


def test_dtype_spellings_are_one():
    assert specs.normalize_dtype("bf16") == specs.normalize_dtype("BFloat16") == "bfloat16"
    assert specs.normalize_dtype("fp32") == "float32"
    with pytest.raises(UserError, match="--dtype int7"):
        specs.normalize_dtype("int7")


def test_unknown_fields_are_refused(tmp_path):
    data = json.loads(encode_spec(make_spec()))
    data["engine"]["from_the_future"] = 1
    (tmp_path / "spec.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="invalid run spec"):
        read_spec(tmp_path)


def test_old_format_gives_one_line_with_the_fix(tmp_path):
    data = json.loads(encode_spec(make_spec()))
    del data["format_version"]  # format 1 had none
    (tmp_path / "spec.json").write_text(json.dumps(data))
    with pytest.raises(UserError) as exc:
        read_spec(tmp_path)
    message = str(exc.value)
    assert "\n" not in message and "run format 1" in message and "make baseline" in message
    data["format_version"] = specs.FORMAT_VERSION + 1
    (tmp_path / "spec.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="upgrade the harness"):
        read_spec(tmp_path)


def test_unknown_waiver_is_bad_input():
    with pytest.raises(UserError, match="--allow-differ tier"):
        specs.expand_waivers(["tier"])
    assert "engine.prefix_caching" in specs.expand_waivers(["engine"])


def test_candidate_with_extra_bench_is_graded_on_the_shared_ones(tmp_path):
    base = write_run(tmp_path / "base", make_spec(), {"a": 1})
    extra = BenchSpec(name="gsm8k", version="1", data_fingerprint="d", n_items=1, items_fingerprint="j", max_tokens=64)
    cand_spec = make_spec(model="c", benches=(*make_spec().benches, extra))
    cand = write_run(tmp_path / "cand", cand_spec, {"a": 1})
    write_run(tmp_path / "cand", cand_spec, {"q": 1}, bench="gsm8k")
    cand = read_run(tmp_path / "cand")
    result = compare_runs(base, cand)
    assert [r.bench for r in result.benches] == ["arith"]
    assert any("ungraded" in n and "gsm8k" in n for n in result.notes)


def test_resolve_baseline_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "baselines" / "m" / "smoke", make_spec(), {"a": 1})
    cand = write_run(tmp_path / "runs" / "cand", make_spec(model="m-int4", base_model="m"), {"a": 0})
    found = resolve_baseline(None, cand, ["m", "m-int4"])
    assert found.run is not None and found.run.dir.name == "smoke"
    # Another seed matches nothing: not an error when nothing was asked for, NOT COMPARABLE when it was.
    other = write_run(tmp_path / "runs" / "other", make_spec(seed=3), {"a": 0})
    quiet = resolve_baseline(None, other, ["m"])
    assert quiet.run is None and "no baseline for this spec" in quiet.message and "seed" in quiet.message
    with pytest.raises(NotComparable, match="seed"):
        resolve_baseline("m", other, ["m"])
    with pytest.raises(UserError, match="neither a run directory"):
        resolve_baseline("nosuch", other, [])
    assert resolve_baseline("none", other, ["m"]).run is None
    check_comparable(found.run, cand)


def test_a_candidate_without_records_or_still_being_written_is_refused(tmp_path):
    import fcntl
    import os

    base = write_run(tmp_path / "base", make_spec(), {"a": 1})
    empty = write_run(tmp_path / "empty", make_spec(model="c"), {})
    with pytest.raises(UserError, match="has no records"):
        compare_runs(base, empty)
    busy = write_run(tmp_path / "busy", make_spec(model="c"), {"a": 0})
    fd = os.open(tmp_path / "busy" / ".lock", os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a runner holds it
    try:
        with pytest.raises(UserError, match="being written by a running process"):
            compare_runs(base, busy)
    finally:
        os.close(fd)
    assert compare_runs(base, busy).benches[0].n == 1  # once it has finished
