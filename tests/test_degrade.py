import pytest
import torch

from engine.degrade import GROUP, add_noise, magnitude_prune, parse_method, rtn_quantize
from engine.errors import UserError


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_rtn_uses_at_most_2_to_the_bits_levels_per_group(bits):
    w = torch.randn(8, 3 * GROUP + 64)  # ragged last group, like hidden size 576
    q = rtn_quantize(w, bits)
    assert q.shape == w.shape
    for row in range(8):
        for start in range(0, w.shape[1], GROUP):
            group = q[row, start : start + GROUP]
            scale = w[row, start : start + GROUP].abs().max() / (2 ** (bits - 1) - 1)
            levels = torch.round(group / scale)
            assert torch.allclose(levels * scale, group, atol=1e-5)
            assert levels.unique().numel() <= 2**bits


def test_rtn_error_grows_as_bits_shrink():
    w = torch.randn(64, 576)
    errors = [(rtn_quantize(w, b) - w).pow(2).mean().item() for b in (8, 4, 3)]
    assert errors[0] < errors[1] < errors[2]
    assert errors[0] < 1e-4


def test_prune_zeroes_the_smallest_share():
    w = torch.randn(100, 100)
    p = magnitude_prune(w, 30)
    assert (p == 0).float().mean().item() == pytest.approx(0.30, abs=0.001)
    assert p[p != 0].abs().min() >= w.abs().flatten().kthvalue(3000).values


def test_noise_scale_is_relative():
    w = torch.randn(200, 200) * 5
    n = add_noise(w, 0.1, torch.Generator().manual_seed(0))
    assert (n - w).std().item() == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("bad", ["rtn-int9", "prune-0", "prune-100", "noise-", "gptq"])
def test_bad_method_names_are_rejected(bad):
    with pytest.raises(UserError, match="--method"):
        parse_method(bad)
