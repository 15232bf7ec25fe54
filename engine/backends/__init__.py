"""Backends: one interface over vLLM (AsyncLLM, in-process), transformers and OpenAI-compatible endpoints.

A backend turns chat messages into prompt token ids with the model's own chat template (so both
backends see byte-identical prompts) and generates completions for many concurrent requests, each with
its own sampling values and seed.
"""

from __future__ import annotations

from pathlib import Path

from engine.backends.protocol import (
    Backend,
    BackendError,
    EndpointDown,
    GenRequest,
    GenResult,
    load_tokenizer,
    messages_hash,
    prompt_hash,
    render_chat,
    request_prompt_ids,
    template_renders_tools,
)
from engine.errors import UserError
from engine.spec import EngineSpec, HfEngine, OpenAIEngine, VllmEngine

__all__ = [
    "Backend",
    "BackendError",
    "EndpointDown",
    "GenRequest",
    "GenResult",
    "load_tokenizer",
    "messages_hash",
    "open_backend",
    "prompt_hash",
    "render_chat",
    "request_prompt_ids",
    "template_renders_tools",
]


async def open_backend(
    engine: EngineSpec, *, checkpoint: Path | None, seed: int, concurrency: int, kv_cache_gib: float | None = None
) -> Backend:
    """The backend an engine spec describes, started and ready for requests."""
    if isinstance(engine, VllmEngine):
        from engine.backends.vllm_backend import VllmBackend

        assert checkpoint is not None
        return await VllmBackend.start(checkpoint, engine, seed=seed, concurrency=concurrency, kv_cache_gib=kv_cache_gib)
    if isinstance(engine, HfEngine):
        from engine.backends.hf_backend import HfBackend

        assert checkpoint is not None
        return await HfBackend.start(checkpoint, engine, seed=seed, concurrency=concurrency)
    if isinstance(engine, OpenAIEngine):
        from engine.backends.openai_backend import OpenAIBackend

        return await OpenAIBackend.start(engine, concurrency=concurrency)
    raise UserError(f"unknown engine spec {type(engine).__name__}")
