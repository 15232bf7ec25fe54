"""KL probe on the real tiny model: HF and vLLM candidate sides, the ladder, the CLI and its gate."""

from pathlib import Path

import msgspec
import pytest
from conftest import ROOT, need_shared_data, run_cli

from engine.errors import NotComparable
from probes import run as probe_run
from probes.store import read_reference, write_reference

pytestmark = pytest.mark.heavy

BUDGET = 160  # scored tokens: enough to order the ladder, small enough for 2 shared cores
BASELINE_RUN = ROOT / "baselines" / "smollm2-135m" / "smoke-nothink-s0"


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> Path:
    data_dir = need_shared_data("gsm8k/test.jsonl").parent.parent
    path, ref = probe_run.build_reference(
        model="smollm2-135m", out=tmp_path_factory.mktemp("probe") / "ref.dhref", run_dir=BASELINE_RUN, data_dir=data_dir,
        text_files=[], backend="hf", dtype="float32", budget=BUDGET,
    )  # fmt: skip
    assert len(ref.target_lp) == BUDGET
    assert ref.header.storage_floor["kl_max"] < 1e-6  # float32 bins: storage adds nothing measurable
    return path


@pytest.fixture(scope="module")
def ladder(tiny_model, int3_model, tmp_path_factory) -> dict[str, Path]:
    from engine.degrade import degrade

    out = tmp_path_factory.mktemp("ladder")
    return {"rtn-int8": degrade("smollm2-135m", "rtn-int8", out / "int8"), "rtn-int4": degrade("smollm2-135m", "rtn-int4", out / "int4"),
            "rtn-int3": int3_model}  # fmt: skip


_vllm_scores: dict[str, object] = {}


def _vllm(model: str, reference: Path):
    if model not in _vllm_scores:
        _vllm_scores[model] = probe_run.score_candidate(model=model, reference=reference, backend="vllm", dtype="float32")
    return _vllm_scores[model]


def test_hf_same_model_gives_exactly_zero(reference):
    s = probe_run.score_candidate(model="smollm2-135m", reference=reference, backend="hf", dtype="float32")
    assert s.kl_max == 0.0 and s.top1_agree == 1.0 and s.ppl_ratio == 1.0 and s.dp_rms == 0.0
    assert set(s.per_source) >= {"arith", "gsm8k", "gsm8k-reference"}


def test_vllm_same_model_against_hf_reference_is_at_the_floor(reference):
    s = _vllm("smollm2-135m", reference)
    # Different kernels, same float32 weights: only rounding separates the two engines.
    assert s.kl_mean < 1e-5 and s.kl_max < 1e-3 and s.top1_agree == 1.0
    assert s.ppl_ratio == pytest.approx(1.0, abs=1e-3)


def test_ladder_is_monotone(reference, ladder):
    scores = {name: _vllm(str(path), reference) for name, path in ladder.items()}
    kl = [scores[name].kl_mean for name in ("rtn-int8", "rtn-int4", "rtn-int3")]
    assert kl[0] < kl[1] < kl[2], kl
    assert kl[0] > 0
    assert scores["rtn-int8"].top1_agree > scores["rtn-int3"].top1_agree
    assert scores["rtn-int8"].ppl_ratio < scores["rtn-int3"].ppl_ratio


def test_vllm_and_hf_candidate_sides_agree(reference, ladder):
    vllm = _vllm(str(ladder["rtn-int3"]), reference)
    hf = probe_run.score_candidate(model=str(ladder["rtn-int3"]), reference=reference, backend="hf", dtype="float32")
    # Stated tolerance: float32 on both engines; the tiny model's prompt logprobs agree to ~1e-4.
    assert vllm.kl_mean == pytest.approx(hf.kl_mean, rel=1e-3, abs=1e-5)
    assert vllm.kl_p99 == pytest.approx(hf.kl_p99, rel=1e-3, abs=1e-4)
    assert abs(vllm.top1_agree - hf.top1_agree) <= 1 / BUDGET + 1e-9
    assert vllm.ppl_ratio == pytest.approx(hf.ppl_ratio, rel=1e-3)


def test_tokenizer_mismatch_is_not_comparable(reference, tiny_model, tmp_path):
    ref = read_reference(reference)
    other = msgspec.structs.replace(ref, header=msgspec.structs.replace(ref.header, tokenizer_fingerprint="0" * 16, vocab_size=1234))
    write_reference(tmp_path / "other.dhref", other)
    with pytest.raises(NotComparable, match="NOT COMPARABLE"):
        probe_run.score_candidate(model="smollm2-135m", reference=tmp_path / "other.dhref", backend="hf")


def test_cli_gate_stops_before_benches_and_corrupt_reference_is_one_line(reference, int3_model, tmp_path):
    proc = run_cli("--model", str(int3_model), "--benches", "arith", "--limit", "2", "--backend", "hf", "--dtype", "float32",
                   "--probe", str(reference), "--probe-gate", "0.05", "--baseline", "none", "--out", str(tmp_path / "run"))  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "KL probe (tier 0)" in proc.stdout and "benches not run" in proc.stdout
    # The panel is kept in the run directory (the HTML report shows it); no bench ran, so no records.
    assert (tmp_path / "run" / "probe.json").is_file() and not (tmp_path / "run" / "records").exists()

    broken = tmp_path / "broken.dhref"
    broken.write_bytes(reference.read_bytes()[:-10])
    proc = run_cli("probe", "--model", "smollm2-135m", "--reference", str(broken), "--backend", "hf")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "checksum mismatch" in proc.stderr
