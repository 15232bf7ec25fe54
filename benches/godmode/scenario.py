"""Reading a godmode scenario set: DIR/<scenario>/{description.md, questions.jsonl, data files}.

Bad input is a one-line UserError naming the file (and line and field) and what to do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from benches import Item
from engine.errors import UserError

KINDS = ("number", "text", "list")
UNITS = ("", "percent", "ratio")
REQUIRED = {"id": str, "question": str, "answer": str, "kind": str, "tolerance": (int, float), "convention": str}
OPTIONAL = {"unit": str, "ordered": bool, "reference": str}
DESCRIPTION = "description.md"
# Scenario name -> its folder, filled by loading. Kept out of the items: the same files at another path
# must give the same data fingerprint.
FOLDERS: dict[str, Path] = {}
QUESTIONS = "questions.jsonl"


def data_hash(folder: Path) -> str:
    """Content hash of a scenario's files (all but questions.jsonl): the data the model reads."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != QUESTIONS):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def load_items(root: Path) -> list[Item]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no godmode scenario dir (one folder per scenario with {DESCRIPTION} and {QUESTIONS})")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"{root}: holds no scenario folders (each needs {DESCRIPTION}, {QUESTIONS} and its data files)")
    items: list[Item] = []
    for folder in folders:
        items += load_scenario(folder)
    return items


def load_scenario(folder: Path) -> list[Item]:
    desc_path, q_path = folder / DESCRIPTION, folder / QUESTIONS
    for path in (desc_path, q_path):
        if not path.is_file():
            raise UserError(f"{path}: missing; every scenario folder needs {DESCRIPTION} and {QUESTIONS}")
    description = desc_path.read_text()
    if not description.strip():
        raise UserError(f"{desc_path}: empty; describe the data files shown to the model")
    fingerprint = data_hash(folder)
    items = []
    for number, line in enumerate(q_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{q_path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg}); one JSON object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: not a JSON object; one object per line")
        for field, kind in REQUIRED.items():
            if field not in row:
                raise UserError(f"{where}: field {field!r} missing (needs {', '.join(REQUIRED)})")
            if not isinstance(row[field], kind) or isinstance(row[field], bool):
                raise UserError(f"{where}: field {field!r} must be a {getattr(kind, '__name__', 'number')}, got {row[field]!r}")
        for field, kind in OPTIONAL.items():
            if field in row and not isinstance(row[field], kind):
                raise UserError(f"{where}: field {field!r} must be a {kind.__name__}, got {row[field]!r}")
        unknown = set(row) - set(REQUIRED) - set(OPTIONAL)
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (allowed: {', '.join([*REQUIRED, *OPTIONAL])})")
        if row["kind"] not in KINDS:
            raise UserError(f"{where}: field 'kind' is {row['kind']!r}; choose {', '.join(KINDS)}")
        if row.get("unit", "") not in UNITS:
            raise UserError(f"{where}: field 'unit' is {row['unit']!r}; choose percent, ratio or leave it out")
        if row["tolerance"] < 0:
            raise UserError(f"{where}: field 'tolerance' is negative")
        if not row["id"].strip() or not row["question"].strip() or not row["answer"].strip():
            raise UserError(f"{where}: 'id', 'question' and 'answer' must not be empty")
        items.append(
            Item(
                id=f"{folder.name}/{row['id']}",
                question=row["question"],
                target=row["answer"],
                category=folder.name,
                meta={
                    "kind": row["kind"], "tolerance": row["tolerance"], "convention": row["convention"],
                    "unit": row.get("unit", ""), "ordered": row.get("ordered", False),
                    "reference": row.get("reference", ""), "description": description,
                    "data_sha": fingerprint,
                },
            )  # fmt: skip
        )
    if not items:
        raise UserError(f"{q_path}: holds no questions")
    FOLDERS[folder.name] = folder.resolve()
    return items
