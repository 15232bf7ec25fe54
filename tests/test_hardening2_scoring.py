"""Issue 29, item 6: the math scorer's last misreadings, one class at a time (each class holds right
and wrong answers, in several spellings, labelled by their value), and gsm8k's documented
differences from lm-eval's gsm8k scoring, one test each."""

from __future__ import annotations

import re

import pytest

from benches import Item, gsm8k, math_answer

# (gold, boxed completion, right?) per class of misreading. Labels are the values' equality (checked
# with sympy by hand: 123 456 = 123456, 12.5 % of ... etc.), not what any scorer says.
CLASSES = {
    "digit groups, any space": [
        ("123456", r"\boxed{123 456}", True),  # an ordinary space: invisible in math mode
        ("123456", "\\boxed{123\\ 456}", True),
        ("123456", "\\boxed{123\u00a0456}", True),  # no-break space
        ("123456", "\\boxed{123\u2009456}", True),  # thin space
        ("123456", "\\boxed{123\u202f456}", True),  # narrow no-break space (French grouping)
        ("123456", "\\boxed{123\u2002456}", True),  # en space
        ("1000", r"\boxed{1 000}", True),  # math-verify alone: 1 * 0 = 0
        ("1234567", r"\boxed{1 234 567}", True),
        ("1234567", r"\boxed{1\,234\,567}", True),
        ("3.141592", r"\boxed{3.141 592}", True),  # grouped decimals (ISO 80000)
        ("123457", r"\boxed{123 456}", False),
        ("0", r"\boxed{1 000}", False),
        ("579", r"\boxed{123 456}", False),  # never a sum of the groups
        ("1000", r"\boxed{10 00}", False),  # not a grouping: two numbers, not 1000
    ],
    "percent": [
        ("25", r"\boxed{25\%}", True),
        ("25", r"\boxed{25 \%}", True),
        ("25", r"\boxed{25\text{ percent}}", True),
        ("25", r"\boxed{\text{25 percent}}", True),
        ("12.5", r"\boxed{12.5\%}", True),  # a decimal percent (math-verify alone: wrong)
        (r"\frac{1}{8}", r"\boxed{12.5\%}", True),  # the fraction the percent stands for
        ("0.125", r"\boxed{12.5\%}", True),
        ("30", r"\boxed{3\%}", False),
        ("12", r"\boxed{12.5\%}", False),
        (r"\frac{1}{4}", r"\boxed{20\%}", False),
    ],
    "dash as minus": [
        ("-5", "\\boxed{\u20135}", True),  # en dash
        ("-5", "\\boxed{\u22125}", True),  # minus sign
        ("-5", "\\boxed{\u20125}", True),  # figure dash
        (r"-\frac{1}{2}", "\\boxed{\u2013\\frac{1}{2}}", True),
        ("-7", "\\boxed{3 \u2013 10}", True),
        ("5", "\\boxed{\u20135}", False),
        ("-5", "\\boxed{\u20134}", False),
    ],
    "unit words in text": [
        ("12", r"\boxed{\text{12 apples}}", True),
        ("12", r"\boxed{\text{12 square units}}", True),
        ("12", r"\boxed{\textbf{12 cm}}", True),
        ("12", r"\boxed{\mathrm{12\ cm}}", True),
        ("12", r"\boxed{\text{12 cm}^2}", True),  # the exponent belongs to the unit
        ("12", r"\boxed{12\,\text{cm}^2}", True),
        ("7.5", r"\boxed{\text{7.5 dollars}}", True),
        ("13", r"\boxed{\text{12 apples}}", False),
        ("144", r"\boxed{\text{12 cm}^2}", False),  # never 12 squared
    ],
    "answer across boxes": [
        ("3, 5", r"The roots are \boxed{3} and \boxed{5}.", True),
        ("3, 5", r"$x = \boxed{3}$, $\boxed{5}$", True),
        ("(2, 7)", r"\boxed{2}, \boxed{7}", True),
        ("5", r"\boxed{3} and \boxed{5}", False),  # a hedge between two answers is wrong
        ("2", r"first \boxed{1}, then corrected: \boxed{2}", True),  # words between: the last box counts
        ("1, 2", r"first \boxed{1}, then corrected: \boxed{2}", False),
    ],
}


