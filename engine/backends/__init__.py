"""Backends: one interface over vLLM (AsyncLLM, in-process) and transformers.

A backend turns chat messages into prompt token ids with the model's own chat template (so both
backends see byte-identical prompts) and generates completions for many concurrent requests, each with
its own sampling values and seed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import msgspec

from engine.errors import UserError
from engine.records import EngineSpec, SamplingConfig


class GenRequest(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingConfig
    max_tokens: int
    seed: int
    logprobs: bool = False  # also return the log-prob of each sampled token (determinism experiments)


class GenResult(msgspec.Struct, kw_only=True):
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    # Per sampled token: its log-prob under the model's raw (unpenalised, untempered) distribution.
    logprobs: list[float] | None = None


class Backend(Protocol):
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


def render_chat(tokenizer, messages: list[dict[str, str]], think: bool) -> list[int]:
    """Prompt token ids via the model's chat template; `enable_thinking` is passed through."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{tokenizer.name_or_path}: the tokenizer has no chat template; benches need a chat model")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=think)
    # The template already carries any BOS it wants.
    return tokenizer.encode(text, add_special_tokens=False)


def prompt_hash(token_ids: list[int]) -> str:
    return hashlib.sha256(msgspec.json.encode(token_ids)).hexdigest()[:16]


async def open_backend(checkpoint: Path, engine: EngineSpec, *, seed: int, concurrency: int, kv_cache_gib: float | None) -> Backend:
    if engine.backend == "vllm":
        from engine.backends.vllm_backend import VllmBackend

        return await VllmBackend.start(checkpoint, engine, seed=seed, concurrency=concurrency, kv_cache_gib=kv_cache_gib)
    if engine.backend == "hf":
        from engine.backends.hf_backend import HfBackend

        return await HfBackend.start(checkpoint, engine, seed=seed, concurrency=concurrency)
    raise UserError(f"--backend {engine.backend}: unknown backend (choose vllm or hf)")
