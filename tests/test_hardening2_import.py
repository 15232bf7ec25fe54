"""Issue 29, item 6 (importer): an imported run is complete and says so; a re-import never destroys
the evidence of an edit; `--metric ll_margin` is refused as docs/hardening.md says, the margin being
tested by `compare` beside the primary metric."""

from __future__ import annotations

from pathlib import Path

from engine.__main__ import main
from engine.records import MANIFEST_FILE, incomplete_reason, read_run, records_path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lm_eval"


def _import(out: Path, source: Path = FIXTURES / "base") -> int:
    return main(["import", "lm-eval", str(source), "--out", str(out)])


def test_an_imported_run_is_complete_and_compare_says_so(tmp_path, capsys):
    assert _import(tmp_path / "base") == 0 and _import(tmp_path / "int3", FIXTURES / "rtn-int3") == 0
    for name in ("base", "int3"):
        run = read_run(tmp_path / name)
        assert run.manifest.startswith("verified") and incomplete_reason(run) is None
    capsys.readouterr()
    main(["compare", str(tmp_path / "base"), str(tmp_path / "int3")])
    out = capsys.readouterr().out
    assert "not completed" not in out and "absent" not in out


def test_reimporting_over_an_edited_import_is_refused_and_nothing_deleted(tmp_path, capsys):
    assert _import(tmp_path / "run") == 0
    path = records_path(tmp_path / "run", "mmlu_pro_local")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))  # one document dropped after the import
    manifest = (tmp_path / "run" / MANIFEST_FILE).read_bytes()
    capsys.readouterr()
    assert _import(tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"mmlu_pro_local.jsonl:{len(lines)}: does not match" in err and "--out" in err
    assert (tmp_path / "run" / MANIFEST_FILE).read_bytes() == manifest
    assert path.read_bytes() == b"".join(lines[:-1])


def test_ll_margin_is_tested_beside_the_primary_metric_not_as_it(tmp_path, capsys):
    capsys.readouterr()
    assert main(["import", "lm-eval", str(FIXTURES / "base"), "--out", str(tmp_path / "m"), "--metric", "ll_margin"]) == 2
    assert "compare tests the margin beside it" in capsys.readouterr().err
    doc = " ".join((Path(__file__).resolve().parent.parent / "docs" / "hardening.md").read_text().split())
    assert "`--metric ll_margin` is refused" in doc
