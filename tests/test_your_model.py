"""Grading a user's own model: hub ids, --engine-arg, the default battery, NOT COMPARABLE remedies and the
command-line conventions (--version, OPENAI_API_KEY, fast --help, lm-eval flag hints). No engine starts
here; tests/test_your_model_engine.py runs the real ones."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from conftest import ROOT, run_cli
from test_spec import make_spec, write_run

from engine import battery, engine_args, models
from engine import spec as specs
from engine.__main__ import _run_parser, main
from engine.baselines import check_comparable, remedy
from engine.errors import ExitCode, NotComparable, UserError
from engine.spec import OpenAIEngine, VllmEngine

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root: Path, checkpoint: Path, repo: str = "tiny-org/tiny-model", commit: str = COMMIT) -> Path:
    """A Hugging Face cache holding `checkpoint` as `repo` at `commit` (the layout huggingface_hub writes)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for path in checkpoint.iterdir():
        if path.is_file() and path.name not in (models.BUILD_MANIFEST, models.DEGRADE_MANIFEST):
            (snapshot / path.name).symlink_to(path)
    return root


@pytest.fixture
def cached_hub_model(tmp_path, monkeypatch) -> Path:
    """The tiny model's small files (a real config and tokenizer; the weights a stand-in) as a hub model."""
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": 2048}')
    (checkpoint / "model.safetensors").write_bytes(b"\0" * 64)
    cache = hub_cache(tmp_path / "hub", checkpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


# ---------------------------------------------------------------- hub ids


def test_hub_id_resolves_from_the_local_cache_with_its_identity(cached_hub_model):
    path = models.resolve_model("tiny-org/tiny-model")
    assert path == cached_hub_model / "models--tiny-org--tiny-model" / "snapshots" / COMMIT
    assert models.hub_identity("tiny-org/tiny-model") == ("tiny-org/tiny-model", COMMIT)
    assert models.resolve_model(models.with_revision("tiny-org/tiny-model", COMMIT)) == path
    assert models.model_label("tiny-org/tiny-model@" + COMMIT) == "tiny-model"
    # The fingerprint is the snapshot's own content, as for a directory.
    assert models.checkpoint_fingerprint(path) == models.checkpoint_fingerprint(Path(os.path.realpath(path / "config.json")).parent)


def test_missing_hub_id_or_revision_is_one_line_with_the_command_that_fetches_it(cached_hub_model):
    with pytest.raises(UserError, match=r"not in .*`hf download tiny-org/other`"):
        models.resolve_model("tiny-org/other")
    with pytest.raises(UserError, match=r"revision v9 is not in .*`hf download tiny-org/tiny-model --revision v9`"):
        models.resolve_model("tiny-org/tiny-model@v9")
    with pytest.raises(UserError, match="--revision v1: only for a hub id"):
        models.with_revision("/some/dir", "v1")


def test_a_path_is_never_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert models.parse_hub_id("org/name") is None  # exists here: a directory
    assert models.parse_hub_id("./x/y") is None and models.parse_hub_id("/x/y") is None
    assert models.parse_hub_id("Qwen/Qwen2.5-0.5B-Instruct@main") == models.HubId("Qwen/Qwen2.5-0.5B-Instruct", "main")


def test_the_runs_spec_records_repo_and_commit(tmp_path, monkeypatch):
    from engine import runner
    from engine.sampling import resolve_sampling

    tiny = models.find_local_model(models.SMOLLM2_NAME)
    if tiny is None:
        pytest.skip("the tiny model is not built (python -m engine model)")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache(tmp_path / "hub", tiny)))
    plan = runner.plan_run(
        model="tiny-org/tiny-model", tier="smoke", bench_names=["arith"], think=False, seed=0, samples=1,
        sampling=resolve_sampling("greedy", False), max_tokens=16, limit=2, data_dir=None,
        engine=VllmEngine(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=0),
    )  # fmt: skip
    assert (plan.spec.model, plan.spec.model_repo, plan.spec.model_revision) == ("tiny-model", "tiny-org/tiny-model", COMMIT)
    assert plan.spec.model_fingerprint == models.checkpoint_fingerprint(tiny)


def test_missing_hub_model_exits_2_in_one_line_before_any_engine(tmp_path):
    started = time.monotonic()
    proc = run_cli("--model", "nobody/nothing", "--benches", "arith", cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path)})
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --model nobody/nothing: not in {tmp_path}; download it first: `hf download nobody/nothing` (runs never download weights; "
        f"a gated model needs `hf auth login` first)"
    ]
    assert not (tmp_path / "runs").exists() and time.monotonic() - started < 60


# ---------------------------------------------------------------- --engine-arg


