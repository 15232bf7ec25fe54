"""hmmt_feb_2026: HMMT February 2026 (33 problems; LaTeX answers: fractions, radicals, degrees, powers,
a list), as MathArena runs it.

Thinking by default, MathArena's prompt, the last \\boxed{} of the final answer, math-verify
equivalence (a list matches in any order), and 4 samples per problem: the item score is maj@4
(`PER_ITEM`), avg@4 is the mean of the sample scores. See benches/math_answer.py.
"""

from __future__ import annotations

from pathlib import Path

from benches import Item, Scored, data, math_answer

NAME = "hmmt_feb_2026"
VERSION = "2"  # 2: exact equivalence (12 decimal places), LaTeX spacing normalised
THINK = True  # the bench is meant for reasoning mode
SAMPLES = 4
PER_ITEM = "majority"  # maj@4 over math_answer's vote keys (engine/pairing.py)
SCORING_VERSIONS = {"math_answer": math_answer.VERSION}
MAX_TOKENS = {False: 8192, True: 32768}
# The commit other public harnesses pin; not re-checked from here (no network when this was written).
HUB = data.HubFile(
    repo="MathArena/hmmt_feb_2026",
    revision="02fba4f74d8e68e73e66a02d540fd979c05c274c",
    filename="data/train-00000-of-00001.parquet",
)
LOCAL_FILES = ("hmmt_feb_2026.jsonl", "train.jsonl", "train.parquet", "train-00000-of-00001.parquet")

INSTRUCTION = "Put your final answer within \\boxed{}."


def load(data_dir: Path | None = None) -> list[Item]:
    return math_answer.load_matharena(NAME, data_dir, HUB, LOCAL_FILES)


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{INSTRUCTION}\n\n{item.question}"}]


def score(item: Item, text: str) -> Scored:
    return math_answer.score_boxed(item.target, text)

