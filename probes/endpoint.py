"""The KL probe over an OpenAI-compatible endpoint: the candidate is a model served elsewhere.

The reference file (probes/store.py) holds token ids, so the probe text goes to the server as token
ids (no re-tokenisation): `/v1/completions` with `prompt: [ids]`, `max_tokens: 1` and vLLM's
`prompt_logprobs: k`, which returns, for every prompt position, the server's k most likely tokens and
the actual next token with their log-probs.

Top-k only. The server shows k tokens per position, not its full distribution, so the KL is that of
a coarse-graining both sides can see: one bin per token in (the reference's top-K ∩ the tokens the
server listed), one bin for everything else. By the data-processing inequality this is a lower bound
of the full-vocabulary KL, exactly 0 for identical models, and the panel says "top-k only". Top-1
agreement and the reference token's log-prob (hence Δp and the perplexity ratio) are exact: the server
always returns its top-1 and the actual token.

The token-id map of the server cannot be checked over HTTP beyond ids < the reference's vocabulary
size; pass `tokenizer=` (the candidate's local tokenizer or checkpoint) to check its fingerprint too.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import msgspec
import numpy as np

from engine.backends.openai_backend import BackendError, ServerInfo, Transport, describe_server
from engine.errors import NotComparable, UserError
from probes import metrics
from probes.store import Reference, read_reference, tokenizer_fingerprint

DEFAULT_K = 20  # vLLM's default --max-logprobs (and OpenAI's top_logprobs cap)
# The "everything else" bin of the candidate is 1 − Σ q over the listed tokens: float32 log-probs make
# that sum uncertain by ~1e-7, so a computed remainder at or below zero is floored here, not 0 (which
# would make the KL infinite for rounding alone). Its effect on the KL is below 1e-6 per position.
OTHER_FLOOR = 1e-12

SCOPE = (
    "top-k only: KL over the tokens both sides list (reference top-K ∩ the server's top-k and the actual "
    "token) plus one bin for the rest, a lower bound of the full KL; top-1, Δp and PPL are exact"
)


class EndpointProbe(msgspec.Struct, kw_only=True):
    summary: metrics.Summary
    server: ServerInfo
    top_k: int  # tokens per position the server was asked for
    reference_top_k: int
    scope: str = SCOPE


def _bin_terms(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """p·(e^d − 1 − d), d = log q − log p: each term ≥ 0 and exactly 0 where p = q (no cancellation);
    q where p = 0, +inf where q = 0 < p. Same form as the fused kernel's."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        d = logq - logp
        p = np.exp(logp)
        term = np.where(np.abs(d) < 0.5, p * (np.expm1(d) - d), np.exp(logq) - p - p * d)
        term = np.where(np.isneginf(logp), np.exp(logq), term)
        return np.where(np.isneginf(logq) & ~np.isneginf(logp), np.inf, term)


def coarse_kl(
    ref_ids: np.ndarray, ref_logprobs: np.ndarray, ref_log_tail: float, listed: dict[int, float]
) -> float:
    """KL(reference ‖ candidate) over bins {each id in ref_ids ∩ listed} ∪ {the rest}, float64.

    `listed` is what the server returned for this position: token id -> candidate log-prob."""
    ref_ids = np.asarray(ref_ids, dtype=np.int64)
    logp = np.asarray(ref_logprobs, dtype=np.float64)
    shared = np.fromiter((int(i) in listed for i in ref_ids), dtype=bool, count=len(ref_ids))
    logq = np.array([listed[int(i)] for i in ref_ids[shared]], dtype=np.float64)
    p_rest = math.exp(ref_log_tail) + float(np.exp(logp[~shared]).sum())
    q_rest = max(1.0 - float(np.exp(logq).sum()), OTHER_FLOOR)
    rest = _bin_terms(np.array([math.log(p_rest) if p_rest > 0 else -np.inf]), np.array([math.log(q_rest)]))
    return float(_bin_terms(logp[shared], logq).sum() + rest[0])


def _prompt_logprobs(data, what: str) -> list:
    """vLLM puts them in choices[0] for /v1/completions (and at the top level for chat)."""
    rows = None
    if isinstance(data, dict):
        choices = data.get("choices") or [{}]
        rows = choices[0].get("prompt_logprobs") if isinstance(choices[0], dict) else None
        rows = rows if rows is not None else data.get("prompt_logprobs")
    if not isinstance(rows, list):
        raise UserError(
            f"{what}: the server returned no prompt log-probs (vLLM's `prompt_logprobs`); "
            f"the endpoint KL probe needs a server that offers them"
        )
    return rows


def completions_body(served_model: str, tokens: list[int], k: int) -> dict:
    return {
        "model": served_model,
        "prompt": tokens,
        "max_tokens": 1,  # the one token the server must generate; prompt log-probs are the point
        "n": 1,
        "stream": False,
        "temperature": 0.0,
        "seed": 0,
        "prompt_logprobs": k,
        "add_special_tokens": False,  # the ids already carry the template's BOS
    }


