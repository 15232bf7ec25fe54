import pytest

from engine.errors import UserError
from engine.sampling import resolve_sampling


def test_default_follows_think():
    think = resolve_sampling(None, True)
    assert (think.temperature, think.top_p, think.top_k, think.presence_penalty) == (0.6, 0.95, 20, 0.0)
    nothink = resolve_sampling(None, False)
    assert (nothink.temperature, nothink.top_p, nothink.top_k, nothink.presence_penalty) == (0.7, 0.8, 20, 1.5)


def test_overrides_replace_only_given_values():
    s = resolve_sampling("qwen-think", True, temperature=1.0, top_k=None)
    assert (s.temperature, s.top_p, s.top_k) == (1.0, 0.95, 20)
    assert s.preset == "qwen-think+temperature=1.0"


def test_greedy_and_errors():
    assert resolve_sampling("greedy", False).temperature == 0.0
    with pytest.raises(UserError, match="unknown preset"):
        resolve_sampling("hot", False)
    with pytest.raises(UserError, match="out of range"):
        resolve_sampling(None, False, top_p=0.0)
