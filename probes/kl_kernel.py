"""One fused pass over rows of logits against a stored top-K reference.

Per row of candidate logits (any float dtype) and its reference bins (K token ids sorted ascending,
their reference log-probs, the log of the reference tail mass outside them) the pass returns:

    kl          KL(reference ‖ candidate) over the K+1 bins (K tokens + tail): the exact KL of the
                coarse-grained distributions, a lower bound of the full-vocabulary KL
    top1        argmax of the candidate row
    target_lp   candidate log-prob of the row's reference (next) token
    lse         logsumexp of the candidate row

`row_stats` picks the Triton kernel for CUDA tensors (when Triton imports and K is small enough to
live in registers) and the torch version elsewhere. `row_stats_float64` is the slow, plain reference
both are tested against. `topk_reference` builds the reference bins from a baseline's logits.

The per-bin KL term is written as p·(e^d − 1 − d) with d = log q − log p: every term is ≥ 0, an exact
zero when the two rows agree, and it does not cancel when p ≈ q (the plain p·log(p/q) summed over
bins does, and goes slightly negative under storage rounding).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs without Triton: the torch path serves.
    triton = None
    tl = None

TRITON_MAX_K = 256  # the K bins of a row are held in registers


def _bin_term(logp_ref: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """p·(e^d − 1 − d), d = log q − log p; q where p = 0, +inf where q = 0 < p."""
    d = logq - logp_ref
    p = logp_ref.exp()
    small = p * (torch.expm1(d) - d)
    # Far from p = q use the form that cannot overflow: q − p − p·d.
    large = logq.exp() - p - p * d
    term = torch.where(d.abs() < 0.5, small, large)
    # p = 0: the generalised term is q (summed over all bins the q − p parts cancel to 0).
    term = torch.where(logp_ref == float("-inf"), logq.exp(), term)
    return torch.where((logq == float("-inf")) & (logp_ref > float("-inf")), torch.full_like(term, float("inf")), term)


def row_stats_torch(
    logits: torch.Tensor, ref_ids: torch.Tensor, ref_logprobs: torch.Tensor, ref_log_tail: torch.Tensor, target_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The torch path (any device), float32 math."""
    x = logits.float()
    ids = ref_ids.long()
    lse = torch.logsumexp(x, dim=-1)
    logq = x.gather(-1, ids) - lse[:, None]
    tail_q = torch.logsumexp(x.scatter(-1, ids, float("-inf")), dim=-1) - lse
    kl = _bin_term(ref_logprobs.float(), logq).sum(-1) + _bin_term(ref_log_tail.float(), tail_q)
    target_lp = x.gather(-1, target_ids.long()[:, None])[:, 0] - lse
    return {"kl": kl, "top1": x.argmax(-1), "target_lp": target_lp, "lse": lse}


