"""Determinism of whole agent episodes: `python -m engine determinism --benches godmode`.

For an agent bench (one that has `solve`) a prompt's completion is not the unit: an episode is many
replies, each prompt built from the previous replies and the tool outputs. So every question is run as a
whole episode (greedy, the bench's own solver, the real sandbox) under each configuration of
engine/determinism.py, each configuration in a fresh engine, `repeats` times; a trajectory is the token
ids of every model reply of the episode. Per configuration the report counts trajectories identical to
the reference's (bs1, repeat 0) and, for the divergent ones, the first divergent turn and the token
position in that turn's reply. Same output layout as the prompt experiment: <config>/trajectories.jsonl
and report.json (what --json prints).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from engine.determinism import (
    REFERENCE,
    _write_lines,
    config_engine,
    first_divergence,
    fresh_engine,
    setting,
    unavailable_reason,
)
from engine.errors import UserError
from engine.sampling import PRESETS
from engine.solvers import Session, bench_tools
from engine.spec import EngineSpec, VllmEngine, backend_name, normalize_dtype


class Trajectory(msgspec.Struct, kw_only=True):
    question_id: str
    repeat: int
    stop_reason: str
    replies: list[list[int]]  # token ids of each model reply, in turn order
    texts: list[str]  # each reply's text (for reading a divergence)
    seconds: float = 0.0


class Divergence(msgspec.Struct, frozen=True, kw_only=True):
    question_id: str
    repeat: int
    turn: int  # index of the first model reply that differs (0 = the first reply)
    token: int  # first differing token position within that reply
    reason: str  # "tokens" (a reply differs) | "length" (one episode has more replies than the other)


class TrajectoryAgreement(msgspec.Struct, kw_only=True):
    trajectories: int
    identical: int
    divergences: list[Divergence] = []


class ConfigTrajectories(msgspec.Struct, kw_only=True):
    name: str
    setting: str
    available: bool
    reason: str | None = None
    engine: EngineSpec | None = None
    env: dict[str, str] = {}
    across_repeats: TrajectoryAgreement | None = None  # repeat 0 against each later repeat
    vs_reference: TrajectoryAgreement | None = None  # every repeat against the reference's repeat 0
    episodes: int = 0
    seconds: float = 0.0  # wall clock of all its episodes (engine start excluded)


class TrajectoryReport(msgspec.Struct, kw_only=True):
    model: str
    backend: str
    dtype: str
    bench: str
    questions: int
    repeats: int
    max_tokens: int
    max_turns: int
    tool_format: str | None
    seed: int
    configs: list[ConfigTrajectories]
    findings: list[str]
    versions: dict[str, str]
    out_dir: str


# ---------------------------------------------------------------- comparing trajectories


def first_trajectory_divergence(a: list[list[int]], b: list[list[int]]) -> tuple[int, int, str] | None:
    """(turn, token, reason) where two trajectories (token ids per reply) first differ; None if identical.

    Replies are compared in order; when every common reply is identical but one episode went on (it
    could only if a tool output differed, e.g. a timing-dependent command), they part at the first
    extra turn, token 0, reason "length".
    """
    for turn, (x, y) in enumerate(zip(a, b, strict=False)):
        token = first_divergence(x, y)
        if token is not None:
            return turn, token, "tokens"
    if len(a) != len(b):
        return min(len(a), len(b)), 0, "length"
    return None


def compare_trajectories(pairs: list[tuple[Trajectory, Trajectory]]) -> TrajectoryAgreement:
    """How many (reference, other) pairs are identical, and where the others first diverge."""
    divergences = []
    for ref, other in pairs:
        found = first_trajectory_divergence(ref.replies, other.replies)
        if found is not None:
            turn, token, reason = found
            divergences.append(Divergence(question_id=other.question_id, repeat=other.repeat, turn=turn, token=token, reason=reason))
    return TrajectoryAgreement(trajectories=len(pairs), identical=len(pairs) - len(divergences), divergences=divergences)


def across_repeats(trajectories: list[Trajectory]) -> TrajectoryAgreement:
    first = {t.question_id: t for t in trajectories if t.repeat == 0}
    return compare_trajectories([(first[t.question_id], t) for t in trajectories if t.repeat > 0])


def vs_reference(reference: list[Trajectory], trajectories: list[Trajectory]) -> TrajectoryAgreement:
    first = {t.question_id: t for t in reference if t.repeat == 0}
    return compare_trajectories([(first[t.question_id], t) for t in trajectories if t.question_id in first])


def trajectory_findings(configs: list[ConfigTrajectories]) -> list[str]:
    """One line per configuration that changes trajectories (or did not run), then the bit-identical ones."""
    lines, identical = [], []
    for config in configs:
        if not config.available:
            lines.append(f"{config.name}: not run ({config.reason})")
            continue
        broke = False
        for label, agreement in (("repeats differ", config.across_repeats), (f"differ from {REFERENCE}", config.vs_reference)):
            if agreement is None or agreement.identical == agreement.trajectories:
                continue
            broke = True
            earliest = min(agreement.divergences, key=lambda d: (d.turn, d.token))
            cause = " (the model/engine build itself: no serving setting is involved)" if config.name == REFERENCE else ""
            lines.append(
                f"{config.name} ({config.setting}): trajectories that {label}: "
                f"{agreement.trajectories - agreement.identical}/{agreement.trajectories}, earliest at turn "
                f"{earliest.turn} token {earliest.token} ({earliest.question_id}){cause}"
            )
        if not broke:
            identical.append(config.name)
    if identical:
        lines.append(f"bit-identical trajectories (every reply's token ids, 100%): {', '.join(identical)}")
    return lines


# ---------------------------------------------------------------- running episodes


class _RecordingSession(Session):
    """A Session that keeps every reply's token ids (the trajectory) and carries the turn cap."""

    def __init__(self, *args: Any, max_turns: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_turns = max_turns
        self.replies: list[list[int]] = []
        self.texts: list[str] = []

    async def generate(self, messages, **overrides):
        result = await super().generate(messages, **overrides)
        self.replies.append(list(result.token_ids))
        self.texts.append(result.text)
        return result


async def run_episodes(
    backend, module: ModuleType, items: list, *, config: str, repeat: int, max_tokens: int, max_turns: int, seed: int,
    tools: list | None = None, tool_format: str | None = None,
) -> list[Trajectory]:  # fmt: skip
    """Every item as one greedy episode through the bench's solver, all in flight at once (a bs1
    engine queues them); the trajectories in item order."""
    from engine.runner import sample_seed

    async def one(item) -> Trajectory:
        session = _RecordingSession(
            backend, request_id=f"{config}-{item.id}-r{repeat}", sampling=PRESETS["greedy"], think=False,
            max_tokens=max_tokens, seed=sample_seed(seed, module.NAME, item.id, 0), max_turns=max_turns, tools=tools,
            tool_format=tool_format,
        )  # fmt: skip
        started = time.monotonic()
        episode = await module.solve(item, session)
        return Trajectory(
            question_id=item.id, repeat=repeat, stop_reason=episode.stop_reason or "", replies=session.replies,
            texts=session.texts, seconds=round(time.monotonic() - started, 3),
        )  # fmt: skip

    return list(await asyncio.gather(*(one(item) for item in items)))


async def run_config(
    checkpoint: Path, engine: EngineSpec, env: dict[str, str], module: ModuleType, items: list, *,
    name: str, repeats: int, max_tokens: int, max_turns: int, seed: int, kv_cache_gib: float | None,
    tools: list | None, tool_format: str | None = None,
) -> tuple[list[Trajectory], float]:  # fmt: skip
    """Every repeat in one fresh engine: (trajectories, seconds spent in episodes)."""
    async with fresh_engine(checkpoint, engine, env, seed=seed, concurrency=len(items), kv_cache_gib=kv_cache_gib) as backend:
        trajectories: list[Trajectory] = []
        seconds = 0.0
        for repeat in range(repeats):
            t0 = time.monotonic()
            trajectories += await run_episodes(
                backend, module, items, config=name, repeat=repeat, max_tokens=max_tokens, max_turns=max_turns,
                seed=seed, tools=tools, tool_format=tool_format,
            )  # fmt: skip
            seconds += time.monotonic() - t0
            print(f"  repeat {repeat + 1}/{repeats}: {time.monotonic() - t0:.1f}s", file=sys.stderr)
        return trajectories, seconds


async def run_experiment(
    *, checkpoint: Path, model_label: str, module: ModuleType, items: list, config_names: list[str],
    base_engine: EngineSpec, repeats: int, max_tokens: int, max_turns: int, seed: int,
    kv_cache_gib: float | None, out_dir: Path, tools: list | None = None, tool_format: str | None = None,
    tensor_parallel: int = 1,
) -> TrajectoryReport:  # fmt: skip
    from engine.runner import _versions

    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[ConfigTrajectories] = []
    reference: list[Trajectory] | None = None
    for name in config_names:
        (out_dir / name / "trajectories.jsonl").unlink(missing_ok=True)
        engine, env = config_engine(name, base_engine, tensor_parallel)
        result = ConfigTrajectories(name=name, setting=setting(name, tensor_parallel), available=True, engine=engine, env=env)
        reason = "its reference is a one-request-at-a-time pass, which episodes have no equivalent of" if name == "batch-invariant" else None
        reason = unavailable_reason(name, backend_name(base_engine), tensor_parallel) or reason
        if reason is not None:
            result.available, result.reason = False, reason
            print(f"{name}: unavailable ({reason})", file=sys.stderr)
            results.append(result)
            continue
        print(f"{name}: {result.setting}", file=sys.stderr)
        try:
            trajectories, seconds = await run_config(
                checkpoint, engine, env, module, items, name=name, repeats=repeats, max_tokens=max_tokens,
                max_turns=max_turns, seed=seed, kv_cache_gib=kv_cache_gib, tools=tools, tool_format=tool_format,
            )  # fmt: skip
        except Exception as exc:
            if name == REFERENCE or isinstance(exc, UserError):
                raise
            result.available, result.reason = False, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"{name}: {result.reason}", file=sys.stderr)
            results.append(result)
            continue
        (out_dir / name).mkdir(exist_ok=True)
        _write_lines(out_dir / name / "trajectories.jsonl", trajectories)
        result.episodes, result.seconds = len(trajectories), round(seconds, 1)
        result.across_repeats = across_repeats(trajectories) if repeats > 1 else None
        if name == REFERENCE:
            reference = trajectories
        else:
            result.vs_reference = vs_reference(reference or [], trajectories)
        results.append(result)
    report = TrajectoryReport(
        model=model_label, backend=backend_name(base_engine), dtype=base_engine.dtype, bench=module.NAME,
        questions=len(items), repeats=repeats, max_tokens=max_tokens, max_turns=max_turns,
        tool_format=tool_format, seed=seed, configs=results, findings=trajectory_findings(results), versions=_versions(), out_dir=str(out_dir),
    )  # fmt: skip
    (out_dir / "report.json").write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=1))
    return report


