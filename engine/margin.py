"""Answer margin: how much probability a model puts on the reference answer, teacher-forced after the
bench's own prompt and answer prefix, per item. `python -m engine margin RUN` computes it for a
finished run and stores it beside the records (`margins/<bench>.json`); compare pairs the baseline's
file with the candidate's (the baseline's is computed once and lives with the baseline).

Two forms (FORMS, one line per bench):
  options  log p(correct letter) − log Σ p(other option letters), the next-token distribution after
           the prefix ("The answer is (" for mmlu_pro): one prefill per item, vLLM's
           `logprob_token_ids` returning exactly the option letters' log-probs at that position.
  answer   Σ log p(reference answer tokens) after the prefix ("#### " for gsm8k, "\\boxed{" for the
           MathArena benches, nothing for arith, which asks for just the number): one prefill per
           item with `prompt_logprobs=0` (each prompt token's own log-prob). Not length-normalised:
           the pair differs only in the model, never in the tokens scored, so the sum (the answer's
           log-probability) is the natural per-item quantity; a per-token mean would change units
           between items without removing any bias (docs/margin.md).

The prompt is the chat-templated prompt the bench sends, thinking off, rendered with the run's own
tokenizer; for in-process runs it is checked against the prompt hash in the run's records. Both
paths (in-process vLLM, an OpenAI-compatible vLLM server) send the same token ids and read raw
log-probs (vLLM's default `logprobs_mode`), so they agree to float rounding.

The contract of a margin file (MarginFile.contract: margin version, bench version, form, prefix,
answer format, dtype) must match between baseline and candidate, or the pair is NOT COMPARABLE. It is
kept in the margin files rather than the run spec, so runs made before margins existed (the committed
baselines) stay comparable for everything else and get margins computed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import msgspec

from engine.errors import ExitCode, NotComparable, UserError

MARGIN_VERSION = "1"
MARGINS_DIR = "margins"
ANSWER_TEMPLATE = "chat template, thinking off"


class AnswerForm(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["options", "answer"]
    prefix: str  # what the assistant reply holds before the answer (the bench's own answer format)
    answer_format: str  # the answer text after the prefix; "{}" is the reference (letter or number)


FORMS: dict[str, AnswerForm] = {
    "mmlu_pro": AnswerForm(kind="options", prefix="The answer is (", answer_format="{}"),
    "gpqa": AnswerForm(kind="options", prefix="Answer:", answer_format=" {}"),
    "tradequiz": AnswerForm(kind="options", prefix="Answer:", answer_format=" {}"),
    "arith": AnswerForm(kind="answer", prefix="", answer_format="{}"),
    "gsm8k": AnswerForm(kind="answer", prefix="####", answer_format=" {}"),
    "aime_2026": AnswerForm(kind="answer", prefix="\\boxed{", answer_format="{}"),
    "hmmt_feb_2026": AnswerForm(kind="answer", prefix="\\boxed{", answer_format="{}"),
}


class MarginItem(msgspec.Struct, kw_only=True):
    item_id: str
    margin: float  # nats
    tokens: int  # answer tokens scored (options: 1)


class MarginFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: str
    bench: str
    bench_version: str
    kind: str
    prefix: str
    answer_format: str
    prompt: str  # how the prompt was rendered
    dtype: str
    model_fingerprint: str
    backend: str  # "vllm" | "openai <base_url>"
    seconds: float  # wall time of the pass (prefills only), for its cost against generation
    items: list[MarginItem]
    checksum: str = ""  # sha256 (16 hex) of the file's other fields in canonical JSON

    def contract(self) -> dict[str, str]:
        return {
            "margin version": self.version, "bench version": self.bench_version, "form": self.kind,
            "answer prefix": self.prefix, "answer format": self.answer_format, "prompt": self.prompt, "dtype": self.dtype,
        }  # fmt: skip


_canonical = msgspec.json.Encoder(order="sorted")


def _checksum(margins: MarginFile) -> str:
    body = msgspec.structs.replace(margins, checksum="")
    return hashlib.sha256(_canonical.encode(body)).hexdigest()[:16]


def margins_path(run_dir: Path, bench: str) -> Path:
    return Path(run_dir) / MARGINS_DIR / f"{bench}.json"


def write_margins(run_dir: Path, margins: MarginFile) -> Path:
    from engine.records import atomic_write

    # Sealed as it reads back: a float's JSON round trip is exact in msgspec, so the checksum holds.
    margins = msgspec.json.decode(msgspec.json.encode(margins), type=MarginFile)
    margins = msgspec.structs.replace(margins, checksum=_checksum(margins))
    path = margins_path(run_dir, margins.bench)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, msgspec.json.format(msgspec.json.encode(margins), indent=1))
    return path


def read_margins(run_dir: Path, bench: str) -> MarginFile | None:
    path = margins_path(run_dir, bench)
    if not path.is_file():
        return None
    try:
        margins = msgspec.json.decode(path.read_bytes(), type=MarginFile)
    except msgspec.DecodeError as exc:
        raise UserError(f"{path}: not a margin file ({exc}); recompute it with `python -m engine margin {run_dir}`") from None
    if margins.checksum != _checksum(margins):
        raise UserError(f"{path}: content does not match its checksum {margins.checksum}; the file was edited or damaged")
    return margins


def paired_margins(base_dir: Path, cand_dir: Path) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per bench with margins in both runs: {item_id: margin} of each side. A contract mismatch is
    NOT COMPARABLE (no number is printed for a pair scored differently)."""
    base: dict[str, dict[str, float]] = {}
    cand: dict[str, dict[str, float]] = {}
    for path in sorted((Path(cand_dir) / MARGINS_DIR).glob("*.json")):
        b, c = read_margins(base_dir, path.stem), read_margins(cand_dir, path.stem)
        if b is None or c is None:
            continue
        bc, cc = b.contract(), c.contract()
        diffs = [f"{k}: baseline {bc[k]!r}, candidate {cc[k]!r}" for k in bc if bc[k] != cc[k]]
        if diffs:
            raise NotComparable(f"⚠ NOT COMPARABLE: answer margin of {path.stem}: " + "; ".join(diffs))
        base[path.stem] = {i.item_id: i.margin for i in b.items}
        cand[path.stem] = {i.item_id: i.margin for i in c.items}
    return base, cand


