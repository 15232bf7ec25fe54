"""What every backend takes and gives: requests, results, the errors a runner acts on, chat rendering."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Protocol

import msgspec

from engine.errors import UserError
from engine.spec import SamplingConfig


class GenRequest(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    # The chat to continue. In-process backends render it with the model's chat template unless the
    # planner already did (`prompt_token_ids`); an endpoint sends it as is.
    messages: list[dict[str, Any]] = []
    think: bool = False  # chat template enable_thinking
    prompt_token_ids: list[int] | None = None
    sampling: SamplingConfig
    max_tokens: int
    seed: int
    logprobs: bool = False  # also return the log-prob of each sampled token (determinism experiments)
    # Tools in the OpenAI schema, rendered by the chat template (`tools=`) or sent to the endpoint; None:
    # none (a bench that describes its tool in the prompt itself).
    tools: list[dict[str, Any]] | None = None


class GenResult(msgspec.Struct, kw_only=True):
    # A server that separates reasoning gives it back as f"{reasoning}</think>{content}" (reasoning
    # alone when cut inside it), so the harness splits every backend's output the same way.
    text: str
    token_ids: list[int]  # [] when an endpoint does not return them
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_tokens: int
    completion_tokens: int
    # Per sampled token: its log-prob under the model's raw (unpenalised, untempered) distribution.
    logprobs: list[float] | None = None
    reasoning_tokens: int | None = None  # where the backend counts them itself (endpoint usage)
    replica: int | None = None  # the data-parallel replica that served it (vLLM --dp N > 1)


class BackendError(Exception):
    """One request failed for good (after retries): recorded as an error item, never as a wrong answer."""


class EndpointDown(Exception):
    """The server cannot be reached (after retries): the run stops; records written so far stay."""


class Backend(Protocol):
    """What the runner drives. A backend may also say `queue_ahead: int`: how many requests beyond the
    run's concurrency it wants waiting inside it (vLLM: a full batch in its scheduler's queue, so a
    finished sequence's slot is refilled in the same step rather than after a round trip to the runner)."""

    max_model_len: int

    async def generate(self, request: GenRequest) -> GenResult: ...

    async def close(self) -> None: ...


def load_tokenizer(checkpoint: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except Exception as exc:  # noqa: BLE001 - transformers raises anything from OSError to TypeError here
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UserError(f"--model {checkpoint}: the tokenizer does not load ({type(exc).__name__}: {reason})") from exc


def render_chat(tokenizer, messages: list[dict[str, str]], think: bool, tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Prompt token ids via the model's chat template; `enable_thinking` (and `tools` when given) passed through."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{tokenizer.name_or_path}: the tokenizer has no chat template; benches need a chat model")
    extra = {"tools": tools} if tools else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=think, **extra)
    # The template already carries any BOS it wants.
    return tokenizer.encode(text, add_special_tokens=False)


def prompt_hash(token_ids: list[int]) -> str:
    return hashlib.sha256(msgspec.json.encode(token_ids)).hexdigest()[:16]


def request_prompt_ids(tokenizer, request: GenRequest) -> list[int]:
    """The request's prompt token ids: pre-rendered, or rendered now with the chat template."""
    if request.prompt_token_ids is not None:
        return request.prompt_token_ids
    return render_chat(tokenizer, request.messages, request.think, request.tools)


def template_renders_tools(tokenizer) -> bool:
    """Whether the model's chat template renders a `tools=` list (Qwen's, Llama 3's, ...): it reads the
    `tools` variable. A template without it silently drops the tools, so the bench must describe them."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates: the default one renders chats
        template = template.get("default", "") or next(iter(template.values()), "")
    return re.search(r"\btools\b", template) is not None


def messages_hash(messages: list[dict[str, Any]], think: bool) -> str:
    """Prompt hash where no tokenizer renders the chat (an endpoint renders it on the server)."""
    return hashlib.sha256(msgspec.json.encode([messages, think])).hexdigest()[:16]