def row_stats_float64(
    logits: torch.Tensor, ref_ids: torch.Tensor, ref_logprobs: torch.Tensor, ref_log_tail: torch.Tensor, target_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Plain float64 definition, for tests: Σ p log(p/q) over the K bins and the tail."""
    x = logits.double()
    ids = ref_ids.long()
    logq_all = torch.log_softmax(x, dim=-1)
    logq = logq_all.gather(-1, ids)
    in_bins = torch.zeros_like(x, dtype=torch.bool).scatter(-1, ids, True)
    tail_q = torch.logsumexp(logq_all.masked_fill(in_bins, float("-inf")), dim=-1)
    logp = ref_logprobs.double()
    tail_p = ref_log_tail.double()
    # Generalised KL (Σ p log p/q − p + q) equals the KL for normalised rows and stays ≥ 0 for rounded ones.
    terms = torch.where(logp > float("-inf"), logp.exp() * (logp - logq) - logp.exp() + logq.exp(), logq.exp())
    tail = torch.where(tail_p > float("-inf"), tail_p.exp() * (tail_p - tail_q) - tail_p.exp() + tail_q.exp(), tail_q.exp())
    kl = terms.sum(-1) + tail
    target_lp = logq_all.gather(-1, target_ids.long()[:, None])[:, 0]
    return {"kl": kl, "top1": x.argmax(-1), "target_lp": target_lp, "lse": torch.logsumexp(x, dim=-1)}


def topk_reference(logits: torch.Tensor, k: int, target_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reference bins of baseline rows: top-k ids (sorted ascending), their log-probs, log tail mass,
    and the log-prob of each row's next token. Float32 math; k = vocab gives the full distribution."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    top = torch.topk(x, k, dim=-1).indices
    ids, _ = torch.sort(top, dim=-1)
    logp = x.gather(-1, ids) - lse[:, None]
    log_tail = torch.logsumexp(x.scatter(-1, ids, float("-inf")), dim=-1) - lse
    target_lp = x.gather(-1, target_ids.long()[:, None])[:, 0] - lse
    return {"ids": ids.to(torch.int32), "logprobs": logp, "log_tail": log_tail, "target_lp": target_lp}


if triton is not None:

    @triton.jit
    def _term(logp, logq):
        # p·(e^d − 1 − d), d = log q − log p: a series near d = 0 (no cancellation), q − p − p·d elsewhere.
        d = logq - logp
        p = tl.exp(logp)
        series = d * d * (0.5 + d * (1.0 / 6 + d * (1.0 / 24 + d * (1.0 / 120 + d * (1.0 / 720 + d * (1.0 / 5040 + d * (1.0 / 40320)))))))
        far = tl.exp(logq) - p - p * d
        term = tl.where(tl.abs(d) < 0.5, p * series, far)
        term = tl.where(logp == float("-inf"), tl.exp(logq), term)
        return tl.where((logq == float("-inf")) & (logp > float("-inf")), float("inf"), term)

    @triton.jit
    def _row_stats_kernel(
        logits_ptr,
        row_stride,
        V,
        ids_ptr,
        logp_ptr,
        tail_ptr,
        target_ptr,
        kl_ptr,
        top1_ptr,
        target_lp_ptr,
        lse_ptr,
        K: tl.constexpr,
        KP: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * row_stride
        ids_row = ids_ptr + row * K
        kk = tl.arange(0, KP)
        # Padding lanes get an id past the vocabulary, so they never fall inside a block.
        ids = tl.load(ids_row + kk, mask=kk < K, other=2**30)
        lane = tl.arange(0, BLOCK)

        # Online logsumexp over the tail only (tokens outside the bins), in its own max frame so a
        # tail far below the row's maximum does not underflow; the bins are added at the end.
        m_tail = tl.full((), float("-inf"), tl.float32)
        s_tail = tl.zeros((), tl.float32)
        best_val = tl.full((), float("-inf"), tl.float32)
        best_idx = tl.zeros((), tl.int32)
        for start in range(0, V, BLOCK):
            offs = start + lane
            x = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
            block_max = tl.max(x, axis=0)
            block_arg = tl.argmax(x, axis=0).to(tl.int32) + start
            better = block_max > best_val
            best_idx = tl.where(better, block_arg, best_idx)
            best_val = tl.where(better, block_max, best_val)
            # The reference ids inside this block are a contiguous run of the sorted id list.
            first = tl.sum((ids < start).to(tl.int32), axis=0)
            last = tl.sum((ids < start + BLOCK).to(tl.int32), axis=0)
            in_bins = offs < 0
            for t in range(first, last):
                in_bins = in_bins | (offs == tl.load(ids_row + t))
            xt = tl.where(in_bins, float("-inf"), x)
            m_new = tl.maximum(m_tail, tl.max(xt, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s_tail = s_tail * tl.exp(m_tail - m_safe) + tl.sum(tl.exp(xt - m_safe), axis=0)
            m_tail = m_new
        tail_lse = tl.where(s_tail > 0, m_tail + tl.log(s_tail), float("-inf"))

        g = tl.load(row_ptr + ids, mask=kk < K, other=float("-inf")).to(tl.float32)
        m_bins = tl.max(g, axis=0)
        bins_lse = m_bins + tl.log(tl.sum(tl.exp(g - m_bins), axis=0))
        top = tl.maximum(bins_lse, tail_lse)
        lse = top + tl.log(tl.exp(bins_lse - top) + tl.exp(tail_lse - top))
        logq = g - lse
        tail_q = tail_lse - lse  # -inf when the bins cover the vocabulary
        logp = tl.load(logp_ptr + row * K + kk, mask=kk < K, other=float("-inf")).to(tl.float32)
        tail_p = tl.load(tail_ptr + row).to(tl.float32)
        kl = tl.sum(_term(logp, logq), axis=0) + _term(tail_p, tail_q)

        target = tl.load(target_ptr + row)
        target_lp = tl.load(row_ptr + target).to(tl.float32) - lse
        tl.store(kl_ptr + row, kl)
        tl.store(top1_ptr + row, best_idx.to(tl.int64))
        tl.store(target_lp_ptr + row, target_lp)
        tl.store(lse_ptr + row, lse)

    # The interpreter (TRITON_INTERPRET=1, CPU tests) has no benchmarker to autotune with.
    _row_stats_autotuned = triton.autotune(
        configs=[
            triton.Config({"BLOCK": 2048}, num_warps=4),
            triton.Config({"BLOCK": 4096}, num_warps=8),
            triton.Config({"BLOCK": 8192}, num_warps=8),
            triton.Config({"BLOCK": 8192}, num_warps=16),
        ],
        key=["V", "K"],
    )(_row_stats_kernel)

def row_stats_triton(
    logits: torch.Tensor, ref_ids: torch.Tensor, ref_logprobs: torch.Tensor, ref_log_tail: torch.Tensor, target_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The fused Triton path (CUDA). `ref_ids` must be sorted ascending per row."""
    n, vocab = logits.shape
    k = ref_ids.shape[1]
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    device = logits.device
    ids = ref_ids.to(device=device, dtype=torch.int32).contiguous()
    logp = ref_logprobs.to(device=device, dtype=torch.float32).contiguous()
    tail = ref_log_tail.to(device=device, dtype=torch.float32).contiguous()
    target = target_ids.to(device=device, dtype=torch.int64).contiguous()
    out = {
        "kl": torch.empty(n, device=device, dtype=torch.float32),
        "top1": torch.empty(n, device=device, dtype=torch.int64),
        "target_lp": torch.empty(n, device=device, dtype=torch.float32),
        "lse": torch.empty(n, device=device, dtype=torch.float32),
    }
    if n:
        args = (logits, logits.stride(0), vocab, ids, logp, tail, target, out["kl"], out["top1"], out["target_lp"], out["lse"])
        kp = max(16, triton.next_power_of_2(k))
        if os.environ.get("TRITON_INTERPRET") == "1":
            _row_stats_kernel[(n,)](*args, K=k, KP=kp, BLOCK=1024)
        else:
            _row_stats_autotuned[(n,)](*args, K=k, KP=kp)
    return out


def uses_triton(logits: torch.Tensor, k: int) -> bool:
    return triton is not None and logits.is_cuda and k <= TRITON_MAX_K


def row_stats(
    logits: torch.Tensor, ref_ids: torch.Tensor, ref_logprobs: torch.Tensor, ref_log_tail: torch.Tensor, target_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Fused per-row statistics; Triton on CUDA, torch elsewhere (see module docstring)."""
    if uses_triton(logits, ref_ids.shape[1]):
        return row_stats_triton(logits, ref_ids, ref_logprobs, ref_log_tail, target_ids)
    return row_stats_torch(logits, ref_ids.to(logits.device), ref_logprobs.to(logits.device), ref_log_tail.to(logits.device), target_ids.to(logits.device))
