"""Issue 18, items 8-9: a scorer never crashes a run; exact math answers for exact-answer contests."""

from __future__ import annotations

import asyncio
import time
import types

import pytest

from benches import Item, Scored, gsm8k, math_answer
from engine import runner


def test_gsm8k_400_digit_answer_is_scored_not_a_crash():
    huge = "9" * 400
    item = Item(id="gsm8k-0000", question="q", target="18")
    scored = gsm8k.score(item, f"so the total is {huge}\n#### {huge}")  # raised OverflowError before
    assert scored.answer == huge and scored.score == 0.0
    assert scored.extra["strict_answer"] == huge
    assert gsm8k.score(Item(id="x", question="q", target=huge), f"#### {huge}").score == 1.0


@pytest.mark.parametrize(
    "text,normal",
    [("007.50", "7.5"), ("-0", "0"), ("1.0", "1"), (".5", "0.5"), ("5.", "5"), ("$1,000", "1000"), ("-.5", "-0.5"),
     ("1.2.3", "1.2.3"), ("12345678901234567891", "12345678901234567891")],
)
def test_gsm8k_numbers_are_normalised_exactly(text, normal):
    assert gsm8k._normalize(text) == normal


def test_gsm8k_numbers_past_float_precision_stay_distinct():
    # As floats both are 1.2345678901234567e19: they used to compare equal.
    item = Item(id="x", question="q", target="12345678901234567890")
    assert gsm8k.score(item, "#### 12345678901234567891").score == 0.0


def _bench(score) -> types.ModuleType:
    module = types.ModuleType("fake_bench")
    module.NAME = "fake"
    module.score = score
    return module


ITEM = Item(id="i1", question="q", target="1")


def test_scorer_exception_becomes_a_recorded_scorer_error(capsys):
    def score(item, text):
        return Scored(answer="x", score=float(int(float("1" + "0" * 400))))  # OverflowError

    scored = asyncio.run(runner.score_guarded(_bench(score), ITEM, "text"))
    assert scored.score == 0.0 and scored.answer is None
    assert scored.extra["scorer_error"].startswith("OverflowError: ")
    assert "fake item i1: scorer error" in capsys.readouterr().err


def test_scorer_out_of_range_score_becomes_a_scorer_error():
    scored = asyncio.run(runner.score_guarded(_bench(lambda item, text: Scored(answer="x", score=7.0)), ITEM, "t"))
    assert scored.extra["scorer_error"] == "ValueError: score 7.0 outside [0, 1]"


def test_scorer_timeout_becomes_a_scorer_error(monkeypatch):
    monkeypatch.setattr(runner, "SCORER_TIMEOUT_S", 0.2)

    def slow(item, text):
        time.sleep(1.0)
        return Scored(answer="1", score=1.0)

    started = time.monotonic()
    scored = asyncio.run(runner.score_guarded(_bench(slow), ITEM, "t"))
    assert scored.extra["scorer_error"] == "timed out after 0.2s"
    assert time.monotonic() - started < 1.5


def test_a_good_scorer_passes_through():
    scored = asyncio.run(runner.score_guarded(_bench(lambda item, text: Scored(answer="1", score=1.0)), ITEM, "t"))
    assert scored == Scored(answer="1", score=1.0)


pytest.importorskip("math_verify", reason="math-verify is not installed (pip install math-verify)")

# Gold answers in the contests' own formats (AIME: integers 000-999, often written with leading zeros;
# HMMT: closed forms, digit grouping with thin spaces) and completions that must / must not match.
EXACT = [
    ("33", r"\boxed{033}", True),  # AIME answer sheet format
    ("5", r"\boxed{005}", True),
    ("1000", r"\boxed{1\,000}", True),  # thin-space digit grouping
    ("1000000", r"\boxed{1\,000\,000}", True),
    ("2026", r"\boxed{2\;026}", True),
    ("12000", r"\boxed{12{,}000}", True),
    ("1000", "\\boxed{1\u2009000}", True),  # Unicode thin space
    ("1000", r"\boxed{1\thinspace 000}", True),
    ("1000", r"\boxed{1\,001}", False),
    (r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}", True),
    (r"\frac{3}{4}", r"\boxed{0.75}", True),  # a decimal that is exactly the value
    (r"\frac{\sqrt{2}}{2}", r"\boxed{0.707107}", False),  # near-misses to 6 digits: wrong in an exact contest
    (r"\pi", r"\boxed{3.141593}", False),
    (r"2\sqrt{3}", r"\boxed{3.464102}", False),
    (r"\frac{1}{3}", r"\boxed{0.333333}", False),
    (r"\frac{9\sqrt{23}}{23}", r"\boxed{1.876630}", False),
    (r"\frac{9\sqrt{23}}{23}", r"\boxed{\frac{9}{\sqrt{23}}}", True),
]


@pytest.mark.parametrize("gold,completion,right", EXACT)
def test_exact_answers_in_the_contests_formats(gold, completion, right):
    scored = math_answer.score_boxed(gold, f"Hence {completion}.")
    assert scored.score == float(right), (gold, completion, scored)


@pytest.mark.parametrize(
    "latex,normal",
    [(r"1\,000", "1000"), (r"1\,000\,000", "1000000"), (r"1~000", "1000"), (r"1{,}000", "1000"), (r"1\!000", "1000"),
     (r"\frac{1}{2}\,\text{cm}", r"\frac{1}{2} \text{cm}"), (r"a\hspace{1em}b", "a b"), (r"12\,34", "12 34")],
)
def test_latex_spacing_is_normalised(latex, normal):
    assert math_answer.normalize_spacing(latex) == normal
