"""Issue 18, items 4 and 6: every bad input refused in one line before any engine starts; exit codes
that never read a crash or an interrupt as a verdict."""

from __future__ import annotations

import argparse
import shutil

import pytest
from conftest import run_cli

from engine import __main__ as cli
from engine import checks, models
from engine.errors import EXIT_CRASH, UserError
from engine.spec import expand_waivers


@pytest.mark.parametrize(
    "args,message",
    [
        (["--limit", "0"], "--limit 0: must be at least 1"),
        (["--max-tokens", "-5"], "--max-tokens -5: must be at least 1"),  # was silently the default
        (["--max-tokens", "0"], "--max-tokens 0: must be at least 1"),
        (["--min-p", "1.5"], "--min-p 1.5: out of range (allowed: [0, 1])"),  # was a vLLM traceback
        (["--temperature", "-0.5"], "--temperature -0.5: out of range"),
        (["--top-p", "0"], "--top-p 0.0: out of range"),
        (["--repetition-penalty", "0"], "--repetition-penalty 0.0: out of range"),
        (["--alpha", "2"], "--alpha 2: the significance level must lie strictly between 0 and 1"),  # was DEGRADED [+inf, -inf]
        (["--allow-differ", "tier"], "--allow-differ tier: not a waivable field"),  # was exit 3
        (["--out", "/proc/no/such/run"], "--out /proc/no/such/run: cannot be written"),
        (["-c", "0"], "--concurrency 0: must be at least 1"),
    ],
)
def test_bad_run_input_exits_2_with_one_line_naming_the_flag(args, message):
    proc = run_cli("--model", "smollm2-135m", "--benches", "arith", *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [proc.stderr.strip().splitlines()[-1]]


@pytest.mark.parametrize(
    "args,message",
    [
        (["compare", "a", "b", "--alpha", "0"], "--alpha 0: the significance level"),
        (["compare", "a", "b", "--allow-differ", "seed,bogus"], "--allow-differ bogus: not a waivable field"),
        (["report", "a", "--html", "/proc/nope/r.html"], "--html /proc/nope/r.html: cannot be written"),
        (["degrade", "--model", "smollm2-135m", "--method", "rtn-int3", "--out", "/dev/null/x"], "--out /dev/null/x: cannot be written"),
        (["probe", "--model", "smollm2-135m", "--reference", "x", "--top-k", "abc"], "--top-k abc: give a positive number of bins, or 'full'"),
        (["comapre", "a", "b"], "unknown command 'comapre'; did you mean 'compare'?"),
        (["reprot", "a"], "did you mean 'report'?"),
    ],
)
def test_bad_subcommand_input_exits_2(args, message):
    proc = run_cli(*args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_every_subcommand():
    proc = run_cli("--help", timeout=120)
    assert proc.returncode == 0
    for name in cli.SUBCOMMANDS:
        assert f"  {name} " in proc.stdout, name
    assert set(cli.SUBCOMMAND_HELP) == set(cli.SUBCOMMANDS)


class _Parsed(Exception):
    pass


def _parsers(monkeypatch) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, caught at parse_args (no command runs)."""
    caught: dict[str, argparse.ArgumentParser] = {}

    def catch(self, args=None, namespace=None):
        caught[self.prog] = self
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    for command in [cli.cmd_run, *cli.SUBCOMMANDS.values()]:
        with pytest.raises(_Parsed):
            command([])
    return caught


def test_every_flag_has_help(monkeypatch):
    parsers = _parsers(monkeypatch)
    assert len(parsers) == len(cli.SUBCOMMANDS) + 1
    missing = []
    for prog, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    missing += [f"{sub.prog} {a.dest}" for a in sub._actions if not a.help]
            elif not action.help:
                missing.append(f"{prog} {action.dest}")
    assert missing == []


def test_unexpected_error_exits_4_with_one_line_and_the_traceback_in_the_run_log(tmp_path, monkeypatch, capsys):
    def boom(argv):
        cli._log_dir = tmp_path
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(cli, "cmd_run", boom)
    monkeypatch.setattr(cli, "_log_dir", None)
    assert cli.main(["--model", "x"]) == EXIT_CRASH == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: unexpected RuntimeError: something broke (traceback in {tmp_path / 'harness.log'}); exit 4"]
    log = (tmp_path / "harness.log").read_text()
    assert "Traceback (most recent call last)" in log and "RuntimeError: something broke" in log


def test_interrupt_outside_a_run_exits_130(monkeypatch, capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.SUBCOMMANDS, "compare", interrupted)
    assert cli.main(["compare", "a", "b"]) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.fixture
def checkpoint_copy(tmp_path):
    """A copy of the tiny model's small files, weights linked in (cheap to break)."""
    source = models.resolve_model(models.SMOLLM2_NAME, build=False)
    if not (source / "model.safetensors").is_file():
        pytest.skip("the tiny model is not built yet (python -m engine model)")
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for path in source.iterdir():
        if path.name == "model.safetensors":
            (copy / path.name).symlink_to(path)
        else:
            shutil.copy(path, copy / path.name)
    return copy


def test_config_json_that_is_not_json_is_refused(checkpoint_copy):
    (checkpoint_copy / "config.json").write_text("{not json")
    with pytest.raises(UserError, match=r"config\.json is not valid JSON"):
        models.resolve_model(str(checkpoint_copy))


def test_missing_weights_are_refused(checkpoint_copy):
    (checkpoint_copy / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"no weights \(\*\.safetensors or \*\.bin\)"):
        models.resolve_model(str(checkpoint_copy))


def test_missing_weight_shard_is_refused(checkpoint_copy):
    (checkpoint_copy / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model.safetensors"}}'
    )
    with pytest.raises(UserError, match="weight shards missing: model-00001-of-00002.safetensors"):
        models.resolve_model(str(checkpoint_copy))


def test_broken_tokenizer_is_refused_before_any_engine(checkpoint_copy):
    from engine.backends import load_tokenizer

    (checkpoint_copy / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "nonsense"}}')
    with pytest.raises(UserError, match="the tokenizer does not load"):
        load_tokenizer(checkpoint_copy)


def test_bad_checkpoint_via_the_cli_exits_2_in_one_line(checkpoint_copy):
    (checkpoint_copy / "config.json").write_text("[1, 2")
    proc = run_cli("--model", str(checkpoint_copy), "--benches", "arith", "--limit", "2", timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --model {checkpoint_copy}: config.json is not valid JSON")


def test_checks_helpers():
    assert checks.top_k("full") == 0 and checks.top_k("64") == 64
    with pytest.raises(UserError):
        checks.top_k("0")
    assert expand_waivers([" seed ".strip(), "engine.dtype"]) == ("seed", "engine.dtype")