# ---- what is scored -------------------------------------------------------------------------------


class Query(msgspec.Struct, kw_only=True):
    item_id: str
    context: list[int]  # chat-templated prompt + answer prefix
    answer: list[int]  # "answer": the reference's tokens, scored after the context
    options: list[int]  # "options": one token per option letter, scored at the context's next position
    correct: int = -1  # "options": index of the reference letter


def _split(tokenizer, prefix: str, text: str) -> tuple[list[int], list[int]]:
    """(prefix tokens, answer tokens) of prefix + text as the tokenizer writes them together: the
    joint encoding's longest common head with the prefix alone is the context (a merge across the
    boundary moves into the answer instead of changing the tokens the model sees)."""
    full = tokenizer.encode(prefix + text, add_special_tokens=False)
    alone = tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
    k = 0
    while k < min(len(full), len(alone)) and full[k] == alone[k]:
        k += 1
    return full[:k], full[k:]


def option_letters(bench: str, item) -> str:
    count = 4 if bench == "gpqa" else len(item.meta["options"])
    return "ABCDEFGHIJ"[:count]


def build_queries(bench: str, module, items: list, tokenizer) -> tuple[list[Query], list[str]]:
    """Queries for `items`, and the prompt hash of each (to check against the run's records)."""
    from engine.backends.protocol import prompt_hash, render_chat

    form = FORMS[bench]
    queries, hashes = [], []
    for item in items:
        prompt = render_chat(tokenizer, module.messages(item, False), False)
        hashes.append(prompt_hash(prompt))
        if form.kind == "answer":
            head, answer = _split(tokenizer, form.prefix, form.answer_format.format(item.target))
            if not answer:
                raise UserError(f"{bench} item {item.id}: the reference answer {item.target!r} has no tokens")
            queries.append(Query(item_id=item.id, context=prompt + head, answer=answer, options=[]))
            continue
        letters = option_letters(bench, item)
        heads, ids = set(), []
        for letter in letters:
            head, tail = _split(tokenizer, form.prefix, form.answer_format.format(letter))
            if len(tail) != 1:
                raise UserError(f"{bench}: option {letter!r} after {form.prefix!r} is {len(tail)} tokens; the margin needs one")
            heads.add(tuple(head))
            ids.append(tail[0])
        if len(heads) != 1 or len(set(ids)) != len(ids):
            raise UserError(f"{bench}: the option letters do not tokenize as distinct single tokens after {form.prefix!r}")
        if item.target not in letters:
            raise UserError(f"{bench} item {item.id}: reference {item.target!r} is not one of the options {letters}")
        queries.append(
            Query(item_id=item.id, context=prompt + list(heads.pop()), answer=[], options=ids, correct=letters.index(item.target))
        )
    return queries, hashes


