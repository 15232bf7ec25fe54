"""aime_2026: AIME 2026 I and II (30 problems, integer answers 0-999), as MathArena runs it.

Thinking by default, MathArena's prompt, the last \\boxed{} of the final answer, math-verify
equivalence, and 4 samples per problem: the item score is maj@4 (`PER_ITEM`), avg@4 is the mean of the
sample scores. See benches/math_answer.py.
"""

from __future__ import annotations

from pathlib import Path

from benches import Item, Scored, data, math_answer

NAME = "aime_2026"
VERSION = "2"  # 2: exact equivalence (12 decimal places), LaTeX spacing normalised
THINK = True  # the bench is meant for reasoning mode
SAMPLES = 4
PER_ITEM = "majority"  # maj@4 over math_answer's vote keys (engine/pairing.py)
SCORING_VERSIONS = {"math_answer": math_answer.VERSION}
MAX_TOKENS = {False: 8192, True: 32768}
HUB = data.HubFile(
    repo="MathArena/aime_2026",
    revision="d2de22f3c656b4f56cf8981212186377d1e23bc3",
    filename="data/train-00000-of-00001.parquet",
)
LOCAL_FILES = ("aime_2026.jsonl", "train.jsonl", "train.parquet", "train-00000-of-00001.parquet")

INSTRUCTION = "Put your final answer within \\boxed{}.\nThe answer is an integer between 0 and 999 inclusive."


def load(data_dir: Path | None = None) -> list[Item]:
    return math_answer.load_matharena(NAME, data_dir, HUB, LOCAL_FILES)


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{INSTRUCTION}\n\n{item.question}"}]


def score(item: Item, text: str) -> Scored:
    return math_answer.score_boxed(item.target, text)

