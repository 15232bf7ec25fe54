"""What is done with a chunk of logits rows where they are computed (HF forward, or inside vLLM).

Two jobs, both returning small per-row numpy arrays, never logits:
  BuildJob  the baseline side: its top-K bins per row, and the storage floor (KL of the rounded,
            stored bins against the live row)
  ScoreJob  the candidate side: per-row statistics against the stored bins (probes.kl_kernel)
"""

from __future__ import annotations

import msgspec
import numpy as np
import torch

from probes.kl_kernel import row_stats, topk_reference


class BuildJob(msgspec.Struct, kw_only=True):
    top_k: int
    logprob_dtype: str  # float32 | float16


class ScoreJob(msgspec.Struct, kw_only=True):
    # This sequence's reference rows (its scored positions, in order).
    ids: np.ndarray
    logprobs: np.ndarray
    log_tail: np.ndarray


def reduce_rows(logits: torch.Tensor, targets: torch.Tensor, job: BuildJob | ScoreJob, first_row: int) -> dict[str, np.ndarray]:
    """Rows `first_row ..` of a sequence's scored positions; `targets` are their next tokens."""
    if isinstance(job, BuildJob):
        top = topk_reference(logits, min(job.top_k, logits.shape[-1]), targets)
        stored = top["logprobs"].to(getattr(torch, job.logprob_dtype))
        floor = row_stats(logits, top["ids"], stored.float(), top["log_tail"], targets)
        return {
            "ids": top["ids"].cpu().numpy(),
            "logprobs": stored.cpu().numpy(),
            "log_tail": top["log_tail"].float().cpu().numpy(),
            "target_lp": top["target_lp"].float().cpu().numpy(),
            "floor_kl": floor["kl"].float().cpu().numpy(),
        }
    rows = slice(first_row, first_row + logits.shape[0])
    device = logits.device
    stats = row_stats(
        logits,
        torch.tensor(job.ids[rows], device=device),
        torch.tensor(job.logprobs[rows], dtype=torch.float32, device=device),
        torch.tensor(job.log_tail[rows], device=device),
        targets,
    )
    return {
        "kl": stats["kl"].float().cpu().numpy(),
        "top1": stats["top1"].cpu().numpy().astype(np.int32),
        "target_lp": stats["target_lp"].float().cpu().numpy(),
    }


def concat(parts: list[tuple[int, dict[str, np.ndarray]]], n_rows: int, what: str) -> dict[str, np.ndarray]:
    """Chunks (first_row, arrays) of one sequence, checked to cover rows 0..n_rows-1 exactly once."""
    parts = sorted(parts, key=lambda p: p[0])
    expected = 0
    for first, arrays in parts:
        if first != expected:
            raise RuntimeError(f"{what}: rows {expected}..{first - 1} never computed (prefix caching on?)")
        expected += len(next(iter(arrays.values())))
    if expected != n_rows:
        raise RuntimeError(f"{what}: got {expected} scored rows, expected {n_rows}")
    return {key: np.concatenate([a[key] for _, a in parts]) for key in parts[0][1]}
