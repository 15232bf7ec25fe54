"""transformers in-process: small models and machines without vLLM.

Requests are micro-batched (left padding, one KV cache per batch) and decoded by our own loop so that
every row keeps its own seed and sampling values, in vLLM's order: penalties, temperature, min_p,
top_k, top_p. Per-row seeded generators make a request's samples independent of its batch mates'
random draws (numerics of a batched forward may still differ slightly from a lone one).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from engine.backends.protocol import GenRequest, GenResult, request_prompt_ids
from engine.spec import HfEngine, SamplingConfig

_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "float32": "float32", "fp32": "float32", "auto": "auto"}


def _sample_row(logits, sampling: SamplingConfig, seen_output, seen_all, generator):
    """One next token id from a float32 logits row."""
    import torch

    if sampling.presence_penalty:
        logits = logits - sampling.presence_penalty * seen_output
    if sampling.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / sampling.repetition_penalty, logits * sampling.repetition_penalty)
        logits = torch.where(seen_all > 0, penalised, logits)
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / sampling.temperature
    probs = torch.softmax(logits, dim=-1)
    if sampling.min_p > 0:
        probs = torch.where(probs < sampling.min_p * probs.max(), torch.zeros_like(probs), probs)
    if sampling.top_k > 0:
        kth = torch.topk(probs, min(sampling.top_k, probs.numel())).values[-1]
        probs = torch.where(probs < kth, torch.zeros_like(probs), probs)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1) / sorted_probs.sum()
        # Keep the smallest prefix whose mass reaches top_p (the token crossing it stays).
        drop_sorted = (cumulative - sorted_probs / sorted_probs.sum()) >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        probs = torch.where(drop, torch.zeros_like(probs), probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


class HfBackend:
    def __init__(self, model, tokenizer, device, max_model_len: int, max_batch: int):
        self._model = model
        self._tokenizer = tokenizer
        self._device = device
        self.max_model_len = max_model_len
        self._max_batch = max_batch
        self._queue: asyncio.Queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._serve())
        eos = model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) if eos is not None else {tokenizer.eos_token_id}
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self._eos))

    @classmethod
    async def start(cls, checkpoint: Path, spec: HfEngine, *, seed: int, concurrency: int) -> HfBackend:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = _DTYPES.get(spec.dtype, spec.dtype)
        model = await asyncio.to_thread(
            AutoModelForCausalLM.from_pretrained, checkpoint, dtype=getattr(torch, dtype) if dtype != "auto" else "auto"
        )
        model.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        torch.manual_seed(seed)
        return cls(model, tokenizer, device, spec.max_model_len, 1 if spec.bs1 else max(1, min(concurrency, 16)))

    async def generate(self, request: GenRequest) -> GenResult:
        if request.prompt_token_ids is None:
            request = msgspec.structs.replace(request, prompt_token_ids=request_prompt_ids(self._tokenizer, request))
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((request, future))
        return await future

    async def _serve(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await asyncio.to_thread(self._generate_batch, [req for req, _ in batch])
            except Exception as exc:  # hand the failure to every waiting caller
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _generate_batch(self, requests: list[GenRequest]) -> list[GenResult]:
        import torch
        from transformers import DynamicCache

        n = len(requests)
        width = max(len(r.prompt_token_ids) for r in requests)
        input_ids = torch.full((n, width), self._pad, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(requests):
            input_ids[i, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
            attention[i, width - len(r.prompt_token_ids) :] = 1
        budgets = [min(r.max_tokens, self.max_model_len - len(r.prompt_token_ids)) for r in requests]
        generators = [torch.Generator().manual_seed(r.seed) for r in requests]
        vocab = self._model.config.vocab_size
        seen_output = torch.zeros((n, vocab))
        seen_all = torch.zeros((n, vocab))
        for i, r in enumerate(requests):
            seen_all[i, torch.tensor(r.prompt_token_ids)] = 1
        outputs: list[list[int]] = [[] for _ in requests]
        token_logprobs: list[list[float]] = [[] for _ in requests]
        finish: list[str | None] = [None if b > 0 else "length" for b in budgets]
        cache = DynamicCache()
        step_ids = input_ids.to(self._device)
        mask = attention.to(self._device)
        with torch.inference_mode():
            while any(f is None for f in finish):
                positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
                out = self._model(
                    input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
                )
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float().cpu()[:, :vocab]
                next_ids = []
                for i, r in enumerate(requests):
                    if finish[i] is not None:
                        next_ids.append(self._pad)
                        continue
                    token = _sample_row(logits[i], r.sampling, seen_output[i], seen_all[i], generators[i])
                    if r.logprobs:
                        # Raw distribution, before penalties and temperature: what vLLM's default reports.
                        token_logprobs[i].append(float(torch.log_softmax(logits[i], dim=-1)[token]))
                    outputs[i].append(token)
                    seen_output[i, token] = 1
                    seen_all[i, token] = 1
                    if token in self._eos:
                        finish[i] = "stop"
                    elif len(outputs[i]) >= budgets[i]:
                        finish[i] = "length"
                    next_ids.append(token)
                step_ids = torch.tensor(next_ids, device=self._device).unsqueeze(1)
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=self._device)], dim=1)
        results = []
        for i, r in enumerate(requests):
            text_ids = [t for t in outputs[i] if t not in self._eos]
            results.append(
                GenResult(
                    text=self._tokenizer.decode(text_ids, skip_special_tokens=True),
                    token_ids=outputs[i],
                    finish_reason=finish[i] or "length",
                    prompt_tokens=len(r.prompt_token_ids),
                    completion_tokens=len(outputs[i]),
                    logprobs=token_logprobs[i] if r.logprobs else None,
                )
            )
        return results

    async def close(self) -> None:
        self._worker.cancel()