def option_margin(logprobs: list[float], correct: int) -> float:
    """log p(correct) − log Σ_{others} p: log-odds of the correct option against the rest of the options."""
    others = [lp for i, lp in enumerate(logprobs) if i != correct]
    top = max(others)
    rest = top + math.log(sum(math.exp(lp - top) for lp in others))
    return float(logprobs[correct] - rest)


# ---- in-process vLLM ------------------------------------------------------------------------------


def _sampling(query: Query):
    from vllm import SamplingParams

    if query.options:
        return SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(query.options), logprob_token_ids=query.options)
    return SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)


def score_vllm(llm, queries: list[Query], batch: int = 256) -> list[MarginItem]:
    out = []
    for first in range(0, len(queries), batch):
        chunk = queries[first : first + batch]
        prompts = [{"prompt_token_ids": q.context + q.answer} for q in chunk]
        results = llm.generate(prompts, [_sampling(q) for q in chunk], use_tqdm=False)
        for q, r in zip(chunk, results, strict=True):
            if q.options:
                row = r.outputs[0].logprobs[0]
                out.append(MarginItem(item_id=q.item_id, margin=option_margin([row[t].logprob for t in q.options], q.correct), tokens=1))
            else:
                rows = r.prompt_logprobs[len(q.context) :]
                total = sum(row[t].logprob for row, t in zip(rows, q.answer, strict=True))
                out.append(MarginItem(item_id=q.item_id, margin=float(total), tokens=len(q.answer)))
    return out


@contextlib.contextmanager
def in_process_llm(checkpoint: Path, *, dtype: str, max_model_len: int, seed: int = 0) -> Iterator:
    """A `vllm.LLM` with its engine core in this process (prefix caching off, as every engine here),
    shut down on exit; vLLM's environment restored as found."""
    from engine.backends.vllm_backend import cpu_thread_binding_env, engine_kwargs, engine_scope

    try:
        from vllm import LLM
    except ImportError as exc:
        raise UserError(f"margin: vLLM is not importable ({exc})") from exc
    # The one scoped environment (and watchdog) of every engine the harness starts; restored on exit.
    values = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_STREAM": os.environ.get("VLLM_LOGGING_STREAM", "ext://sys.stderr")}
    with engine_scope(values):
        with cpu_thread_binding_env(1):
            llm = LLM(**engine_kwargs(checkpoint, dtype=dtype, seed=seed, max_model_len=max_model_len))
        try:
            yield llm
        finally:
            import gc

            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm, core
            gc.collect()


# ---- an OpenAI-compatible (vLLM) server -----------------------------------------------------------


def endpoint_body(served_model: str, query: Query) -> dict:
    body = {
        "model": served_model, "prompt": query.context + query.answer, "max_tokens": 1, "temperature": 0.0, "n": 1,
        "stream": False, "add_special_tokens": False,  # the ids already carry the template's BOS
    }  # fmt: skip
    if query.options:
        # vLLM: log-probs of exactly these ids at the generated position, keyed "token_id:N".
        return body | {"logprobs": len(query.options), "logprob_token_ids": query.options, "return_tokens_as_token_ids": True}
    return body | {"prompt_logprobs": 0}


