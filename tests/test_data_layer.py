"""The shared dataset layer: file formats, field checks, dropped-row reports, hub errors, real row counts."""

from __future__ import annotations

import csv
import importlib
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import need_shared_data

import benches
from benches import data, gsm8k, mmlu_pro
from engine.errors import UserError

MMLU_PRO_SIZES = {
    "biology": 717, "business": 789, "chemistry": 1132, "computer science": 410, "economics": 844,
    "engineering": 969, "health": 818, "history": 381, "law": 1101, "math": 1351, "other": 924,
    "philosophy": 499, "physics": 1299, "psychology": 798,
}  # fmt: skip

MMLU_ROWS = [
    {"question_id": 7, "question": "Which gas do plants take in?", "options": ["O2", "CO2", "N2", "He"],
     "answer": "B", "answer_index": 1, "category": "biology"},
    {"question_id": 9, "question": "2 + 2 = ?", "options": ["3", "4", "5"], "answer": "B", "answer_index": 1,
     "category": "math"},
    {"question_id": 11, "question": "Capital of France?", "options": ["Paris", "Rome", "Bonn", "Oslo", "Bern"],
     "answer": "A", "answer_index": 0, "category": "other"},
]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict], list_cell=json.dumps) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: list_cell(v) if isinstance(v, list) else v for k, v in row.items()})
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("name", ["test.jsonl", "test.parquet", "test.csv"])
def test_mmlu_pro_loads_the_same_items_from_every_format(tmp_path, name):
    writer = {".jsonl": write_jsonl, ".parquet": write_parquet, ".csv": write_csv}[Path(name).suffix]
    writer(tmp_path / "mmlu_pro" / name, MMLU_ROWS)
    items = mmlu_pro.load(tmp_path)
    reference = mmlu_pro.load(write_jsonl(tmp_path / "ref" / "mmlu_pro" / "test.jsonl", MMLU_ROWS).parent.parent)
    assert items == reference
    assert benches.data_fingerprint(items) == benches.data_fingerprint(reference)
    assert [i.id for i in items] == ["7", "9", "11"]
    assert items[2].meta["options"] == ["Paris", "Rome", "Bonn", "Oslo", "Bern"]


def test_csv_list_cells_take_json_arrays_or_pipes(tmp_path):
    as_json = data.check_fields(data.read_rows(write_csv(tmp_path / "a.csv", MMLU_ROWS)), "a", mmlu_pro.FIELDS)
    piped = write_csv(tmp_path / "b.csv", MMLU_ROWS, list_cell="|".join)
    assert data.check_fields(data.read_rows(piped), "b", mmlu_pro.FIELDS) == as_json
    assert as_json[0]["question_id"] == 7 and as_json[0]["options"] == ["O2", "CO2", "N2", "He"]


def test_missing_field_names_the_field_row_and_file(tmp_path):
    rows = [dict(MMLU_ROWS[0]), {k: v for k, v in MMLU_ROWS[1].items() if k != "options"}]
    write_jsonl(tmp_path / "mmlu_pro" / "test.jsonl", rows)
    with pytest.raises(UserError, match=r"test\.jsonl: row 2 has no field 'options'"):
        mmlu_pro.load(tmp_path)


def test_mistyped_field_is_named(tmp_path):
    rows = [dict(MMLU_ROWS[0], question_id="seven")]
    write_jsonl(tmp_path / "mmlu_pro" / "test.jsonl", rows)
    with pytest.raises(UserError, match=r"row 1 field 'question_id' is 'seven', expected an integer"):
        mmlu_pro.load(tmp_path)


def test_bad_files_are_one_line_errors(tmp_path):
    bad_json = tmp_path / "x.jsonl"
    bad_json.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(UserError, match=r"x\.jsonl:2: not valid JSON"):
        data.read_rows(bad_json)
    extra_cells = tmp_path / "x.csv"
    extra_cells.write_text("id,question\n1,what, really?\n")
    with pytest.raises(UserError, match="row 1 has more cells than the header"):
        data.read_rows(extra_cells)
    with pytest.raises(UserError, match="unsupported file type"):
        data.read_rows(tmp_path / "x.xlsx")


def test_duplicated_id_is_an_error(tmp_path):
    write_jsonl(tmp_path / "mmlu_pro" / "test.jsonl", [MMLU_ROWS[0], dict(MMLU_ROWS[1], question_id=7)])
    with pytest.raises(UserError, match="duplicated item id '7'"):
        mmlu_pro.load(tmp_path)


def test_dropped_rows_are_reported_with_reason_and_ids(tmp_path, capsys):
    rows = [*MMLU_ROWS, dict(MMLU_ROWS[1], question_id=12, answer="H")]
    write_jsonl(tmp_path / "mmlu_pro" / "test.jsonl", rows)
    items = mmlu_pro.load(tmp_path)
    assert [i.id for i in items] == ["7", "9", "11"]
    err = capsys.readouterr().err
    assert "mmlu_pro: dropped 1 of 4 rows" in err
    assert "answer letter not among the options: 1 (12)" in err


def test_nothing_dropped_prints_nothing(tmp_path, capsys):
    write_jsonl(tmp_path / "mmlu_pro" / "test.jsonl", MMLU_ROWS)
    mmlu_pro.load(tmp_path)
    assert capsys.readouterr().err == ""


