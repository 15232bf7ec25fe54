"""Prompt-position logits inside vLLM, reduced where they are computed: only per-position statistics
ever leave the engine (full-vocabulary rows through vLLM's output path are unusable at 248k vocab).

How: `install_hook` (run on every worker through `collective_rpc`) wraps the model runner's
`_get_prompt_logprobs_dict`, the step in which V1 computes logits of prompt positions. Probe requests
are tagged with `SamplingParams(extra_args={"dh_probe": key})`; for them the wrapper takes the hidden
states of the positions this step prefilled, computes their logits with the model's own
`compute_logits` (chunked, so memory stays bounded), and hands them to `probes.reduce.reduce_rows`
with the job registered for that key (`set_jobs`, also through `collective_rpc`). Rows map to
requests by the runner's own request index, so many probe sequences share a batch.

Under tensor parallelism every rank makes the same `compute_logits` calls (they gather across ranks);
only a rank that holds the gathered logits and is TP rank 0 records results.

Limits: needs the V1 model runner (`VLLM_USE_V2_MODEL_RUNNER=0`, set by `open_probe_engine`) and
prefix caching off (a cached prefix is never recomputed); a sequence whose rows did not all arrive
is an error, not a silent gap.
"""

from __future__ import annotations

import pickle
from pathlib import Path

TAG = "dh_probe"
CHUNK_ROWS = 1024


class _ProbeState:
    def __init__(self):
        self.jobs: dict = {}  # key -> (score_from, job)
        self.results: dict[str, list] = {}  # key -> [(first_row, arrays)]


def install_hook(worker) -> bool:
    """Wrap this worker's prompt-logits step (idempotent). Module-level: picklable for collective_rpc."""
    runner = worker.model_runner
    if getattr(runner, "_dh_probe", None) is not None:
        return True
    state = _ProbeState()
    runner._dh_probe = state
    original = runner._get_prompt_logprobs_dict

    def hooked(hidden_states, num_scheduled_tokens):
        if state.jobs:
            _reduce_probe_rows(runner, state, hidden_states, num_scheduled_tokens)
        return original(hidden_states, num_scheduled_tokens)

    runner._get_prompt_logprobs_dict = hooked
    return True


def _reduce_probe_rows(runner, state: _ProbeState, hidden_states, num_scheduled_tokens: dict[str, int]) -> None:
    import torch

    from probes.reduce import reduce_rows

    reports = _reports_here()
    for req_id, num_tokens in num_scheduled_tokens.items():
        request = runner.requests.get(req_id)
        params = getattr(request, "sampling_params", None)
        extra = getattr(params, "extra_args", None) or {}
        key = extra.get(TAG)
        if key is None or key not in state.jobs or request.prompt_token_ids is None:
            continue
        score_from, job = state.jobs[key]
        prompt = request.prompt_token_ids
        start = request.num_computed_tokens  # first position prefilled in this step
        # Positions start .. start+num_tokens-1 were computed; position p predicts token p+1, and
        # only prompt positions (p <= len-2) from score_from on are probe rows.
        lo = max(start, score_from)
        hi = min(start + num_tokens, len(prompt) - 1)
        if lo >= hi:
            continue
        offset = int(runner.query_start_loc.np[runner.input_batch.req_id_to_index[req_id]])
        for a in range(lo, hi, CHUNK_ROWS):
            b = min(a + CHUNK_ROWS, hi)
            logits = runner.model.compute_logits(hidden_states[offset + a - start : offset + b - start])
            if logits is None or not reports:
                continue  # this rank holds no gathered logits, or another rank reports
            targets = torch.tensor(prompt[a + 1 : b + 1], device=logits.device, dtype=torch.long)
            arrays = reduce_rows(logits, targets, job, a - score_from)
            state.results.setdefault(key, []).append((a - score_from, arrays))


def _reports_here() -> bool:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank() == 0
    except (ImportError, AssertionError, RuntimeError):
        return True


