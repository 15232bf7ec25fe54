"""The HF backend's own sampler honours each value like vLLM does (no model needed)."""

import torch

from engine.backends.hf_backend import _sample_row
from engine.spec import SamplingConfig


def draws(logits, sampling, n=400, seen=None):
    seen = torch.zeros_like(logits) if seen is None else seen
    g = torch.Generator().manual_seed(0)
    return [_sample_row(logits, sampling, seen, seen, g) for _ in range(n)]


LOGITS = torch.tensor([3.0, 2.5, 2.0, 0.0, -1.0, -5.0])


def test_greedy_is_argmax():
    assert set(draws(LOGITS, SamplingConfig(preset="g", temperature=0.0), n=5)) == {0}


def test_top_k_and_top_p_restrict_the_support():
    assert set(draws(LOGITS, SamplingConfig(preset="k", temperature=1.0, top_k=2))) == {0, 1}
    # softmax: p0≈.48, p1≈.29, p2≈.18: top_p=0.7 keeps {0, 1} (0.48 < 0.7 ≤ 0.77)
    assert set(draws(LOGITS, SamplingConfig(preset="p", temperature=1.0, top_p=0.7))) == {0, 1}


def test_min_p_drops_tokens_below_a_share_of_the_top():
    got = set(draws(LOGITS, SamplingConfig(preset="m", temperature=1.0, min_p=0.3)))
    assert got == {0, 1, 2}  # p2/p0 = e^-1 ≈ 0.37 stays; p3/p0 = e^-3 goes


def test_presence_penalty_moves_mass_away_from_seen_tokens():
    seen = torch.zeros_like(LOGITS)
    seen[0] = 1
    plain = draws(LOGITS, SamplingConfig(preset="x", temperature=1.0))
    penalised = draws(LOGITS, SamplingConfig(preset="x", temperature=1.0, presence_penalty=1.5), seen=seen)
    assert penalised.count(0) < plain.count(0) / 2


def test_same_seed_same_draws():
    s = SamplingConfig(preset="x", temperature=0.7, top_p=0.8, top_k=20)
    assert draws(LOGITS, s, n=50) == draws(LOGITS, s, n=50)
