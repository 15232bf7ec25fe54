"""The fused KL row kernel against a float64 definition (torch path here; Triton through its interpreter)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from probes import kl_kernel

ROOT = Path(__file__).resolve().parent.parent


def _case(seed: int, n: int = 16, vocab: int = 3000, k: int = 64, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, vocab, generator=gen) * 3
    cand = base + torch.randn(n, vocab, generator=gen) * 0.7
    # Extreme rows: a spike far above the rest, a nearly flat row, huge logits, masked (-inf) tokens,
    # a candidate peaked on a token the reference put in its tail.
    cand[0, 5] = 90.0
    cand[1] = cand[1] * 1e-3
    cand[2] = cand[2] * 400
    base[4, 11] = 60.0
    cand[5] = base[5]  # identical row
    targets = torch.randint(0, vocab, (n,), generator=gen)
    ref = kl_kernel.topk_reference(base, k, targets)
    outside = torch.ones(vocab, dtype=torch.bool)
    outside[ref["ids"][6].long()] = False
    cand[6, int(outside.nonzero()[0])] = 50.0
    cand[3, outside.nonzero()[:100, 0]] = float("-inf")  # masked tokens outside the reference bins
    cand[7, ref["ids"][7, 0].long()] = float("-inf")  # a reference bin the candidate rules out: KL = inf
    return cand.to(dtype), ref, targets


def _check(got, want, atol=1e-6):
    kl_got, kl_want = got["kl"].double().cpu(), want["kl"]
    finite = torch.isfinite(kl_want)
    assert torch.equal(torch.isfinite(kl_got), finite)
    assert torch.allclose(kl_got[finite], kl_want[finite], rtol=1e-4, atol=atol), (kl_got - kl_want)[finite].abs().max()
    assert torch.equal(got["top1"].cpu(), want["top1"])
    assert torch.allclose(got["target_lp"].double().cpu(), want["target_lp"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_torch_path_matches_float64(seed):
    cand, ref, targets = _case(seed)
    got = kl_kernel.row_stats(cand, ref["ids"], ref["logprobs"], ref["log_tail"], targets)
    want = kl_kernel.row_stats_float64(cand, ref["ids"], ref["logprobs"], ref["log_tail"], targets)
    _check(got, want)
    assert got["kl"][5] == 0.0  # the identical row
    assert got["kl"][6] > 10  # candidate mass on a reference-tail token is seen through the tail bin
    assert got["kl"][7] == float("inf")


def test_bfloat16_logits_and_full_vocabulary_bins():
    gen = torch.Generator().manual_seed(3)
    cand = (torch.randn(16, 512, generator=gen) * 3).to(torch.bfloat16)
    base = cand.float() + 0.5 * torch.randn(16, 512, generator=gen)
    targets = torch.randint(0, 512, (16,), generator=gen)
    ref = kl_kernel.topk_reference(base, 512, targets)  # K = vocab: exact full KL, empty tail
    assert torch.all(ref["log_tail"] == float("-inf"))
    got = kl_kernel.row_stats(cand, ref["ids"], ref["logprobs"], ref["log_tail"], targets)
    want = kl_kernel.row_stats_float64(cand, ref["ids"], ref["logprobs"], ref["log_tail"], targets)
    _check(got, want)
    full = torch.sum(torch.softmax(base.double(), -1) * (torch.log_softmax(base.double(), -1) - torch.log_softmax(cand.double(), -1)), -1)
    assert torch.allclose(got["kl"].double(), full, rtol=1e-4, atol=1e-6)


def test_same_rows_give_zero_and_binned_kl_bounds_full_kl():
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(32, 2000, generator=gen) * 2
    cand = base + torch.randn(32, 2000, generator=gen) * 0.3
    targets = torch.zeros(32, dtype=torch.long)
    ref = kl_kernel.topk_reference(base, 64, targets)
    same = kl_kernel.row_stats(base, ref["ids"], ref["logprobs"], ref["log_tail"], targets)
    assert torch.all(same["kl"].abs() < 1e-6)
    binned = kl_kernel.row_stats(cand, ref["ids"], ref["logprobs"], ref["log_tail"], targets)["kl"].double()
    full = torch.sum(torch.softmax(base.double(), -1) * (torch.log_softmax(base.double(), -1) - torch.log_softmax(cand.double(), -1)), -1)
    assert torch.all(binned <= full + 1e-6) and torch.all(binned > 0)


TRITON_SCRIPT = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
from test_probe_kernel import _case, _check
from probes import kl_kernel
for seed in (0, 1):
    cand, ref, targets = _case(seed, n=8, vocab=2500)
    got = kl_kernel.row_stats_triton(cand, ref["ids"], ref["logprobs"], ref["log_tail"], targets)
    want = kl_kernel.row_stats_float64(cand, ref["ids"], ref["logprobs"], ref["log_tail"], targets)
    _check(got, want)
print("ok")
"""


def test_triton_kernel_in_the_interpreter_matches_float64():
    """The Triton kernel's logic (not its GPU code generation) checked on CPU by Triton's interpreter."""
    pytest.importorskip("triton")
    proc = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
