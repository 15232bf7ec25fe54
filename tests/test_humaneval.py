"""humaneval: the real split loads, every canonical solution passes in the sandbox, wrong ones fail,
replies are read as full functions or bodies, and pass@k is the unbiased estimator."""

from __future__ import annotations

import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import need_shared_data

from benches import Item, humaneval
from engine import sandbox

# Skips on a developer machine without bubblewrap; in CI (which installs it) the tests run and fail loudly.
pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("CI"), reason="bubblewrap is not installed (apt-get install bubblewrap)"
)


@pytest.fixture(scope="module")
def items() -> list[Item]:
    path = need_shared_data("humaneval/HumanEval.jsonl.gz")
    sandbox.set_mode("bwrap")
    return humaneval.load(path.parent.parent)


def _score_all(items: list[Item], replies: list[str]) -> list:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(humaneval.score, items, replies))


def test_real_split_loads(items):
    assert len(items) == 164
    assert items[0].id == "HumanEval/0" and items[0].meta["entry_point"] == "has_close_elements"
    assert len({i.id for i in items}) == 164


def test_every_canonical_solution_passes(items):
    # As a chat model writes it: the whole function in a fenced block, prose around it.
    replies = [f"Here you go:\n```python\n{it.question}{it.target}```\nDone." for it in items]
    results = _score_all(items, replies)
    failed = [(it.id, r.extra) for it, r in zip(items, results, strict=True) if r.score != 1.0]
    assert failed == []
    assert {r.extra["form"] for r in results} == {"function"}
    assert {r.extra["sandbox"] for r in results} == {"bwrap"}


def test_wrong_solutions_fail(items):
    # Each problem answered with the next problem's canonical body: valid code, wrong function.
    shifted = _score_all(items, [nxt.target for nxt in items[1:] + items[:1]])
    assert [it.id for it, r in zip(items, shifted, strict=True) if r.score] == []
    assert all(r.extra["status"] == "error" and r.extra["error"] for r in shifted)


def test_body_forms_and_extraction(items):
    first = items[0]
    body = first.target
    flush_left = "\n".join(line[4:] for line in body.splitlines())
    replies = {
        "indented body": body,
        "flush-left body in a fence": f"```\n{flush_left}\n```",
        "unterminated fence (cut off after the code)": f"```python\n{first.question}{body}",
        "helper block first": f"```python\nimport math\n```\nthen\n```python\n{first.question}{body}```",
        "indented whole function": "```python\n" + "\n".join("    " + line for line in (first.question + body).splitlines()) + "\n```",
        # Seen from SmolLM2: the code, then only a closing fence.
        "no opening fence": f"{first.question}{body}```",
        "no opening fence, prose after": f"{first.question}{body}```\nThis compares every pair.",
        "prose before unfenced code": f"Sure! Here it is:\n{first.question}{body}",
    }
    results = {name: humaneval.score(first, reply) for name, reply in replies.items()}
    assert {name: r.score for name, r in results.items()} == dict.fromkeys(replies, 1.0)
    assert results["indented body"].extra["form"] == "body"
    assert results["helper block first"].extra["form"] == "function"


def test_demo_block_does_not_run(items):
    first = items[0]
    reply = f"```python\n{first.question}{first.target}\nif __name__ == '__main__':\n    raise SystemExit(input())\n```"
    assert humaneval.score(first, reply).score == 1.0


def test_hostile_reply_is_contained_and_scored_wrong(items, monkeypatch):
    first = items[0]
    monkeypatch.setattr(humaneval, "LIMITS", sandbox.Limits(cpu_s=1, wall_s=30.0))
    spin = humaneval.score(first, "    while True:\n        pass\n")
    assert spin.score == 0.0 and spin.extra["status"] == "error"  # the CPU limit ended it, not the wall
    monkeypatch.setattr(humaneval, "LIMITS", sandbox.Limits(cpu_s=1, wall_s=2.0))
    sleeper = humaneval.score(first, "    import time\n    time.sleep(10**6)\n")
    assert sleeper.score == 0.0 and sleeper.extra["status"] == "timeout"
    assert sleeper.extra["error"] == "killed after 2s wall clock"


def test_unsandboxed_mode_is_recorded(items):
    sandbox.set_mode("none")
    try:
        result = humaneval.score(items[0], items[0].target)
    finally:
        sandbox.set_mode("bwrap")
    assert result.score == 1.0 and result.extra["sandbox"] == "none"


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (10, 3, 2), (10, 3, 5), (20, 1, 10), (20, 15, 10)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert humaneval.pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    if k == 1:
        assert humaneval.pass_at_k(n, c, k) == pytest.approx(c / n)
