"""gsm8k: grade-school math, zero-shot chat prompt, scored with lm-eval's two extraction regexes
(strict `#### N`, flexible last number) and a numeric comparison.

Flexible is the score; strict is kept in the record's extra. The extraction regexes are lm-eval's
(lm_eval/tasks/gsm8k/gsm8k.yaml, version 3.0); the comparison is not lm-eval's exact string match.
Every difference from lm-eval is deliberate and listed in LM_EVAL_DIFFERENCES (each has a test in
tests/test_hardening2_scoring.py showing a completion where the two disagree): on those completions
this scorer counts the answer right where lm-eval counts it wrong, or (last `####`) reads the
model's final correction. Published lm-eval gsm8k numbers are therefore not directly comparable with
this bench's; a baseline and a candidate scored here always are.
"""

from __future__ import annotations

import re
from pathlib import Path

from benches import Item, Scored, check_unique_ids, data

NAME = "gsm8k"
VERSION = "1"
MAX_TOKENS = {False: 512, True: 4096}
# Pinned dataset commit; the loaded rows are also fingerprinted into the run spec.
HUB = data.HubFile(
    repo="openai/gsm8k",
    revision="740312add88f781978c0658806c59bc2815b9866",
    filename="main/test-00000-of-00001.parquet",
)
LOCAL_FILES = ("test.jsonl", "test.parquet", "test-00000-of-00001.parquet", "test.csv")

PROMPT = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    '"#### ANSWER" where ANSWER is the final number.\n\n{question}'
)

# Where this scorer deliberately differs from lm-eval's gsm8k task (name -> what and why).
LM_EVAL_DIFFERENCES = {
    "trailing zeros": "18.00 equals 18 (lm-eval compares strings: wrong)",
    "leading zeros": "018 equals 18 (lm-eval: wrong)",
    "bare leading decimal point": ".5 equals 0.5 (lm-eval: wrong against a target 0.5)",
    "trailing punctuation": "every trailing '.' is dropped, 18.. is 18 (lm-eval drops one '.')",
    "last #### wins": "strict takes the LAST '#### N', the model's final correction (lm-eval: the first)",
    "numbers only": "flexible takes the last match holding a digit ('...' after the answer is not an answer; lm-eval takes it)",
    "negative zero": "-0 equals 0 (lm-eval: wrong)",
}

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def load(data_dir: Path | None = None) -> list[Item]:
    rows, source = data.load_rows(NAME, data_dir, HUB, LOCAL_FILES)
    rows = data.check_fields(rows, source, {"question": str, "answer": str})
    items, no_final = [], []
    for index, row in enumerate(rows):
        item_id = f"gsm8k-{index:04d}"
        if "####" not in row["answer"]:
            no_final.append(item_id)
            continue
        target = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
        items.append(Item(id=item_id, question=row["question"], target=target))
    data.report_dropped(NAME, source, len(rows), {"answer without a final '#### N'": no_final})
    return check_unique_ids(items, source)


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT.format(question=item.question)}]


_DECIMAL = re.compile(r"(-?)(\d*)(?:\.(\d*))?")


def _normalize(number: str) -> str:
    """Canonical decimal text of a number ('007.50' -> '7.5', '-0' -> '0'), exactly, as a string.

    Never through float: a completion may end in a number of hundreds of digits (float() gives inf and
    int(inf) raises), and past 15 digits floats would call different numbers equal.
    """
    number = number.replace(",", "").replace("$", "").rstrip(".")
    match = _DECIMAL.fullmatch(number)
    if match is None or not (match[2] or match[3]):
        return number
    whole = match[2].lstrip("0") or "0"
    fraction = (match[3] or "").rstrip("0")
    sign = "" if whole == "0" and not fraction else match[1]
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"


def score(item: Item, text: str) -> Scored:
    strict = _STRICT.findall(text)
    strict_answer = _normalize(strict[-1]) if strict else None
    flexible = [a or b for a, b in _FLEXIBLE.findall(text)]
    flexible = [f for f in flexible if any(ch.isdigit() for ch in f)]
    answer = _normalize(flexible[-1]) if flexible else None
    target = _normalize(item.target)
    return Scored(
        answer=answer,
        score=float(answer == target),
        extra={"strict_answer": strict_answer, "strict_score": float(strict_answer == target)},
    )
