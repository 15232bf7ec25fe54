"""The probe's numbers, from per-position arrays of both sides (llama.cpp's --kl-divergence panel).

Standard errors are clustered by probe sequence: positions of one text are not independent draws.
The perplexity ratio is computed from per-position paired differences of log-likelihood, so its SE
carries the covariance of the two sides (what llama.cpp does for ln(PPL ratio)).
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

PROBE_FILE = "probe.json"  # the tier-0 panel of a run, in its run directory


class Summary(msgspec.Struct, kw_only=True):
    n_positions: int
    n_sequences: int
    kl_mean: float
    kl_se: float
    kl_median: float
    kl_p90: float
    kl_p99: float
    kl_p999: float
    kl_max: float
    top1_agree: float
    top1_se: float
    dp_mean: float  # candidate minus baseline probability of the reference token
    dp_se: float
    dp_rms: float
    dp_percentiles: dict[str, float]
    ppl_base: float
    ppl_cand: float
    ppl_ratio: float
    ppl_ratio_se: float
    per_source: dict[str, dict[str, float]]
    storage_floor: dict[str, float] = {}


def cluster_mean_se(values: np.ndarray, cluster: np.ndarray) -> tuple[float, float]:
    """Mean over positions and its cluster-robust SE (clusters = sequences)."""
    n = len(values)
    mean = float(np.mean(values))
    labels, inverse = np.unique(cluster, return_inverse=True)
    if len(labels) < 2 or not math.isfinite(mean):
        return mean, float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 and math.isfinite(mean) else float("nan")
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse)
    c = len(labels)
    var = c / (c - 1) * float(np.sum((sums - counts * mean) ** 2)) / n**2
    return mean, math.sqrt(var)


def summarize(
    *,
    kl: np.ndarray,
    base_top1: np.ndarray,
    cand_top1: np.ndarray,
    base_target_lp: np.ndarray,
    cand_target_lp: np.ndarray,
    sequence: np.ndarray,
    sources: list[str],
    storage_floor: dict[str, float] | None = None,
) -> Summary:
    """`sequence[i]` is row i's sequence index; `sources[s]` that sequence's source (bench)."""
    kl = kl.astype(np.float64)
    agree = (base_top1 == cand_top1).astype(np.float64)
    dp = np.exp(cand_target_lp.astype(np.float64)) - np.exp(base_target_lp.astype(np.float64))
    nll_diff = base_target_lp.astype(np.float64) - cand_target_lp.astype(np.float64)  # nll_cand − nll_base
    kl_mean, kl_se = cluster_mean_se(kl, sequence)
    top1, top1_se = cluster_mean_se(agree, sequence)
    dp_mean, dp_se = cluster_mean_se(dp, sequence)
    ln_ratio, ln_ratio_se = cluster_mean_se(nll_diff, sequence)
    per_source = {}
    source_of_row = np.array(sources, dtype=object)[sequence]
    for name in dict.fromkeys(sources):
        rows = source_of_row == name
        if rows.any():
            per_source[name] = {
                "positions": float(rows.sum()),
                "kl_mean": float(kl[rows].mean()),
                "kl_p99": float(np.percentile(kl[rows], 99)),
                "top1_agree": float(agree[rows].mean()),
                "ppl_ratio": float(np.exp(nll_diff[rows].mean())),
            }
    ratio = math.exp(ln_ratio)
    return Summary(
        n_positions=len(kl),
        n_sequences=len(np.unique(sequence)),
        kl_mean=kl_mean,
        kl_se=kl_se,
        kl_median=float(np.median(kl)),
        kl_p90=float(np.percentile(kl, 90)),
        kl_p99=float(np.percentile(kl, 99)),
        kl_p999=float(np.percentile(kl, 99.9)),
        kl_max=float(kl.max()),
        top1_agree=top1,
        top1_se=top1_se,
        dp_mean=dp_mean,
        dp_se=dp_se,
        dp_rms=float(np.sqrt(np.mean(dp**2))),
        dp_percentiles={f"p{q:g}": float(np.percentile(dp, q)) for q in (1, 5, 50, 95, 99)},
        ppl_base=float(np.exp(-base_target_lp.astype(np.float64).mean())),
        ppl_cand=float(np.exp(-cand_target_lp.astype(np.float64).mean())),
        ppl_ratio=ratio,
        ppl_ratio_se=ratio * ln_ratio_se,
        per_source=per_source,
        storage_floor=dict(storage_floor or {}),
    )


def format_summary(s: Summary, label: str = "") -> str:
    lines = [f"KL probe{(' ' + label) if label else ''}: {s.n_positions} positions in {s.n_sequences} sequences"]
    lines.append(f"  KL(base‖cand) mean {s.kl_mean:.6f} ± {s.kl_se:.6f}   median {s.kl_median:.6f}   p90 {s.kl_p90:.6f}   "
                 f"p99 {s.kl_p99:.6f}   p99.9 {s.kl_p999:.6f}   max {s.kl_max:.6f}")  # fmt: skip
    lines.append(f"  same top-1     {100 * s.top1_agree:.2f}% ± {100 * s.top1_se:.2f}%")
    pct = "  ".join(f"{k} {100 * v:+.3f}%" for k, v in s.dp_percentiles.items())
    lines.append(f"  Δp ref token   mean {100 * s.dp_mean:+.3f}% ± {100 * s.dp_se:.3f}%   RMS {100 * s.dp_rms:.3f}%   {pct}")
    lines.append(f"  PPL base {s.ppl_base:.4f}  cand {s.ppl_cand:.4f}  ratio {s.ppl_ratio:.5f} ± {s.ppl_ratio_se:.5f}")
    if s.storage_floor:
        lines.append(f"  storage floor (baseline vs its own stored bins): mean KL {s.storage_floor.get('kl_mean', float('nan')):.2e}, "
                     f"max {s.storage_floor.get('kl_max', float('nan')):.2e}")  # fmt: skip
    lines.append(f"  {'source':<22} {'positions':>9} {'KL mean':>10} {'KL p99':>10} {'top-1':>8} {'PPL ratio':>10}")
    for name, row in s.per_source.items():
        lines.append(f"  {name:<22} {int(row['positions']):>9} {row['kl_mean']:>10.6f} {row['kl_p99']:>10.6f} "
                     f"{100 * row['top1_agree']:>7.2f}% {row['ppl_ratio']:>10.5f}")  # fmt: skip
    return "\n".join(lines)


def summarize_rows(ref, rows: list[dict]) -> Summary:
    """The panel of a candidate's per-sequence rows (kl, top1, target_lp) against a stored reference."""
    ranges = ref.row_ranges()
    cand = {key: np.concatenate([r[key] for r in rows]) for key in ("kl", "top1", "target_lp")}
    base_top1 = ref.topk_ids[np.arange(len(ref.topk_ids)), np.argmax(ref.topk_logprobs, axis=1)]
    sequence_of_row = np.concatenate([np.full(b - a, s) for s, (a, b) in enumerate(ranges)])
    return summarize(
        kl=cand["kl"],
        base_top1=base_top1,
        cand_top1=cand["top1"],
        base_target_lp=ref.target_lp,
        cand_target_lp=cand["target_lp"],
        sequence=sequence_of_row,
        sources=[info.source for info in ref.header.sequences],
        storage_floor=ref.header.storage_floor,
    )
