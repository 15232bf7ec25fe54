"""gsm8k: grade-school math, zero-shot chat prompt, scored like lm-eval (strict `#### N`, flexible last number).

Flexible is the score; strict is kept in the record's extra.
"""

from __future__ import annotations

import re
from pathlib import Path

from benches import Item, Scored, check_unique_ids
from engine.errors import UserError

NAME = "gsm8k"
VERSION = "1"
MAX_TOKENS = {False: 512, True: 4096}
HUB_REPO = "openai/gsm8k"
# Pinned dataset commit (the hub file's content is also fingerprinted into the run spec).
HUB_REVISION = "740312add88f781978c0658806c59bc2815b9866"
HUB_FILE = "main/test-00000-of-00001.parquet"

PROMPT = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    '"#### ANSWER" where ANSWER is the final number.\n\n{question}'
)

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def _read_rows(data_dir: Path | None) -> tuple[list[dict], str]:
    if data_dir is not None:
        for name in ("test.jsonl", "test.parquet", "test-00000-of-00001.parquet"):
            path = Path(data_dir) / "gsm8k" / name
            if path.is_file():
                return _read_table(path), str(path)
        raise UserError(f"gsm8k: no gsm8k/test.jsonl or gsm8k/test.parquet under --data-dir {data_dir}")
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset", revision=HUB_REVISION))
    except Exception as exc:
        raise UserError(
            f"gsm8k: cannot get {HUB_REPO}@{HUB_REVISION[:8]} from the hub ({type(exc).__name__}); "
            f"pass --data-dir DIR holding gsm8k/test.jsonl"
        ) from exc
    return _read_table(path), str(path)


def _read_table(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    import orjson

    rows = []
    for lineno, line in enumerate(path.read_bytes().splitlines(), 1):
        if line.strip():
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
    return rows


def load(data_dir: Path | None = None) -> list[Item]:
    rows, source = _read_rows(data_dir)
    items = []
    for index, row in enumerate(rows):
        for field in ("question", "answer"):
            if not isinstance(row.get(field), str):
                raise UserError(f"{source}: row {index} has no string field {field!r} (expected openai/gsm8k fields)")
        target = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
        items.append(Item(id=f"gsm8k-{index:04d}", question=row["question"], target=target))
    return check_unique_ids(items, source)


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT.format(question=item.question)}]


def _normalize(number: str) -> str:
    number = number.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(number)
    except ValueError:
        return number
    return str(int(value)) if value == int(value) else str(value)


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
