"""Read bandwidth of the fused KL row kernel against the device's own copy bandwidth.

    python bench_kernels/kl_bandwidth.py [--rows 4096] [--vocab 152064,248320] [--k 64] [--dtype bfloat16] [--compile]

Per vocab size it times (median of --reps runs, after warm-up):
  fused     probes.kl_kernel.row_stats (Triton on CUDA, torch elsewhere)
  torch     the torch path (row_stats_torch), eager
  compiled  the torch path under torch.compile (with --compile)
  copy      a device-to-device copy of the same logits (read + write bytes)
and prints achieved read bandwidth (logits bytes / time; the K-bin gathers and outputs are noise)
beside the copy bandwidth. On a CPU-only machine it runs the same on CPU (smaller defaults).
Anchors (one H100, torch 2.11, 4096 bf16 rows): eager 0.20 TB/s, torch.compile 0.63-0.85 TB/s,
copy 3.02 TB/s; the fused kernel's target is >= 2.4 TB/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from probes import kl_kernel  # noqa: E402


def _timer(device: torch.device):
    if device.type == "cuda":

        def run(fn, reps: int) -> float:
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            return statistics.median(times)

        return run

    def run(fn, reps: int) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return run


def make_inputs(rows: int, vocab: int, k: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype=dtype, device=device)
    # A reference that differs from the candidate, as in real use.
    ref = kl_kernel.topk_reference((logits.float() + 0.3 * torch.randn(rows, vocab, generator=gen).to(device)), k,
                                   torch.zeros(rows, dtype=torch.long, device=device))  # fmt: skip
    targets = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    return logits, ref["ids"], ref["logprobs"], ref["log_tail"], targets


def bench_vocab(vocab: int, rows: int, k: int, dtype: torch.dtype, device: torch.device, reps: int, compile_too: bool):
    """[(path, seconds, read bytes/s, bandwidth / copy bandwidth)] for one vocab size."""
    on_cuda = device.type == "cuda"
    timed = _timer(device)
    logits, ids, logp, tail, targets = make_inputs(rows, vocab, k, dtype, device)
    nbytes = logits.numel() * logits.element_size()
    scratch = torch.empty_like(logits)
    paths = {
        "copy": lambda: scratch.copy_(logits),
        "fused": lambda: kl_kernel.row_stats(logits, ids, logp, tail, targets),
        "torch": lambda: kl_kernel.row_stats_torch(logits, ids, logp, tail, targets),
    }
    if compile_too:
        compiled = torch.compile(kl_kernel.row_stats_torch)
        paths["compiled"] = lambda: compiled(logits, ids, logp, tail, targets)
    seconds = {}
    for path, fn in paths.items():
        for _ in range(3 if on_cuda else 1):
            fn()  # warm-up (and Triton autotuning)
        if on_cuda:
            torch.cuda.synchronize()
        seconds[path] = timed(fn, reps)
    copy_bw = 2 * nbytes / seconds["copy"]  # a copy reads and writes every byte
    out = []
    for path, s in seconds.items():
        bw = (2 * nbytes if path == "copy" else nbytes) / s
        out.append((path, s, bw, bw / copy_bw))
    return out


def main() -> int:
    on_cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4096 if on_cuda else 256)
    p.add_argument("--vocab", default="152064,248320" if on_cuda else "49152")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--reps", type=int, default=20 if on_cuda else 3)
    p.add_argument("--compile", action="store_true", help="also time the torch path under torch.compile")
    args = p.parse_args()
    device = torch.device("cuda" if on_cuda else "cpu")
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if on_cuda else "CPU"
    print(f"device {name}, torch {torch.__version__}, fused path: {'triton' if kl_kernel.uses_triton(torch.empty(1, device=device), args.k) else 'torch'}")
    print(f"{'vocab':>7} {'rows':>5} {'path':>9} {'ms':>9} {'read TB/s':>10} {'vs copy':>8}")
    for vocab in (int(v) for v in args.vocab.split(",")):
        for path, seconds, bandwidth, ratio in bench_vocab(vocab, args.rows, args.k, dtype, device, args.reps, args.compile):
            print(f"{vocab:>7} {args.rows:>5} {path:>9} {1e3 * seconds:>9.3f} {bandwidth / 1e12:>10.3f} {ratio:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
