"""ifeval: 541 prompts carrying 834 verifiable instructions of 25 kinds (Zhou et al. 2023, google/IFEval).

The prompt goes to the model as is. Every instruction is checked on the response as is (strict) and on
eight variants of it (loose: as is, `*` removed, first line removed, last line removed, and their
combinations; followed if any variant passes), as the reference `evaluation_lib.py` does; an empty
response follows nothing. The score is prompt-level strict: every instruction of the prompt followed.

The record's extra keeps, in the order of the prompt's instruction list (an id can repeat within a
prompt), whether each instruction was followed strictly and loosely; `summarize` turns records into the
four published metrics (prompt- and instruction-level, strict and loose) and the per-instruction-id
breakdown, the bench's strata. In think mode only the text after `</think>` is checked; a response cut
off inside its reasoning has no such extra and fails every instruction, strict and loose.

Checkers: checkers.py (and its deliberate differences from the reference); splitting and language
detection, offline: text.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson

from benches import Item, Scored, check_unique_ids, data
from benches.ifeval import checkers
from engine.errors import UserError
from engine.records import ItemRecord

NAME = "ifeval"
VERSION = "1"
# lm-eval's ifeval generation cap; think mode leaves room for the reasoning before it.
MAX_TOKENS = {False: 1280, True: 8192}
HUB = data.HubFile(
    repo="google/IFEval",
    revision="966cd89545d6b6acfd7638bc708b98261ca58e84",
    filename="ifeval_input_data.jsonl",
)
# input_data.jsonl is the name in google-research's repository; the hub calls it ifeval_input_data.jsonl.
LOCAL_FILES = ("input_data.jsonl", "ifeval_input_data.jsonl", "train.jsonl", "train.parquet")
FIELDS = {"key": int, "prompt": str, "instruction_id_list": list}


def _kwargs_list(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, str):  # a CSV cell holds the list as JSON
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise UserError(f"{where}: field 'kwargs' is not valid JSON ({exc})") from exc
    if not isinstance(value, list) or not all(isinstance(kwargs, dict) for kwargs in value):
        raise UserError(f"{where}: field 'kwargs' must be a list of objects, one per instruction")
    return value


def load(data_dir: Path | None = None) -> list[Item]:
    rows, source = data.load_rows(NAME, data_dir, HUB, LOCAL_FILES)
    checked = data.check_fields(rows, source, FIELDS)
    items = []
    for number, (row, fields) in enumerate(zip(rows, checked, strict=True), 1):
        where = f"{source}: row {number} (key {fields['key']})"
        instruction_ids = fields["instruction_id_list"]
        if not instruction_ids:
            raise UserError(f"{where}: empty instruction_id_list; every prompt needs at least one instruction")
        kwargs_list = _kwargs_list(row.get("kwargs"), where)
        if len(kwargs_list) != len(instruction_ids):
            raise UserError(
                f"{where}: {len(instruction_ids)} instruction ids but {len(kwargs_list)} kwargs; "
                f"kwargs needs one object per instruction"
            )
        cleaned = []
        for instruction_id, kwargs in zip(instruction_ids, kwargs_list, strict=True):
            # The hub split lists every argument name with null where unused; sorted so that the
            # hub and a local copy of the same rows give the same items (and data fingerprint).
            kwargs = {name: value for name, value in sorted(kwargs.items()) if value is not None}
            problem = checkers.validate_kwargs(instruction_id, kwargs)
            if problem:
                raise UserError(f"{where}: {problem}")
            cleaned.append(kwargs)
        items.append(
            Item(
                id=str(fields["key"]),
                question=fields["prompt"],
                target=", ".join(instruction_ids),
                meta={"instruction_id_list": instruction_ids, "kwargs": cleaned},
            )
        )
    return check_unique_ids(items, source)


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    return [{"role": "user", "content": item.question}]


def loose_variants(response: str) -> list[str]:
    """The reference's eight responses for loose checking, in its order."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        remove_first,
        remove_last,
        remove_both,
        remove_first.replace("*", ""),
        remove_last.replace("*", ""),
        remove_both.replace("*", ""),
    ]


def score(item: Item, text: str) -> Scored:
    instruction_ids: list[str] = item.meta["instruction_id_list"]
    kwargs_list: list[dict[str, Any]] = item.meta["kwargs"]
    variants = loose_variants(text)
    strict, loose = [], []
    for instruction_id, kwargs in zip(instruction_ids, kwargs_list, strict=True):
        followed = checkers.check(instruction_id, text, kwargs)
        strict.append(followed)
        # variants[0] is the response itself: already checked.
        loose.append(followed or any(checkers.check(instruction_id, v, kwargs) for v in variants[1:]))
    n = len(instruction_ids)
    return Scored(
        answer=f"strict {sum(strict)}/{n}, loose {sum(loose)}/{n}",
        score=float(all(strict)),
        extra={
            "instructions": instruction_ids,
            "strict": strict,
            "loose": loose,
            "prompt_strict": all(strict),
            "prompt_loose": all(loose),
        },
    )


def outcomes(record: ItemRecord, item: Item) -> list[tuple[str, bool, bool]]:
    """(instruction id, followed strictly, followed loosely) for each instruction of one response.

    A record without them (cut off inside its reasoning, never scored) failed every instruction.
    """
    instruction_ids: list[str] = item.meta["instruction_id_list"]
    strict = record.extra.get("strict")
    loose = record.extra.get("loose")
    if strict is None or loose is None:
        return [(instruction_id, False, False) for instruction_id in instruction_ids]
    return list(zip(instruction_ids, strict, loose, strict=True))


class InstructionStats(msgspec.Struct, kw_only=True):
    n: int  # instructions of this id checked (over all responses)
    strict: float
    loose: float


class Summary(msgspec.Struct, kw_only=True):
    responses: int
    instructions: int
    prompt_strict: float
    prompt_loose: float
    inst_strict: float
    inst_loose: float
    by_instruction: dict[str, InstructionStats]  # instruction id -> accuracy, sorted by id


def summarize(records: list[ItemRecord], items: list[Item]) -> Summary:
    """The four IFEval metrics and the per-instruction-id breakdown over these records (one per response)."""
    if not records:
        raise UserError("ifeval: no records to summarize")
    by_id = {item.id: item for item in items}
    prompt_strict = prompt_loose = 0
    counts: dict[str, list[int]] = {}  # id -> [n, strict, loose]
    for record in records:
        if record.item_id not in by_id:
            raise UserError(f"ifeval: record for item {record.item_id!r}, which is not in the loaded split")
        results = outcomes(record, by_id[record.item_id])
        prompt_strict += all(s for _, s, _ in results)
        prompt_loose += all(lo for _, _, lo in results)
        for instruction_id, followed_strict, followed_loose in results:
            tally = counts.setdefault(instruction_id, [0, 0, 0])
            tally[0] += 1
            tally[1] += followed_strict
            tally[2] += followed_loose
    n_instructions = sum(t[0] for t in counts.values())
    return Summary(
        responses=len(records),
        instructions=n_instructions,
        prompt_strict=prompt_strict / len(records),
        prompt_loose=prompt_loose / len(records),
        inst_strict=sum(t[1] for t in counts.values()) / n_instructions,
        inst_loose=sum(t[2] for t in counts.values()) / n_instructions,
        by_instruction={
            instruction_id: InstructionStats(n=t[0], strict=t[1] / t[0], loose=t[2] / t[0])
            for instruction_id, t in sorted(counts.items())
        },
    )
