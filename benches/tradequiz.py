"""tradequiz: the domain bench, multiple-choice questions from the user's own files.

Where the questions come from:
    --data-dir DIR    every DIR/tradequiz/*.jsonl and DIR/tradequiz/*.csv, files in name order
    (no --data-dir)   benches/tradequiz_example.jsonl: ten questions written to show the format,
                      too few to measure anything

Schema, one question per JSONL line or CSV row:
    id         unique text (or integer) naming the question across all files
    question   the question text
    options    2 to 10 answer options; in CSV one cell: a JSON array, or options separated by `|`
    answer     the letter of the correct option: A for the first, B for the second, ...
    category   optional: topic; smoke runs keep every category's share, results are per category

Rows are the user's own data, so a bad one stops the load with its file, row and field named (fix
it and rerun) instead of being dropped. The prompt asks for a last line `Answer: X`; the last such
line in the response is the answer (markdown bold removed), anything else scores wrong.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from benches import Item, Scored, check_unique_ids, data
from engine.errors import UserError

NAME = "tradequiz"
VERSION = "1"
MAX_TOKENS = {False: 1024, True: 8192}
EXAMPLE = Path(__file__).with_name("tradequiz_example.jsonl")
FIELDS = {"id": str, "question": str, "options": list, "answer": str}
LETTERS = "ABCDEFGHIJ"

PROMPT = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of {letters}. Think step by "
    "step before answering.\n\n{question}\n\n{options}"
)

_ANSWER = re.compile(r"(?i:answer)[ \t]*:[ \t]*\$?\(?([A-J])\b")


def _files(data_dir: Path | None) -> list[Path]:
    if data_dir is None:
        print(f"note: {NAME}: no --data-dir, running the shipped example {EXAMPLE.name}", file=sys.stderr)
        return [EXAMPLE]
    folder = Path(data_dir) / NAME
    files = sorted(folder.glob("*.jsonl")) + sorted(folder.glob("*.csv"))
    if not files:
        raise UserError(
            f"{NAME}: no *.jsonl or *.csv under {folder} (--data-dir {data_dir}); put your questions there "
            f"(schema in benches/tradequiz.py, example in {EXAMPLE.name})"
        )
    return files


def _item(row: dict, where: str) -> Item:
    options = [o.strip() for o in row["options"]]
    if not 2 <= len(options) <= len(LETTERS) or not all(options):
        raise UserError(f"{where} field 'options': give 2 to {len(LETTERS)} non-empty options (got {len(options)})")
    answer = row["answer"].strip().upper()
    if answer not in LETTERS[: len(options)]:
        raise UserError(
            f"{where} field 'answer' is {row['answer']!r}: give the letter of the correct option, "
            f"A to {LETTERS[len(options) - 1]}"
        )
    for field in ("id", "question"):
        if not row[field].strip():
            raise UserError(f"{where} field {field!r} is empty")
    return Item(
        id=row["id"].strip(),
        question=row["question"].strip(),
        target=answer,
        category=(row["category"] or "").strip() or None,
        meta={"options": options},
    )


def load(data_dir: Path | None = None) -> list[Item]:
    files = _files(data_dir)
    items = []
    for path in files:
        rows = data.check_fields(data.read_rows(path), str(path), FIELDS, optional={"category": str})
        items += [_item(row, f"{path}: row {number}") for number, row in enumerate(rows, 1)]
    return check_unique_ids(items, str(files[0].parent) if len(files) > 1 else str(files[0]))


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    letters = LETTERS[: len(item.meta["options"])]
    options = "\n".join(f"{letter}) {text}" for letter, text in zip(letters, item.meta["options"], strict=True))
    content = PROMPT.format(letters=letters, question=item.question, options=options)
    return [{"role": "user", "content": content}]


def score(item: Item, text: str) -> Scored:
    found = _ANSWER.findall(text.replace("**", ""))
    answer = found[-1] if found else None
    return Scored(answer=answer, score=float(answer == item.target))