def parse_endpoint(query: Query, data) -> MarginItem:
    from engine.backends.openai_backend import BackendError

    choice = (data.get("choices") or [{}])[0] if isinstance(data, dict) else {}
    if query.options:
        try:
            listed = choice["logprobs"]["top_logprobs"][0]
            lps = [float(listed[f"token_id:{t}"]) for t in query.options]
        except (KeyError, TypeError, IndexError):
            raise BackendError(
                f"item {query.item_id}: the server did not return log-probs of the option tokens (vLLM's `logprob_token_ids`)"
            ) from None
        return MarginItem(item_id=query.item_id, margin=option_margin(lps, query.correct), tokens=1)
    rows = choice.get("prompt_logprobs") if isinstance(choice, dict) else None
    if rows is None and isinstance(data, dict):
        rows = data.get("prompt_logprobs")
    if not isinstance(rows, list) or len(rows) != len(query.context) + len(query.answer):
        raise BackendError(f"item {query.item_id}: the server returned no (or too few) prompt log-probs (vLLM's `prompt_logprobs`)")
    total = 0.0
    for row, token in zip(rows[len(query.context) :], query.answer, strict=True):
        entry = row.get(str(token)) if isinstance(row, dict) else None
        if not isinstance(entry, dict) or "logprob" not in entry:
            raise BackendError(f"item {query.item_id}: no log-prob listed for prompt token {token}")
        total += float(entry["logprob"])
    return MarginItem(item_id=query.item_id, margin=total, tokens=len(query.answer))


async def score_endpoint(
    base_url: str, queries: list[Query], *, served_model: str | None = None, api_key_env: str | None = None, concurrency: int = 16
) -> tuple[list[MarginItem], str]:
    from engine.backends.openai_backend import Transport, describe_server

    transport = Transport(base_url, api_key_env=api_key_env, timeout_s=600.0, max_retries=3, concurrency=concurrency)
    try:
        info = await describe_server(base_url, api_key_env, served_model, transport=transport)
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(query: Query) -> MarginItem:
            async with gate:
                return parse_endpoint(query, await transport.request("POST", "/v1/completions", endpoint_body(info.served_model, query)))

        return list(await asyncio.gather(*(one(q) for q in queries))), info.base_url
    finally:
        await transport.close()


# ---- a run's margins ------------------------------------------------------------------------------


def run_items(run, bench: str, data_dir: Path | None) -> list:
    """The run's items of `bench` (in its order), loaded again and checked against its data fingerprint."""
    import benches

    spec = next(b for b in run.spec.benches if b.name == bench)
    module = benches.get_bench(bench)
    loaded = module.load(data_dir)
    if benches.data_fingerprint(loaded) != spec.data_fingerprint:
        raise UserError(f"{run.dir}: {bench}'s data here differs from the run's (pass the run's --data-dir)")
    by_id = {item.id: item for item in loaded}
    ids = list(dict.fromkeys(r.item_id for r in run.records.get(bench, [])))
    return [by_id[i] for i in ids]