def test_engine_args_parse_as_pairs_or_one_json_object():
    assert engine_args.parse(["max_num_seqs=8", "enforce-eager=true", "quantization=fp8"]) == {
        "max_num_seqs": 8, "enforce_eager": True, "quantization": "fp8"
    }  # fmt: skip
    assert engine_args.parse(['{"kv_cache_dtype": "fp8", "max_num_seqs": 4}']) == {"kv_cache_dtype": "fp8", "max_num_seqs": 4}
    with pytest.raises(UserError, match="given twice"):
        engine_args.parse(["max_num_seqs=8", "max_num_seqs=4"])
    with pytest.raises(UserError, match="give KEY=VALUE"):
        engine_args.parse(["enforce_eager"])


def test_engine_args_are_checked_against_vllms_own():
    pytest.importorskip("vllm")
    assert engine_args.validate({"max_num_seqs": 8, "gpu_memory_utilization": 0.8}) == {"gpu_memory_utilization": 0.8, "max_num_seqs": 8}
    with pytest.raises(UserError, match="max_num_seq: not a vLLM engine argument; did you mean max_num_seqs"):
        engine_args.validate({"max_num_seq": 8})
    with pytest.raises(UserError, match="enforce_eager=3: vLLM expects bool"):
        engine_args.validate({"enforce_eager": 3})
    with pytest.raises(UserError, match="kv_cache_dtype=\"fp9\": vLLM expects one of auto"):
        engine_args.validate({"kv_cache_dtype": "fp9"})
    with pytest.raises(UserError, match="dtype: set by the harness; use --dtype"):
        engine_args.validate({"dtype": "half"})


def test_unknown_engine_arg_exits_2_before_the_engine(tmp_path):
    pytest.importorskip("vllm")
    proc = run_cli("--model", "smollm2-135m", "--benches", "arith", "--limit", "1", "--engine-arg", "max_num_seq=2", cwd=tmp_path)
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr[-2000:]
    assert "error: --engine-arg max_num_seq: not a vLLM engine argument; did you mean max_num_seqs" in proc.stderr
    assert "engine ready" not in proc.stderr and not (tmp_path / "runs").exists()


def _vllm(**args) -> VllmEngine:
    return VllmEngine(dtype="bfloat16", chunked_prefill=False, bs1=False, prefix_caching=False, max_model_len=512, engine_args=args)


def test_engine_args_join_the_contract_by_role():
    fields = specs.contract(make_spec(engine=_vllm(max_num_seqs=8, gpu_memory_utilization=0.8, quantization="fp8")))
    assert fields["engine.args.max_num_seqs"] == 8
    assert "engine.args.gpu_memory_utilization" not in fields and "engine.args.quantization" not in fields
    for key, (role, reason) in specs.ENGINE_ARG_ROLES.items():
        assert role in (specs.CONTRACT, specs.INFORMATIVE) and reason, key
    # Either side setting a contract key is a difference; the other side ran vLLM's default.
    base, cand = make_spec(engine=_vllm()), make_spec(engine=_vllm(max_num_seqs=8))
    assert specs.diff(base, cand) == [specs.Difference("engine.args.max_num_seqs", specs.ABSENT_ENGINE_ARG, 8)]
    assert specs.diff(cand, base) == [specs.Difference("engine.args.max_num_seqs", 8, specs.ABSENT_ENGINE_ARG)]
    assert specs.waived("engine.args.max_num_seqs", specs.expand_waivers(["engine"]))
    assert specs.waived("engine.args.max_num_seqs", specs.expand_waivers(["engine.args.max_num_seqs"]))
    assert not specs.waived("engine.args.max_num_seqs", specs.expand_waivers(["seed"]))


def test_candidate_defining_engine_args_change_the_model_fingerprint():
    assert models.with_candidate_args("abc", {"max_num_seqs": 4}) == "abc"
    fp8 = models.with_candidate_args("abc", {"quantization": "fp8"})
    assert fp8.startswith("abc+") and fp8 != models.with_candidate_args("abc", {"kv_cache_dtype": "fp8"})


def test_engine_args_spec_round_trips_and_old_specs_still_read():
    spec = make_spec(engine=_vllm(max_num_seqs=8), model_repo="o/n", model_revision=COMMIT)
    assert msgspec.json.decode(msgspec.json.encode(spec), type=specs.RunSpec) == spec
    old = msgspec.json.decode(msgspec.json.encode(make_spec()), type=specs.RunSpec)
    assert old.engine.engine_args == {} and old.model_repo is None


# ---------------------------------------------------------------- NOT COMPARABLE remedies


def test_not_comparable_prints_one_remedy_line_per_field(tmp_path):
    base = write_run(tmp_path / "base", make_spec(), {"a": 1})
    cand_spec = make_spec(seed=3, tier="standard", engine=_vllm(max_num_seqs=8))
    cand_spec = msgspec.structs.replace(cand_spec, engine=msgspec.structs.replace(cand_spec.engine, chunked_prefill=True))
    cand = write_run(tmp_path / "cand", cand_spec, {"a": 1})
    with pytest.raises(NotComparable) as exc:
        check_comparable(base, cand)
    lines = str(exc.value).splitlines()
    by_field = {line.split(":")[0].strip(): line for line in lines[1:]}
    assert set(by_field) == {"tier", "seed", "engine.chunked_prefill", "engine.args.max_num_seqs"}
    assert by_field["tier"].endswith("-> rerun the candidate with --tier smoke")
    assert "rerun the candidate with --seed 0, or accept it with --allow-differ seed (the pair no longer shares" in by_field["seed"]
    assert "rerun the candidate with no --chunked-prefill, or accept it with --allow-differ chunked_prefill" in by_field["engine.chunked_prefill"]
    assert "rerun the candidate without --engine-arg max_num_seqs, or accept it with --allow-differ engine.args.max_num_seqs" in (
        by_field["engine.args.max_num_seqs"]
    )


