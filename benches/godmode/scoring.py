"""Grading a godmode answer against the reference: numbers within tolerance, lists, text.

Numbers: the first number in the answer (commas, $ and % removed) must lie within the question's
absolute tolerance of the reference. A question stated in percent answered with the ratio (or the
other way round) is wrong, and the result says which convention the answer matched, so a comparison
can tell "forgot to multiply by 100" from "computed something else".
Lists: comma-separated items, compared as sets unless the question says the order matters.
Text: compared case-insensitively, with quotes, surrounding punctuation and extra spaces removed.
"""

from __future__ import annotations

import re
from typing import Any

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> float | None:
    cleaned = text.replace(",", "").replace("$", "").replace("\u2212", "-")
    match = _NUMBER.search(cleaned)
    return float(match.group(0)) if match else None


def normalize_text(text: str) -> str:
    text = text.strip(" \t\n`*\"'.")  # markdown emphasis, quotes, a closing full stop
    return re.sub(r"\s+", " ", text).lower()


def _items(text: str) -> list[str]:
    text = text.strip().strip("[]")
    return [normalize_text(part) for part in re.split(r"[,;]", text) if normalize_text(part)]


def score_answer(answer: str, reference: str, meta: dict[str, Any]) -> tuple[bool, str | None]:
    """(correct, convention matched): "stated", "ratio" or "percent" for numbers, else None."""
    kind = meta["kind"]
    if kind == "number":
        value, target = parse_number(answer), parse_number(reference)
        if value is None or target is None:
            return False, None
        tol = float(meta["tolerance"]) + 1e-9 * max(1.0, abs(target))
        if abs(value - target) <= tol:
            return True, "stated"
        unit = meta.get("unit") or ""
        if unit == "percent" and abs(value * 100 - target) <= max(tol, 0.005 * abs(target)):
            return False, "ratio"  # answered as a ratio where a percent was asked
        if unit == "ratio" and abs(value / 100 - target) <= max(tol, 0.005 * abs(target)):
            return False, "percent"
        return False, None
    if kind == "list":
        got, want = _items(answer), _items(reference)
        same = got == want if meta.get("ordered") else sorted(set(got)) == sorted(set(want)) and len(got) == len(set(got))
        return same, None
    return normalize_text(answer) == normalize_text(reference), None
