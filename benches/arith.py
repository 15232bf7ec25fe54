"""arith: seeded arithmetic questions, generated here, no download.

Four strata: one addition, one subtraction, one multiplication (single digits), and a two-step
expression. Measured on SmolLM2-135M-Instruct at the qwen-nothink operating point they score roughly
45%, 20%, 55% and 7%, so the tiny model lands well inside (0%, 100%) and damage shows as a shift.
(It scores ~20% on the same sums phrased as word problems, which left too little room to fall.)
The pool is fixed (generator seed 0); the tier picks from it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from benches import Item, Scored

NAME = "arith"
VERSION = "1"
MAX_TOKENS = {False: 128, True: 1024}
PER_CATEGORY = 300


def _question(rng: random.Random, category: str) -> tuple[str, int]:
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 5)
    if category == "add":
        return f"What is {a} + {b}?", a + b
    if category == "sub":
        return f"What is {a + b} - {b}?", a
    if category == "mul":
        return f"What is {a} * {b}?", a * b
    if rng.random() < 0.5:
        return f"What is {a} + {b} - {c}?", a + b - c
    return f"What is {a} * {b} + {c}?", a * b + c


def load(data_dir: Path | None = None) -> list[Item]:
    rng = random.Random(0)
    items = []
    # Interleaved, so any prefix of the pool (--limit) is balanced across strata too.
    for index in range(PER_CATEGORY):
        for category in ("add", "sub", "mul", "two-step"):
            question, answer = _question(rng, category)
            items.append(Item(id=f"{category}-{index:03d}", question=question, target=str(answer), category=category))
    return items


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": f"{item.question} Answer with just the number.",
        }
    ]


_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*\$?(-?\d[\d,]*)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*")


def score(item: Item, text: str) -> Scored:
    found = _ANSWER.findall(text) or _NUMBER.findall(text)
    if not found:
        return Scored(answer=None, score=0.0)
    answer = found[-1].replace(",", "")
    return Scored(answer=answer, score=float(answer == item.target))