@pytest.mark.parametrize("klass", sorted(CLASSES))
def test_math_answers_of_each_class_are_read_as_their_value(klass):
    wrong = [
        (gold, text, right, scored.extra.get("parsed"))
        for gold, text, right in CLASSES[klass]
        if (scored := math_answer.score_boxed(gold, f"Hence {text}")).score != float(right)
    ]
    assert not wrong, wrong


def test_spacing_rules_on_their_own():
    assert math_answer.normalize_answer("1 000 \\text{ m}") == "1000"
    assert math_answer.normalize_answer("2 \\times 3") == "2 \\times 3"  # no digits on both sides: untouched
    assert math_answer.normalize_answer("12 34") == "12 34"  # not a group of three
    assert math_answer.percent_readings("12.5\\%") == ["12.5", r"\frac{12.5}{100}"]
    assert math_answer.percent_readings("12.5") == ["12.5"]


# ---- gsm8k vs lm-eval's gsm8k task ----------------------------------------------------------------
# lm-eval (lm_eval/tasks/gsm8k/gsm8k.yaml, metadata version 3.0): filter "strict-match" = regex
# `#### (\-?[0-9\.\,]+)`, FIRST match; "flexible-extract" = regex `(-?[$0-9.,]{2,})|(-?[0-9]+)`,
# group_select -1 (the LAST match), first non-empty group; exact_match with ignore_case and
# regexes_to_ignore [",", "\$", "(?s).*#### ", "\.$"] applied to prediction and reference alike.


def lm_eval_extract(text: str, strict: bool) -> str:
    """lm-eval's RegexFilter + take_first, as configured in gsm8k.yaml."""
    if strict:
        found = re.findall(r"#### (\-?[0-9\.\,]+)", text)
        return found[0].strip() if found else "[invalid]"
    found = re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", text)
    if not found:
        return "[invalid]"
    return next((g for g in found[-1] if g), "[invalid]").strip()


def lm_eval_exact_match(prediction: str, reference: str) -> bool:
    for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"):
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return prediction.lower() == reference.lower()


def _both(text: str, target: str) -> tuple[float, float, bool, bool]:
    """(our flexible score, our strict score, lm-eval flexible, lm-eval strict) for one completion."""
    ours = gsm8k.score(Item(id="g", question="q", target=target), text)
    reference = f"reasoning...\n#### {target}"
    return (
        ours.score,
        ours.extra["strict_score"],
        lm_eval_exact_match(lm_eval_extract(text, strict=False), reference),
        lm_eval_exact_match(lm_eval_extract(text, strict=True), reference),
    )


# Each documented difference (gsm8k.LM_EVAL_DIFFERENCES): a completion where the two disagree, and
# which way. (ours flexible, ours strict, lm-eval flexible, lm-eval strict)
DIFFERENCES = {
    "trailing zeros": ("So she pays 18.00 dollars.\n#### 18.00", "18", (1.0, 1.0, False, False)),
    "leading zeros": ("The answer is 018.\n#### 018", "18", (1.0, 1.0, False, False)),
    "bare leading decimal point": ("That leaves .5 of the pie.\n#### .5", "0.5", (1.0, 1.0, False, False)),
    "trailing punctuation": ("#### 18..", "18", (1.0, 1.0, False, False)),
    "last #### wins": ("#### 12\nWait, I made an error.\n#### 18", "18", (1.0, 1.0, True, False)),
    "numbers only": ("#### 18\nDone ...", "18", (1.0, 1.0, False, True)),
    "negative zero": ("#### -0", "0", (1.0, 1.0, False, False)),
}


def test_every_documented_difference_has_a_case():
    assert set(DIFFERENCES) == set(gsm8k.LM_EVAL_DIFFERENCES)


@pytest.mark.parametrize("name", sorted(DIFFERENCES))
def test_gsm8k_differs_from_lm_eval_only_as_documented(name):
    text, target, expected = DIFFERENCES[name]
    assert _both(text, target) == expected


@pytest.mark.parametrize(
    "text,target",
    [("#### 18", "18"), ("She has $1,000 left.\n#### $1,000", "1000"), ("#### 18.", "18"), ("#### -3", "-3"),
     ("so 5 + 13 = 18", "18"), ("#### 17", "18"), ("It is 1.5 hours.", "1.5"), ("no number", "18")],
)
def test_gsm8k_agrees_with_lm_eval_elsewhere(text, target):
    ours_flex, ours_strict, ref_flex, ref_strict = _both(text, target)
    assert (ours_flex == 1.0, ours_strict == 1.0) == (ref_flex, ref_strict)
