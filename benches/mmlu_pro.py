"""mmlu_pro: 12,032 knowledge questions in 14 categories, up to ten options (A-J), zero-shot chain of thought.

The prompt asks for "The answer is (X)" like the TIGER-Lab reference; extraction follows the reference's
chain: `answer is (X)`, then `Answer: X`, then the last standalone letter A-J. Where the reference
guesses a random letter when nothing is found, a miss here is wrong. The stage that matched is kept
in the record's extra. Results are per category through ItemRecord.category.

Data quirk: question_id 3983 has answer "C" but answer_index 1; the letter is the truth (as in the
reference scorer) and the number of such rows is reported on load.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from benches import Item, Scored, check_unique_ids, data

NAME = "mmlu_pro"
VERSION = "1"
MAX_TOKENS = {False: 2048, True: 8192}
HUB = data.HubFile(
    repo="TIGER-Lab/MMLU-Pro",
    revision="b189ec765aa7ed75c8acfea42df31fdae71f97be",
    filename="data/test-00000-of-00001.parquet",
)
LOCAL_FILES = ("test.jsonl", "test.parquet", "test-00000-of-00001.parquet", "test.csv")
FIELDS = {"question_id": int, "question": str, "options": list, "answer": str, "category": str}
LETTERS = "ABCDEFGHIJ"

PROMPT = (
    "The following is a multiple choice question about {category}. Think step by step and then finish "
    'your answer with "The answer is (X)" where X is the letter of the correct option.\n\n'
    "Question: {question}\nOptions:\n{options}"
)

_ANSWER_IS = re.compile(r"answer is \(?([A-J])\)?")
_ANSWER_COLON = re.compile(r".*[aA]nswer:\s*([A-J])")
_LAST_LETTER = re.compile(r"\b[A-J]\b(?!.*\b[A-J]\b)", re.DOTALL)


def load(data_dir: Path | None = None) -> list[Item]:
    rows, source = data.load_rows(NAME, data_dir, HUB, LOCAL_FILES)
    rows = data.check_fields(rows, source, FIELDS, optional={"answer_index": int})
    items: list[Item] = []
    outside: list[str] = []
    too_many: list[str] = []
    index_mismatch: list[str] = []
    for row in rows:
        item_id = str(row["question_id"])
        # Old revisions pad options with "N/A" (the reference drops them); strip the whitespace some
        # revisions carry, so local and hub copies of the same question give the same item.
        options = [o.strip() for o in row["options"]]
        while options and options[-1] == "N/A":
            options.pop()
        answer = row["answer"].strip()
        if len(options) > len(LETTERS):
            too_many.append(item_id)
            continue
        if answer not in LETTERS[: len(options)]:
            outside.append(item_id)
            continue
        if row["answer_index"] is not None and row["answer_index"] != LETTERS.index(answer):
            index_mismatch.append(item_id)
        items.append(
            Item(
                id=item_id,
                question=row["question"],
                target=answer,
                category=row["category"],
                meta={"options": options},
            )
        )
    dropped = {"more than ten options": too_many, "answer letter not among the options": outside}
    data.report_dropped(NAME, source, len(rows), dropped)
    if index_mismatch:
        print(
            f"note: {NAME}: {len(index_mismatch)} row(s) have answer_index disagreeing with the answer letter "
            f"(question_id {', '.join(index_mismatch[:5])}); the letter is kept as the truth",
            file=sys.stderr,
        )
    return check_unique_ids(items, source)


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, item.meta["options"], strict=False))
    content = PROMPT.format(category=item.category, question=item.question, options=options)
    return [{"role": "user", "content": content}]


def extract(text: str) -> tuple[str | None, str | None]:
    """(letter, stage that found it): the reference chain, first stage that matches wins."""
    if match := _ANSWER_IS.search(text):
        return match.group(1), "answer_is"
    if match := _ANSWER_COLON.search(text):
        return match.group(1), "answer_colon"
    if match := _LAST_LETTER.search(text):
        return match.group(0), "last_letter"
    return None, None


def score(item: Item, text: str) -> Scored:
    answer, stage = extract(text)
    return Scored(answer=answer, score=float(answer == item.target), extra={"extracted_by": stage})
