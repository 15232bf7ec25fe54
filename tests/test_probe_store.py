"""Reference file format, metrics and corpus interleaving (no model needed)."""

import msgspec
import numpy as np
import pytest

from engine.errors import UserError
from probes import metrics
from probes.corpus import ProbeSequence, interleave
from probes.store import Header, Reference, SequenceInfo, read_reference, write_reference


def _reference(k: int = 4, dtype: str = "float32") -> Reference:
    rng = np.random.default_rng(0)
    lengths, prompts = [7, 5], [3, 2]
    n_rows = sum(n - p for n, p in zip(lengths, prompts, strict=True))
    header = Header(
        format_version=1, model="m", model_fingerprint="f", tokenizer_fingerprint="t", vocab_size=50, top_k=k,
        logprob_dtype=dtype, backend="hf", engine_dtype="float32", tier="smoke", think=False,
        sequences=[SequenceInfo(source="gsm8k", id="a"), SequenceInfo(source="arith", id="b")],
        storage_floor={"kl_mean": 0.0, "kl_max": 0.0},
    )  # fmt: skip
    return Reference(
        header=header,
        tokens=rng.integers(0, 50, sum(lengths)).astype(np.int32),
        seq_offsets=np.array([0, 7, 12], dtype=np.int64),
        prompt_lens=np.array(prompts, dtype=np.int32),
        topk_ids=np.sort(rng.choice(50, (n_rows, k)), axis=1).astype(np.int32),
        topk_logprobs=rng.normal(size=(n_rows, k)).astype(dtype),
        log_tail=rng.normal(size=n_rows).astype(np.float32),
        target_lp=rng.normal(size=n_rows).astype(np.float32),
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, dtype):
    ref = _reference(dtype=dtype)
    write_reference(tmp_path / "r.dhref", ref)
    back = read_reference(tmp_path / "r.dhref")
    assert back.header.sequences == ref.header.sequences and back.header.top_k == 4
    for name in ("tokens", "seq_offsets", "prompt_lens", "topk_ids", "topk_logprobs", "log_tail", "target_lp"):
        assert np.array_equal(getattr(back, name), getattr(ref, name)), name
    assert back.topk_logprobs.dtype == np.dtype(dtype)
    assert back.row_ranges() == [(0, 4), (4, 7)]
    assert np.array_equal(back.sequence(1), ref.tokens[7:12])


def test_corrupt_truncated_and_foreign_files_are_rejected(tmp_path):
    path = tmp_path / "r.dhref"
    write_reference(path, _reference())
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.dhref"
    flipped.write_bytes(bytes(data[:200]) + bytes([data[200] ^ 1]) + bytes(data[201:]))
    with pytest.raises(UserError, match="checksum mismatch"):
        read_reference(flipped)
    truncated = tmp_path / "truncated.dhref"
    truncated.write_bytes(bytes(data[:-100]))
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_reference(truncated)
    foreign = tmp_path / "foreign.dhref"
    foreign.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(UserError, match="not a probe reference"):
        read_reference(foreign)
    with pytest.raises(UserError, match="no probe reference"):
        read_reference(tmp_path / "missing")


def test_directory_holds_the_standard_file_name(tmp_path):
    from probes.run import reference_path

    path = reference_path(tmp_path / "base-run")
    write_reference(path, _reference())
    assert read_reference(tmp_path / "base-run").header.model == "m"


def test_identical_sides_give_zero_and_full_agreement():
    n = 40
    rng = np.random.default_rng(1)
    lp = -rng.exponential(size=n).astype(np.float32)
    top1 = rng.integers(0, 9, n)
    s = metrics.summarize(kl=np.zeros(n), base_top1=top1, cand_top1=top1, base_target_lp=lp, cand_target_lp=lp,
                          sequence=np.repeat(np.arange(4), 10), sources=["a", "a", "b", "b"])  # fmt: skip
    assert s.kl_mean == 0 and s.kl_max == 0 and s.top1_agree == 1.0 and s.ppl_ratio == 1.0 and s.dp_rms == 0
    assert set(s.per_source) == {"a", "b"} and s.per_source["b"]["positions"] == 20


def test_cluster_se_matches_the_formula_and_exceeds_iid_for_clustered_data():
    rng = np.random.default_rng(2)
    cluster = np.repeat(np.arange(30), 20)
    values = rng.normal(size=30)[cluster] + 0.1 * rng.normal(size=600)  # strong within-sequence correlation
    mean, se = metrics.cluster_mean_se(values, cluster)
    sums = np.bincount(cluster, weights=values)
    manual = np.sqrt(30 / 29 * np.sum((sums - 20 * mean) ** 2)) / 600
    assert mean == pytest.approx(values.mean()) and se == pytest.approx(manual)
    assert se > 3 * values.std(ddof=1) / np.sqrt(600)


def test_ppl_ratio_se_uses_paired_differences():
    rng = np.random.default_rng(3)
    base = -rng.exponential(size=500)
    cand = base - 0.05 + 0.01 * rng.normal(size=500)  # strongly correlated sides
    seq = np.arange(500) // 10
    s = metrics.summarize(kl=np.full(500, 0.01), base_top1=np.zeros(500), cand_top1=np.zeros(500), base_target_lp=base,
                          cand_target_lp=cand, sequence=seq, sources=["x"] * 50)  # fmt: skip
    assert s.ppl_ratio == pytest.approx(np.exp(0.05), rel=0.01)
    assert s.ppl_ratio_se < 0.005  # the unpaired SE of two noisy PPLs would be ~20x larger


def _seq(source: str, i: int, n: int) -> ProbeSequence:
    return ProbeSequence(source=source, id=f"{source}{i}", prompt_ids=[1, 2, 3], response_ids=list(range(n)))


def test_interleave_balances_tokens_across_sources_and_keeps_the_budget():
    sources = {"long": [_seq("long", i, 100) for i in range(50)], "short": [_seq("short", i, 10) for i in range(200)]}
    chosen = interleave(sources, budget=400, max_len=64)
    taken = {name: sum(len(c.response_ids) for c in chosen if c.source == name) for name in sources}
    assert sum(taken.values()) == 400
    assert abs(taken["long"] - taken["short"]) <= 61  # at most one cut sequence apart
    assert all(len(c.prompt_ids) + len(c.response_ids) <= 64 for c in chosen)
    again = interleave(sources, budget=400, max_len=64)
    assert msgspec.json.encode(again) == msgspec.json.encode(chosen)  # deterministic