def compute(
    run_dir: Path,
    *,
    model: str | None = None,
    data_dir: Path | None = None,
    bench_names: list[str] | None = None,
    dtype: str | None = None,
    base_url: str | None = None,
    served_model: str | None = None,
    api_key_env: str | None = None,
    llm=None,
) -> list[MarginFile]:
    """Margins of every bench of the run that has an answer form (or of `bench_names`), written to
    RUN/margins/. In-process unless `base_url` (or the run itself was served): `llm` reuses an engine."""
    import benches
    from engine.backends.protocol import load_tokenizer
    from engine.models import SMOLLM2_NAME, checkpoint_fingerprint, resolve_model
    from engine.records import read_run
    from engine.spec import OpenAIEngine, normalize_dtype

    run = read_run(run_dir)
    engine = run.spec.engine
    if base_url is None and isinstance(engine, OpenAIEngine):
        base_url, served_model = engine.base_url, served_model or engine.served_model
    names = [b.name for b in run.spec.benches if b.name in FORMS] if bench_names is None else bench_names
    for name in names:
        if name not in FORMS:
            raise UserError(f"--benches {name}: no fixed-form reference answer (margins exist for {', '.join(FORMS)})")
        if name not in run.records:
            raise UserError(f"--benches {name}: not a bench of {run_dir}")
    if model is None and not Path(run.spec.model).is_dir() and run.spec.model != SMOLLM2_NAME:
        raise UserError(f"{run_dir}: its model is labelled {run.spec.model!r}; pass --model CHECKPOINT (its tokenizer renders the prompts)")
    checkpoint = resolve_model(model or run.spec.model)
    fingerprint = checkpoint_fingerprint(checkpoint)
    if fingerprint != run.spec.model_fingerprint and base_url is None:
        raise UserError(f"--model {checkpoint}: fingerprint {fingerprint}, the run's model is {run.spec.model_fingerprint}")
    dtype = normalize_dtype(dtype or getattr(engine, "dtype", "auto"))
    tokenizer = load_tokenizer(checkpoint)
    work = []
    for name in names:
        module = benches.get_bench(name)
        items = run_items(run, name, data_dir)
        queries, hashes = build_queries(name, module, items, tokenizer)
        if base_url is None:
            sent = {r.item_id: r.prompt_hash for r in run.records[name] if r.prompt_hash}
            wrong = [q.item_id for q, h in zip(queries, hashes, strict=True) if sent.get(q.item_id, h) != h]
            if wrong:
                raise UserError(f"{run_dir}: {name} prompts rendered here differ from the ones the run sent (items {', '.join(wrong[:3])})")
        work.append((name, module, queries))
    longest = max((len(q.context) + len(q.answer) for _, _, qs in work for q in qs), default=16)
    with contextlib.ExitStack() as stack:
        if llm is None and base_url is None:
            max_len = max(getattr(engine, "max_model_len", 0) or 0, longest + 8)
            llm = stack.enter_context(in_process_llm(checkpoint, dtype=dtype, max_model_len=max_len))
        out = []
        for name, module, queries in work:
            started = time.perf_counter()
            if base_url is None:
                items, backend = score_vllm(llm, queries), "vllm"
            else:
                items, root = asyncio.run(score_endpoint(base_url, queries, served_model=served_model, api_key_env=api_key_env))
                backend = f"openai {root}"
            form = FORMS[name]
            margins = MarginFile(
                version=MARGIN_VERSION, bench=name, bench_version=module.VERSION, kind=form.kind, prefix=form.prefix,
                answer_format=form.answer_format, prompt=ANSWER_TEMPLATE, dtype=dtype, model_fingerprint=fingerprint,
                backend=backend, seconds=round(time.perf_counter() - started, 3), items=items,
            )  # fmt: skip
            write_margins(run_dir, margins)
            out.append(read_margins(run_dir, name))
    return out


def format_margins(margins: MarginFile) -> str:
    values = [i.margin for i in margins.items]
    mean = sum(values) / len(values) if values else float("nan")
    return (
        f"{margins.bench}: {len(values)} items, answer margin ({margins.kind}, after {margins.prefix!r}) mean {mean:+.3f} nats, "
        f"{margins.seconds:.1f}s ({margins.backend}, {margins.dtype})"
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine margin",
        description="Answer margin of a finished run, per item (teacher-forced log-prob of the reference answer after the "
        "bench's answer prefix), stored in RUN/margins/<bench>.json. Compute it once for a baseline; each candidate "
        "computes only its own.",
    )
    p.add_argument("run", type=Path, help="the run directory")
    p.add_argument("--model", default=None, help="its checkpoint (default: the run's model, checked by fingerprint)")
    p.add_argument("--data-dir", type=Path, default=None, help="the data the run ran on")
    p.add_argument("--benches", default=None, help="comma-separated (default: every bench of the run with an answer form)")
    p.add_argument("--dtype", default=None, help="engine dtype (default: the run's)")
    p.add_argument("--base-url", default=None, help="score through this OpenAI-compatible vLLM server (default: in-process)")
    p.add_argument("--served-model", default=None, help="--base-url: model id on the server (default: the one it serves)")
    p.add_argument("--api-key-env", default=None, help="--base-url: environment variable holding the API key")
    args = p.parse_args(argv)
    names = [b.strip() for b in args.benches.split(",") if b.strip()] if args.benches else None
    results = compute(
        args.run, model=args.model, data_dir=args.data_dir, bench_names=names, dtype=args.dtype,
        base_url=args.base_url, served_model=args.served_model, api_key_env=args.api_key_env,
    )  # fmt: skip
    if not results:
        print(f"{args.run}: no bench with a fixed-form reference answer", file=sys.stderr)
    for margins in results:
        print(format_margins(margins))
    return int(ExitCode.PASS)