async def _score_sequence(
    transport: Transport,
    gate: asyncio.Semaphore,
    served_model: str,
    ref: Reference,
    s: int,
    row_range: tuple[int, int],
    k: int,
) -> dict[str, np.ndarray]:
    tokens = [int(t) for t in ref.sequence(s)]
    what = f"sequence {ref.header.sequences[s].id}"
    async with gate:
        data = await transport.request("POST", "/v1/completions", completions_body(served_model, tokens, k))
    rows = _prompt_logprobs(data, what)
    if len(rows) != len(tokens):
        raise BackendError(
            f"{what}: {len(rows)} prompt log-prob rows for {len(tokens)} tokens (prefix caching hides rows?)"
        )
    a, b = row_range
    prompt_len = int(ref.prompt_lens[s])
    kl = np.empty(b - a)
    top1 = np.empty(b - a, dtype=np.int64)
    target_lp = np.empty(b - a)
    vocab = ref.header.vocab_size
    for r in range(b - a):
        # Row r is the logits at position prompt_len-1+r, predicting token prompt_len+r: vLLM lists
        # that distribution at prompt index prompt_len+r.
        position = prompt_len + r
        entry = rows[position]
        if not isinstance(entry, dict) or not entry:
            raise BackendError(f"{what}: no log-probs at prompt position {position}")
        listed = {int(tok): float(v["logprob"]) for tok, v in entry.items()}
        if max(listed) >= vocab:
            raise NotComparable(
                f"⚠ NOT COMPARABLE: the server returned token id {max(listed)}, past the reference's vocabulary ({vocab})"
            )
        target = tokens[position]
        if target not in listed:
            raise BackendError(
                f"{what}: the server did not list the actual token {target} at position {position}"
            )
        ranked = [(v.get("rank"), int(tok)) for tok, v in entry.items() if isinstance(v.get("rank"), int)]
        top1[r] = min(ranked)[1] if ranked else max(listed, key=listed.get)
        target_lp[r] = listed[target]
        kl[r] = coarse_kl(ref.topk_ids[a + r], ref.topk_logprobs[a + r], float(ref.log_tail[a + r]), listed)
    return {"kl": kl, "top1": top1, "target_lp": target_lp}


async def score_endpoint_async(
    *,
    reference: Path,
    base_url: str,
    api_key_env: str | None = None,
    served_model: str | None = None,
    top_k: int | None = None,
    concurrency: int = 8,
    timeout_s: float = 600.0,
    max_retries: int = 5,
    tokenizer=None,
) -> EndpointProbe:
    ref = read_reference(reference)
    if tokenizer is not None:
        if isinstance(tokenizer, (str, Path)):
            from engine.backends import load_tokenizer

            tokenizer = load_tokenizer(Path(tokenizer))
        got = tokenizer_fingerprint(tokenizer)
        if got != ref.header.tokenizer_fingerprint:
            raise NotComparable(
                f"⚠ NOT COMPARABLE: tokenizer fingerprint: reference {ref.header.tokenizer_fingerprint}, candidate {got}"
            )
    k = min(ref.header.top_k, DEFAULT_K) if top_k is None else top_k
    if k < 1:
        raise UserError(f"--top-k {k}: the endpoint probe needs at least 1 listed token per position")
    transport = Transport(
        base_url,
        api_key_env=api_key_env,
        timeout_s=timeout_s,
        max_retries=max_retries,
        concurrency=concurrency,
    )
    try:
        info = await describe_server(base_url, api_key_env, served_model, transport=transport)
        ranges = ref.row_ranges()
        longest = int(np.max(np.diff(ref.seq_offsets)))
        if info.max_model_len is not None and longest + 1 > info.max_model_len:
            raise UserError(
                f"--base-url {base_url}: the server's max_model_len {info.max_model_len} is shorter than the reference's "
                f"longest sequence ({longest} tokens + 1 generated): restart it with --max-model-len {longest + 1} or more"
            )
        gate = asyncio.Semaphore(max(1, concurrency))
        try:
            rows = await asyncio.gather(
                *(
                    _score_sequence(transport, gate, info.served_model, ref, s, r, k)
                    for s, r in enumerate(ranges)
                )
            )
        except BackendError as exc:
            if "HTTP 400" in str(exc) and "logprobs" in str(exc):
                raise UserError(
                    f"endpoint probe at top-{k}: {exc} (start vLLM with --max-logprobs {k}, or pass a smaller top-k)"
                ) from None
            raise
    finally:
        await transport.close()
    summary = metrics.summarize_rows(ref, rows)
    return EndpointProbe(summary=summary, server=info, top_k=k, reference_top_k=ref.header.top_k)


def score_endpoint(**kwargs) -> EndpointProbe:
    """Synchronous entry for the CLI: see `score_endpoint_async`."""
    return asyncio.run(score_endpoint_async(**kwargs))


def format_endpoint_probe(probe: EndpointProbe) -> str:
    label = f"over {probe.server.base_url} ({probe.server.served_model}), top-{probe.top_k} only"
    return metrics.format_summary(probe.summary, label=label) + f"\n  {probe.scope}"
