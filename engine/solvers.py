"""How a bench turns one item into an episode: the solver seam.

A bench may define `async def solve(item, session) -> Episode`; without one it gets `one_shot`, the
plain chat -> completion path. A solver only talks to the model through `session.generate`, which
applies the run's sampling values, cap and per-request seeds, so a 30-turn tool loop and a one-shot
prompt are graded by the same runner, records and statistics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import msgspec

from engine.backends import Backend, GenRequest, GenResult, messages_hash, prompt_hash
from engine.records import Episode
from engine.spec import SamplingConfig


def turn_seed(seed: int, turn: int) -> int:
    """Seed of a later turn of an episode; turn 0 keeps the request's own seed (one-shot unchanged)."""
    if turn == 0:
        return seed
    digest = hashlib.sha256(f"{seed}|turn|{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Session:
    """The model as one solver sees it: the run's backend, sampling, cap and seed for this episode."""

    def __init__(
        self,
        backend: Backend,
        *,
        request_id: str,
        sampling: SamplingConfig,
        think: bool,
        max_tokens: int,
        seed: int,
        planned_prompt_ids: list[int] | None = None,
        sandbox: Any = None,
        tools: list[dict[str, Any]] | None = None,
        tool_format: str | None = None,
    ):
        self.backend = backend
        self.request_id = request_id
        self.sampling = sampling
        self.think = think
        self.max_tokens = max_tokens
        self.seed = seed
        # The first prompt as the planner rendered it (in-process backends): sent as token ids.
        self.planned_prompt_ids = planned_prompt_ids
        self.sandbox = sandbox  # for tool-using benches
        self.tools = tools  # native tool calls: sent with every request (see bench_tools)
        self.tool_format = tool_format  # how the bench reads the calls: a vLLM parser name, "fenced" or "served"
        self.turn = 0
        self.first_prompt_hash: str | None = None

    async def generate(self, messages: list[dict[str, Any]], **overrides: Any) -> GenResult:
        """One model reply to `messages`. Overrides: max_tokens, seed, prompt_token_ids, logprobs, and
        any sampling field (temperature, top_p, ...)."""
        sampling_fields = {k: overrides.pop(k) for k in list(overrides) if k in SamplingConfig.__struct_fields__}
        sampling = msgspec.structs.replace(self.sampling, **sampling_fields) if sampling_fields else self.sampling
        ids = overrides.pop("prompt_token_ids", None)
        if ids is None and self.turn == 0:
            ids = self.planned_prompt_ids
        request = GenRequest(
            request_id=f"{self.request_id}-t{self.turn}",
            messages=messages,
            think=self.think,
            prompt_token_ids=ids,
            sampling=sampling,
            max_tokens=overrides.pop("max_tokens", self.max_tokens),
            seed=overrides.pop("seed", turn_seed(self.seed, self.turn)),
            logprobs=overrides.pop("logprobs", False),
            tools=self.tools,
        )
        if overrides:
            raise TypeError(f"Session.generate: unknown override(s) {', '.join(sorted(overrides))}")
        if self.first_prompt_hash is None:
            self.first_prompt_hash = prompt_hash(ids) if ids is not None else messages_hash(messages, self.think)
        self.turn += 1
        return await self.backend.generate(request)


def bench_tools(
    module: ModuleType, tokenizer, *, served: bool = False, parser: str | None = None
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(tools to send with every request, tool format) of a bench that declares TOOLS; (None, None) else.

    The tool format is the vLLM tool parser that reads the model's calls, picked from what the model's
    chat template instructs (benches/godmode/toolcalls.py: "hermes" for Qwen3's JSON, "qwen3_coder" for
    Qwen3.5's and Qwen3-Coder's XML); "served" against an endpoint (`served`: its server parses the calls
    with its own --tool-call-parser and the tools go out as `tools=`); "fenced" where the template
    instructs no format we can read: the bench then describes its tool in the prompt and the model replies
    with a fenced block. `parser` (the CLI's --tool-parser: a vLLM parser name or "fenced") overrides the
    choice in-process. The format is part of the bench's contract (BenchSpec.scoring_versions["tool_format"]).
    """
    from benches.godmode import toolcalls

    tools = getattr(module, "TOOLS", None)
    if not tools:
        return None, None
    if served:
        return list(tools), toolcalls.SERVED
    name = toolcalls.check_parser(parser) if parser else None
    if name is None and tokenizer is not None:
        name = toolcalls.parser_for_template(toolcalls.template_text(tokenizer))
    if name is None or name == toolcalls.FENCED:
        return None, toolcalls.FENCED
    return list(tools), name


def bench_messages(module: ModuleType, item: Any, think: bool, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The first turn's messages; a tool-using bench words its prompt for the tool format."""
    if getattr(module, "TOOLS", None):
        return module.messages(item, think, tools=tools)
    return module.messages(item, think)


__all__ = ["Episode", "Session", "Solver", "bench_messages", "bench_tools", "one_shot", "solver_of", "turn_seed"]

Solver = Callable[[Any, Session], Awaitable[Episode]]


def one_shot(module: ModuleType) -> Solver:
    """Today's path: the bench's messages, one reply, scored as it is."""

    async def solve(item: Any, session: Session) -> Episode:
        result = await session.generate(module.messages(item, session.think))
        return Episode(
            text=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            prompt_hash=session.first_prompt_hash or "",
            reasoning_tokens=result.reasoning_tokens,
            replica=result.replica,
        )

    return solve


def solver_of(module: ModuleType) -> Solver:
    return getattr(module, "solve", None) or one_shot(module)