def test_gsm8k_reports_a_row_without_final_answer(tmp_path, capsys):
    rows = [{"question": "q1", "answer": "so #### 4"}, {"question": "q2", "answer": "no final line"}]
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", rows)
    items = gsm8k.load(tmp_path)
    assert [(i.id, i.target) for i in items] == [("gsm8k-0000", "4")]
    assert "gsm8k: dropped 1 of 2 rows" in capsys.readouterr().err


def test_missing_local_file_names_the_folder_and_files(tmp_path):
    with pytest.raises(UserError, match=r"no test\.jsonl or test\.parquet .* under .*mmlu_pro \(--data-dir"):
        mmlu_pro.load(tmp_path)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_offline_and_not_cached_names_the_fetch_command(empty_hub_cache):
    with pytest.raises(UserError) as err:
        mmlu_pro.load(None)
    message = str(err.value)
    assert "HF_HUB_OFFLINE is set" in message
    assert "`python -m engine data fetch --benches mmlu_pro`" in message
    assert "--data-dir DIR holding mmlu_pro/test.jsonl" in message
    assert "\n" not in message


def test_data_fetch_command_refuses_offline(empty_hub_cache, capsys):
    from engine.__main__ import main

    assert main(["data", "fetch", "--benches", "gsm8k"]) == 2
    assert capsys.readouterr().err == "error: data fetch: HF_HUB_OFFLINE is set; unset it to download (this command needs the network)\n"
    with pytest.raises(UserError, match="gsm8k: HF_HUB_OFFLINE is set; unset it to fetch openai/gsm8k@740312ad"):
        data.fetch(gsm8k)


def test_data_fetch_command_reports_each_bench(monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants

    from engine.__main__ import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, filename, **kw: f"/cache/{repo}/{filename}")
    assert main(["data", "fetch", "--benches", "mmlu_pro,arith"]) == 0
    out = capsys.readouterr().out
    assert "mmlu_pro: TIGER-Lab/MMLU-Pro@b189ec76:data/test-00000-of-00001.parquet -> /cache/TIGER-Lab/MMLU-Pro/" in out
    assert "arith: nothing to fetch" in out
    assert main(["data", "fetch"]) == 0  # every hub bench; the gated one only with a token
    assert "gpqa: skipped (Idavidrein/gpqa is gated" in capsys.readouterr().out


def _raise(error: type, status: int):
    """A stand-in for hf_hub_download that fails like the hub does (no network in tests)."""
    from huggingface_hub.errors import Response

    http = importlib.import_module(Response.__module__.split(".")[0])  # the HTTP client the hub library uses
    url = "https://huggingface.co/datasets/Idavidrein/gpqa/resolve/main/gpqa_diamond.csv"
    response = http.Response(status, request=http.Request("HEAD", url))

    def fake_download(*args, **kwargs):
        raise error(f"{status} Client Error", response=response)

    return fake_download


def test_gated_without_token_says_how_to_get_access(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from benches import gpqa

    hint = "set HF_TOKEN, or pass --data-dir DIR holding gpqa/gpqa_diamond.csv"
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raise(GatedRepoError, 403))
    with pytest.raises(UserError, match=f"gpqa: Idavidrein/gpqa is gated: accept its terms .* and {hint}"):
        gpqa.load(None)
    # Without a token the hub answers 401 "repository not found" for a gated set.
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raise(RepositoryNotFoundError, 401))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(UserError, match="is gated"):
        gpqa.load(None)


def test_hub_file_is_read_from_the_cache(tmp_path, monkeypatch):
    import huggingface_hub

    cached = write_parquet(tmp_path / "snap" / "test-00000-of-00001.parquet", MMLU_ROWS)
    calls = []

    def fake_download(repo, filename, **kwargs):
        calls.append((repo, filename, kwargs["revision"], kwargs["repo_type"]))
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert [i.id for i in mmlu_pro.load(None)] == ["7", "9", "11"]
    assert calls == [("TIGER-Lab/MMLU-Pro", "data/test-00000-of-00001.parquet", mmlu_pro.HUB.revision, "dataset")]


def test_every_hub_bench_pins_a_full_commit():
    for name in benches.BENCHES:
        hub = getattr(benches.get_bench(name), "HUB", None)
        if hub is not None:
            assert len(hub.revision) == 40 and all(c in "0123456789abcdef" for c in hub.revision), name


def test_mmlu_pro_real_file_rows_categories_and_quirk(capsys):
    path = need_shared_data("mmlu_pro/test.jsonl")
    items = mmlu_pro.load(path.parent.parent)
    assert len(items) == 12032
    assert Counter(i.category for i in items) == MMLU_PRO_SIZES
    assert len({i.id for i in items}) == 12032
    by_id = {i.id: i for i in items}
    assert by_id["3983"].target == "C"  # the letter, not answer_index 1
    assert by_id["70"].target == "I" and len(by_id["70"].meta["options"]) == 9
    err = capsys.readouterr().err
    assert "1 row(s) have answer_index disagreeing with the answer letter (question_id 3983)" in err
    assert "dropped" not in err


def test_gsm8k_real_file_has_every_row():
    path = need_shared_data("gsm8k/test.jsonl")
    items = gsm8k.load(path.parent.parent)
    assert len(items) == 1319
    assert items[0].target == "18"