# ---------------------------------------------------------------- output and command


def print_report(report: TrajectoryReport, as_json: bool) -> None:
    if as_json:
        print(msgspec.json.format(msgspec.json.encode(report), indent=1).decode())
        return
    print(
        f"trajectory determinism  {report.model}  {report.backend} {report.dtype}  {report.bench}: "
        f"{report.questions} questions x {report.repeats} repeats, greedy, max_tokens {report.max_tokens}/reply, "
        f"max {report.max_turns} turns, tool format {report.tool_format}"
    )
    header = ["config", "same across repeats", "same vs bs1", "first divergence (turn:token, median)", "episodes/min"]
    widths = [16, 21, 13, 38, 12]
    print("".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-" * sum(widths))
    for config in report.configs:
        if not config.available:
            print(f"{config.name:<16}unavailable: {config.reason}")
            continue
        across = config.across_repeats
        ref = config.vs_reference
        divergent = (ref.divergences if ref else []) + (across.divergences if across else [])
        where = "-"
        if divergent:
            turns = statistics.median(d.turn for d in divergent)
            earliest = min(divergent, key=lambda d: (d.turn, d.token))
            where = f"earliest {earliest.turn}:{earliest.token}, median turn {turns:g}"
        rate = f"{config.episodes / config.seconds * 60:.1f}" if config.seconds else ""
        cells = [
            config.name,
            f"{across.identical}/{across.trajectories}" if across else "-",
            f"{ref.identical}/{ref.trajectories}" if ref else "ref",
            where,
            rate,
        ]
        print("".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    for line in report.findings:
        print(f"· {line}")
    print(f"records: {report.out_dir}")


def is_agent_bench(name: str) -> bool:
    import benches

    return hasattr(benches.get_bench(name), "solve")


def command(
    *, model: str, bench_names: list[str], data_dir: Path | None, n: int, repeats: int, config_names: list[str],
    tensor_parallel: int = 1, max_tokens: int, max_turns: int | None, backend: str, dtype: str, seed: int, kv_cache_gib: float | None,
    out_dir: Path | None, as_json: bool,
) -> TrajectoryReport:  # fmt: skip
    import benches
    from engine import models
    from engine.determinism import CONFIGS
    from engine.runner import run_event_loop

    if len(bench_names) != 1:
        raise UserError(f"--benches {','.join(bench_names)}: an agent bench compares whole trajectories; give it alone")
    if backend != "vllm":
        raise UserError(f"--backend {backend}: trajectory determinism runs the in-process vLLM engine only")
    unknown = [c for c in config_names if c not in CONFIGS]
    if unknown:
        raise UserError(f"--configs {','.join(unknown)}: unknown configuration (choose from {', '.join(CONFIGS)})")
    config_names = [REFERENCE] + [c for c in dict.fromkeys(config_names) if c != REFERENCE]
    module = benches.get_bench(bench_names[0])
    turn_cap = getattr(module, "MAX_TURNS", None)
    if max_turns is not None and turn_cap is not None and max_turns > turn_cap:
        raise UserError(f"--max-turns {max_turns}: {module.NAME} allows at most {turn_cap}")
    max_turns = max_turns or turn_cap or 1
    items = module.load(data_dir)[:n]
    if not items:
        raise UserError(f"{module.NAME}: the data holds no items")
    checkpoint = models.resolve_model(model)
    from engine.backends import load_tokenizer

    tools, tool_format = bench_tools(module, load_tokenizer(checkpoint))
    from transformers import AutoConfig

    model_limit = getattr(AutoConfig.from_pretrained(checkpoint), "max_position_embeddings", None) or 8192
    max_model_len = min(model_limit, max(getattr(module, "MIN_CONTEXT", 0), 4 * max_tokens))
    dtype = normalize_dtype(dtype)
    base_engine = VllmEngine(dtype=dtype, chunked_prefill=False, bs1=True, prefix_caching=False, max_model_len=max_model_len)
    label = models.model_label(model)
    out_dir = out_dir or Path("runs") / f"determinism-{module.NAME}-{label}-{dtype}-s{seed}"
    report = run_event_loop(
        run_experiment(
            checkpoint=checkpoint, model_label=label, module=module, items=items, config_names=config_names,
            base_engine=base_engine, repeats=repeats, max_tokens=max_tokens, max_turns=max_turns, seed=seed,
            kv_cache_gib=kv_cache_gib, out_dir=out_dir, tools=tools, tool_format=tool_format,
            tensor_parallel=tensor_parallel,
        )  # fmt: skip
    )
    print_report(report, as_json)
    return report
