"""The command line's contract: exit codes and one-line errors, without starting an engine."""

import msgspec
from conftest import run_cli
from test_records import make_spec, write_run

from engine.records import encode_spec


def one_line_error(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unknown_bench_exits_2():
    proc = run_cli("--model", "smollm2-135m", "--benches", "nope")
    assert proc.returncode == 2
    assert "unknown bench 'nope'" in one_line_error(proc)


def test_missing_model_exits_2(tmp_path):
    proc = run_cli("--model", str(tmp_path / "absent"), "--benches", "arith")
    assert proc.returncode == 2
    assert "no such checkpoint directory" in one_line_error(proc)


def test_missing_data_exits_2(tmp_path, tiny_model):
    proc = run_cli("--model", "smollm2-135m", "--benches", "gsm8k", "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "gsm8k" in one_line_error(proc)


def test_run_dir_of_another_spec_exits_2_and_is_untouched(tmp_path, tiny_model):
    out = tmp_path / "run"
    out.mkdir()
    other = encode_spec(make_spec())
    (out / "spec.json").write_bytes(other)
    proc = run_cli("--model", "smollm2-135m", "--benches", "arith", "--out", str(out))
    assert proc.returncode == 2
    assert "holds a run of another spec" in one_line_error(proc)
    assert (out / "spec.json").read_bytes() == other


def test_compare_not_comparable_exits_3(tmp_path):
    write_run(tmp_path / "base", make_spec(), {"a": 1})
    write_run(tmp_path / "cand", make_spec(think=True, seed=3), {"a": 1})
    proc = run_cli("compare", str(tmp_path / "base"), str(tmp_path / "cand"))
    assert proc.returncode == 3
    assert "⚠ NOT COMPARABLE" in proc.stdout
    assert "  think: baseline False vs candidate True" in proc.stdout
    assert "  seed: baseline 0 vs candidate 3" in proc.stdout


def test_compare_exit_codes_follow_the_verdict(tmp_path):
    spec = make_spec()
    many = {f"i{k}": 1.0 for k in range(12)}
    write_run(tmp_path / "base", spec, many)
    write_run(tmp_path / "same", msgspec.structs.replace(spec, model="c"), many)
    write_run(tmp_path / "worse", msgspec.structs.replace(spec, model="c"), {k: 0.0 for k in many})
    assert run_cli("compare", str(tmp_path / "base"), str(tmp_path / "same")).returncode == 0
    worse = run_cli("compare", str(tmp_path / "base"), str(tmp_path / "worse"), "--json")
    assert worse.returncode == 1
    result = msgspec.json.decode(worse.stdout)
    assert result["decision"] == "DEGRADED" and result["exit_code"] == 1 and result["benches"][0]["b"] == 12


def test_not_a_run_dir_exits_2(tmp_path):
    proc = run_cli("compare", str(tmp_path), str(tmp_path))
    assert proc.returncode == 2
    assert "not a run directory" in one_line_error(proc)
