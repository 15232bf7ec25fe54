"""Probe text: fixed (prompt, response) token sequences, chat-formatted; only response tokens are scored.

Sources, interleaved round-robin until the tier's token budget of scored tokens is spent:
  - the baseline run's own completions, per bench (its operating point: the text the model writes);
  - reference solutions where a bench has them: gsm8k worked answers, humaneval canonical solutions
    (read from --data-dir when the files are there);
  - the user's own files: .jsonl lines {"prompt": ..., "response": ...} (chat-formatted), or any
    other file as plain text scored from its second token on (no template).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

import benches
from engine.backends import render_chat
from engine.errors import UserError
from engine.records import read_run

# Scored tokens per tier. Smoke is a few minutes of prefill even for the largest models.
TOKEN_BUDGET = {"smoke": 8192, "standard": 65536, "full": 262144}
MAX_SEQUENCE_TOKENS = 2048


class ProbeSequence(msgspec.Struct, kw_only=True):
    source: str
    id: str
    prompt_ids: list[int]
    response_ids: list[int]


def _chat_sequence(tokenizer, source: str, seq_id: str, messages: list[dict[str, str]], response: str, think: bool) -> ProbeSequence:
    prompt = render_chat(tokenizer, messages, think)
    return ProbeSequence(source=source, id=seq_id, prompt_ids=prompt, response_ids=tokenizer.encode(response, add_special_tokens=False))


def from_run(tokenizer, run_dir: Path, data_dir: Path | None) -> dict[str, Iterator[ProbeSequence]]:
    """The run's completions (sample 0), per bench, in the run's item order."""
    run = read_run(run_dir)

    def completions(bench: str) -> Iterator[ProbeSequence]:
        module = benches.get_bench(bench)
        items = {item.id: item for item in module.load(data_dir)}
        for rec in run.records[bench]:
            if rec.sample == 0 and rec.item_id in items and rec.completion.strip():
                messages = module.messages(items[rec.item_id], run.spec.think)
                yield _chat_sequence(tokenizer, bench, rec.item_id, messages, rec.completion, run.spec.think)

    return {b.name: completions(b.name) for b in run.spec.benches}


def gsm8k_solutions(tokenizer, data_dir: Path | None, think: bool) -> Iterator[ProbeSequence]:
    """Worked answers of the gsm8k test split, calculator annotations <<...>> removed."""
    from benches import gsm8k

    rows, _ = benches.data.load_rows(gsm8k.NAME, data_dir, gsm8k.HUB, gsm8k.LOCAL_FILES)
    for index, row in enumerate(rows):
        item = benches.Item(id=f"gsm8k-{index:04d}", question=row["question"], target="")
        answer = re.sub(r"<<[^>]*>>", "", row["answer"])
        yield _chat_sequence(tokenizer, "gsm8k-reference", item.id, gsm8k.messages(item, think), answer, think)


def humaneval_solutions(tokenizer, data_dir: Path, think: bool) -> Iterator[ProbeSequence]:
    path = data_dir / "humaneval" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            messages = [{"role": "user", "content": f"Complete the following Python function.\n\n```python\n{row['prompt']}```"}]
            response = f"```python\n{row['prompt']}{row['canonical_solution']}```"
            yield _chat_sequence(tokenizer, "humaneval-reference", row["task_id"], messages, response, think)


def from_text_file(tokenizer, path: Path, think: bool) -> list[ProbeSequence]:
    if not path.is_file():
        raise UserError(f"--text {path}: no such file")
    source = f"text:{path.name}"
    if path.suffix == ".jsonl":
        seqs = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, response = row["prompt"], row["response"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserError(f"{path}:{lineno}: expected a JSON object with string fields prompt and response ({exc})") from exc
            seqs.append(_chat_sequence(tokenizer, source, f"{path.name}:{lineno}", [{"role": "user", "content": prompt}], response, think))
        return seqs
    ids = tokenizer.encode(path.read_text(encoding="utf-8"), add_special_tokens=True)
    if len(ids) < 2:
        raise UserError(f"--text {path}: fewer than two tokens of text")
    # Plain text: long files become consecutive windows, each scored from its second token.
    step = MAX_SEQUENCE_TOKENS
    return [ProbeSequence(source=source, id=f"{path.name}@{start}", prompt_ids=ids[start : start + 1], response_ids=ids[start + 1 : start + step])
            for start in range(0, len(ids) - 1, step)]  # fmt: skip


def interleave(sources: dict[str, Iterable[ProbeSequence]], budget: int, max_len: int = MAX_SEQUENCE_TOKENS) -> list[ProbeSequence]:
    """Stratified by source: the next sequence always comes from the source with the fewest scored
    tokens so far (ties: listing order), each cut to max_len tokens, until `budget` tokens are taken.
    Sources are read lazily, so a large split costs only what is taken from it."""
    queues = {name: iter(seqs) for name, seqs in sources.items()}
    taken_by = dict.fromkeys(queues, 0)
    chosen: list[ProbeSequence] = []
    while queues and sum(taken_by.values()) < budget:
        name = min(queues, key=lambda n: taken_by[n])
        seq = next(queues[name], None)
        if seq is None:
            del queues[name]
            continue
        room = min(max_len - len(seq.prompt_ids), budget - sum(taken_by.values()))
        response = seq.response_ids[: max(room, 0)]
        if len(response) < 2:
            continue  # too long a prompt, or an empty response
        chosen.append(msgspec.structs.replace(seq, response_ids=response))
        taken_by[name] += len(response)
    return chosen


def build_corpus(
    tokenizer,
    *,
    run_dir: Path | None,
    data_dir: Path | None,
    text_files: list[Path],
    tier: str,
    think: bool,
    budget: int | None = None,
    max_len: int = MAX_SEQUENCE_TOKENS,
) -> list[ProbeSequence]:
    if tier not in TOKEN_BUDGET:
        raise UserError(f"--tier {tier}: unknown tier ({', '.join(TOKEN_BUDGET)})")
    sources: dict[str, Iterable[ProbeSequence]] = {}
    if run_dir is not None:
        sources.update(from_run(tokenizer, run_dir, data_dir))
    if data_dir is not None:
        if any((data_dir / "gsm8k" / name).is_file() for name in benches.get_bench("gsm8k").LOCAL_FILES):
            sources["gsm8k-reference"] = gsm8k_solutions(tokenizer, data_dir, think)
        if (data_dir / "humaneval" / "HumanEval.jsonl.gz").is_file():
            sources["humaneval-reference"] = humaneval_solutions(tokenizer, data_dir, think)
    for path in text_files:
        sources[f"text:{path.name}"] = from_text_file(tokenizer, path, think)
    chosen = interleave(sources, budget or TOKEN_BUDGET[tier], max_len)
    if not chosen:
        raise UserError(
            "probe: no probe text; give --from-run RUN_DIR (a baseline run with completions), --data-dir DIR "
            f"with gsm8k/humaneval, or --text FILE (prompts must leave room under {max_len} tokens)"
        )
    return chosen