def set_jobs(worker, jobs: bytes) -> None:
    """Register pickled {key: (score_from, job)} for the next requests; clears older jobs and results.

    Jobs and results cross process boundaries pickled to bytes: with several ranks vLLM carries rpc
    arguments to its engine core with msgpack, which turns numpy arrays into memoryviews that its
    broadcast to the workers then cannot pickle.
    """
    state = worker.model_runner._dh_probe
    state.jobs = dict(pickle.loads(jobs))
    state.results = {}


def take_results(worker) -> bytes:
    """This rank's pickled {key: [(first_row, arrays)]} (empty on ranks that do not report)."""
    state = worker.model_runner._dh_probe
    results, state.results, state.jobs = state.results, {}, {}
    return pickle.dumps(results)


class ProbeEngine:
    """A `vllm.LLM` with the hook installed; sequences in, per-row arrays out."""

    def __init__(self, llm, scope):
        self.llm = llm
        self._scope = scope  # vllm_backend.engine_scope: environment and watchdog until close()

    def run(self, sequences: list[list[int]], score_from: list[int], jobs: list, batch: int = 64) -> list[list]:
        """Per sequence, its [(first_row, arrays)] chunks (see probes.reduce.concat)."""
        from vllm import SamplingParams

        out: list[list] = []
        for first in range(0, len(sequences), batch):
            idx = range(first, min(first + batch, len(sequences)))
            keys = {i: f"s{i}" for i in idx}
            self.llm.collective_rpc(set_jobs, args=(pickle.dumps({keys[i]: (score_from[i], jobs[i]) for i in idx}),))
            prompts = [{"prompt_token_ids": list(map(int, sequences[i]))} for i in idx]
            params = [SamplingParams(max_tokens=1, temperature=0.0, extra_args={TAG: keys[i]}) for i in idx]
            self.llm.generate(prompts, params, use_tqdm=False)
            per_rank = [pickle.loads(r) for r in self.llm.collective_rpc(take_results)]
            reporting = [r for r in per_rank if r]
            if len(reporting) > 1:
                raise RuntimeError(f"probe rows reported by {len(reporting)} ranks; exactly one must report")
            results = reporting[0] if reporting else {}
            out.extend(results.get(keys[i], []) for i in idx)
        return out

    def close(self) -> None:
        import gc

        llm, self.llm = self.llm, None
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm, engine, core
        gc.collect()
        # A run's own AsyncLLM may start next in this process (tier 0): leave vLLM's settings as found.
        self._scope.close()


def open_probe_engine(
    checkpoint: Path, *, dtype: str, max_model_len: int, tensor_parallel: int = 1, seed: int = 0, engine_args: dict | None = None
) -> ProbeEngine:
    """The probe's engine; `engine_args` (a run's --engine-arg, already checked) as for generation, so a
    candidate defined by them (quantization=fp8, ...) is the one scored."""
    from engine.backends.vllm_backend import cpu_thread_binding_env, engine_kwargs, engine_scope
    from engine.errors import UserError

    try:
        from vllm import LLM
    except ImportError as exc:
        raise UserError(f"--backend vllm: vLLM is not importable ({exc}); use --backend hf") from exc
    # The hook wraps the V1 model runner's prompt-logits step. One rank: the engine core in this
    # process, the hook a plain call; several: worker processes receive the hook functions pickled
    # (they are module-level, importable). The same scoped environment and watchdog as a run's engine.
    values = {"VLLM_USE_V2_MODEL_RUNNER": "0"} | (
        {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if tensor_parallel == 1 else {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    )
    scope = engine_scope(values)
    try:
        with cpu_thread_binding_env(tensor_parallel):
            kwargs = engine_kwargs(checkpoint, dtype=dtype, seed=seed, max_model_len=max_model_len, tensor_parallel=tensor_parallel)
            llm = LLM(**(kwargs | dict(engine_args or {})))
        ok = llm.collective_rpc(install_hook)
        if not all(ok):
            raise RuntimeError("probe hook not installed on every worker")
    except BaseException:
        scope.close()
        raise
    return ProbeEngine(llm, scope)
