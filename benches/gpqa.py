"""gpqa: GPQA diamond, 198 graduate-level science questions with four options, prompted and scored like simple-evals.

GPQA's authors ask that its questions never appear in plain text on the web, so nothing of it is stored
in this repository: it is read from the gated hub dataset Idavidrein/gpqa (accept its terms, set
HF_TOKEN) or from the user's own copy, `--data-dir DIR` holding `DIR/gpqa/gpqa_diamond.csv` in that
dataset's CSV fields.

The source lists the correct answer first, so the options are shuffled: one permutation per item from
an RNG seeded with its Record ID (stable whatever the file order), kept in Item.meta (so it is part of
the data fingerprint, hence of the contract) and in each record's extra. Extraction is simple-evals'
`Answer: X` (first match, any case) after dropping markdown bold, which small models put around it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from benches import Item, Scored, check_unique_ids, data

NAME = "gpqa"
VERSION = "1"
MAX_TOKENS = {False: 2048, True: 16384}
HUB = data.HubFile(
    repo="Idavidrein/gpqa",
    revision="633f5ee89ab8ad4522a9f850766b73f62147ffdd",
    filename="gpqa_diamond.csv",
    gated=True,
)
LOCAL_FILES = ("gpqa_diamond.csv",)
SOURCE_CHOICES = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
FIELDS = {"Record ID": str, "Question": str} | {field: str for field in SOURCE_CHOICES}
PERMUTATION_SEED = "gpqa-diamond"

PROMPT = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step "
    "before answering.\n\n{question}\n\nA) {A}\nB) {B}\nC) {C}\nD) {D}"
)

_ANSWER = re.compile(r"(?i)Answer[ \t]*:[ \t]*\$?([A-D])\$?")


def permutation(record_id: str) -> list[int]:
    """Source choice shown at each position: position k shows SOURCE_CHOICES[perm[k]]."""
    return random.Random(f"{PERMUTATION_SEED}|{record_id}").sample(range(4), 4)


def load(data_dir: Path | None = None) -> list[Item]:
    rows, source = data.load_rows(NAME, data_dir, HUB, LOCAL_FILES)
    rows = data.check_fields(rows, source, FIELDS, optional={"High-level domain": str})
    items: list[Item] = []
    empty: list[str] = []
    for number, row in enumerate(rows, 1):
        record_id = row["Record ID"].strip()
        question = row["Question"].strip()
        choices = [row[field].strip() for field in SOURCE_CHOICES]
        if not (record_id and question and all(choices)):
            empty.append(record_id or f"row {number}")
            continue
        order = permutation(record_id)
        items.append(
            Item(
                id=record_id,
                question=question,
                target="ABCD"[order.index(0)],
                category=row["High-level domain"],
                meta={"options": [choices[i] for i in order], "permutation": order},
            )
        )
    data.report_dropped(NAME, source, len(rows), {"empty Record ID, question or answer": empty})
    return check_unique_ids(items, source)


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    a, b, c, d = item.meta["options"]
    return [{"role": "user", "content": PROMPT.format(question=item.question, A=a, B=b, C=c, D=d)}]


def score(item: Item, text: str) -> Scored:
    match = _ANSWER.search(text.replace("**", ""))
    answer = match.group(1).upper() if match else None
    return Scored(
        answer=answer, score=float(answer == item.target), extra={"permutation": item.meta["permutation"]}
    )