def test_endpoint_against_in_process_names_the_hidden_engine_fields(tmp_path):
    base = write_run(tmp_path / "base", make_spec(), {"a": 1})
    served = OpenAIEngine(base_url="http://127.0.0.1:1", served_model="m")
    cand = write_run(tmp_path / "cand", make_spec(engine=served), {"a": 1})
    with pytest.raises(NotComparable) as exc:
        check_comparable(base, cand)
    text = str(exc.value)
    hidden = [n for n in specs.ENGINE_CONTRACT_FIELDS if n != "backend"]
    assert f"an endpoint hides its engine settings ({', '.join(hidden)}): unknown, not known to differ" in text
    assert "engine.dtype: baseline 'bfloat16' vs candidate 'unknown' -> the server does not reveal it" in text
    assert "engine.backend: baseline 'vllm' vs candidate 'openai' -> an endpoint and an in-process engine" in text


@pytest.mark.parametrize(
    "field, base, cand, expected",
    [
        ("think", True, False, "rerun the candidate with --think"),
        ("think", False, True, "rerun the candidate with --no-think"),
        ("sampling.temperature", 0.7, 0.0, "rerun the candidate with --temperature 0.7"),
        ("arith.max_tokens", 128, 64, "rerun the candidate with --max-tokens 128"),
        ("arith.items_fingerprint", "a", "b", "other arith items: rerun with the baseline's --tier, --limit and --item-seed"),
        ("gsm8k", "<not in baseline>", "present", "the baseline did not run gsm8k"),
        ("arith.version", "1", "2", "`python -m engine baseline --model BASE --tier T`"),
        ("engine.args.quantization", "fp8", specs.ABSENT_ENGINE_ARG, "rerun the candidate with --engine-arg quantization=fp8"),
    ],
)
def test_remedy_names_the_flag_that_matches(field, base, cand, expected):
    assert expected in remedy(field, base, cand)


# ---------------------------------------------------------------- the default battery


def test_default_benches_are_the_battery_whose_data_is_here(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text("{}\n")
    have, line = battery.default_benches(tmp_path)
    assert have == ["arith", "gsm8k", "tradequiz"]
    missing = [b for b in battery.BATTERY if b not in have]
    assert line == (
        f"benches skipped, no data under --data-dir {tmp_path}: {', '.join(missing)}; put DIR/<bench>/ files there, "
        f"or fetch them with `python -m engine data fetch --benches {','.join(missing)}` (gpqa is gated: set HF_TOKEN) "
        f"and drop --data-dir"
    )
    assert "godmode" not in battery.BATTERY and "trader_traits" not in battery.BATTERY  # custom exams: opt in


# ---------------------------------------------------------------- command-line conventions


def test_version(capsys):
    assert main(["--version"]) == 0
    assert re.fullmatch(r"degradation-harness \S+( \(vllm \S+\))?\n", capsys.readouterr().out)


def test_openai_api_key_is_read_by_default(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert _run_parser().parse_args(["--model", "m"]).api_key_env == "OPENAI_API_KEY"
    assert _run_parser().parse_args(["--model", "m", "--api-key-env", "MY_KEY"]).api_key_env == "MY_KEY"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert _run_parser().parse_args(["--model", "m"]).api_key_env is None


@pytest.mark.parametrize(
    "flag, ours", [("--tasks", "--benches"), ("--output_path", "--out"), ("--model_args", "--engine-arg"), ("--num_fewshot", "zero-shot")]
)
def test_lm_eval_flags_get_a_hint(flag, ours, capsys):
    assert main(["--model", "m", f"{flag}=x"]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {flag} is lm-eval's flag; here it is") and ours in err and "\n" not in err


def _seconds(*args: str) -> float:
    best = float("inf")
    for _ in range(2):  # the faster of two: a loaded machine adds noise, never speed
        started = time.monotonic()
        subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, check=True)
        best = min(best, time.monotonic() - started)
    return best


def test_every_help_answers_in_under_a_second():
    from engine.__main__ import SUBCOMMANDS

    floor = _seconds("-c", "pass")
    for command in ["", *SUBCOMMANDS]:
        took = _seconds("-m", "engine", *([command] if command else []), "--help") - floor
        assert took < 1.0, f"`python -m engine {command} --help` took {took:.2f} s beyond python's own start"
