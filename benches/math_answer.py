"""Final-answer math (aime_2026, hmmt_feb_2026): boxed-answer extraction, equivalence, majority vote.

Extraction follows MathArena: the content of the last `\\boxed{...}` / `\\fbox{...}` with balanced braces
(boxes nested inside it are unwrapped); no box means no answer, which is wrong. One answer split across
boxes: boxes separated only by commas, semicolons, `and`, `&`, `\\quad` or spacing (`\\boxed{3}, \\boxed{5}`)
are ONE answer, their contents joined by ", " ("3, 5": right for a gold "3, 5", wrong for a gold "5", as
a hedge between two answers should be); boxes with other words between them are separate answers, the
last one counts (`\\boxed{1}, then corrected: \\boxed{2}` is 2).

Equivalence is math-verify's (`verify(parse(gold), parse(answer))`, gold first: it is not symmetric),
made exact for these exact-answer contests: by default math-verify calls a decimal equal to a closed
form when they agree to 6 decimal places (`0.707107` for `\\frac{\\sqrt{2}}{2}`), so a wrong answer that
is merely close would score. Here a decimal must agree to FLOAT_ROUNDING = 12 decimal places, and a
symbolic difference must vanish at NUMERIC_PRECISION = 50 significant digits. Before parsing, an answer is
normalised by stated rules (`normalize_answer`):
- digit groups: a digit, then ANY space (an ordinary space, which is invisible in LaTeX math mode,
  `\\ `, `\\,`, `\\;`, `\\:`, `\\!`, `~`, `{,}`, `\\thinspace`..., or any Unicode space: no-break,
  thin, narrow no-break, en/em spaces), then exactly three digits not followed by a digit: one number
  (`123 456` is 123456, `1 000` is 1000; math-verify alone reads them as 123 + 456 and 1 * 0).
  Other spacing commands become a plain space;
- dashes: the minus sign U+2212, the en dash U+2013, the figure dash U+2012 and the hyphens U+2010,
  U+2011, U+FE63, U+FF0D are a minus sign `-`;
- units: a `\\text{}` (also `\\textrm`, `\\textbf`, `\\mathrm`, `\\mbox`, `\\textnormal`) holding a number and then
  words (`\\text{12 square units}`) is the number; a text group of words alone after a number
  (`12\\text{ cm}^2`) is dropped with its exponent;
- percent: an answer `p%` (`p\\%`, `p \\text{\\%}`, `p percent`) is right when p or p/100 equals the gold
  answer (the question asks for a percent, or for the fraction it stands for): `12.5\\%` is right for 12.5
  and for 0.125, `3\\%` is wrong for 30.
math-verify bounds its own time with SIGALRM, which only works in a main thread, and sympy can still
hang inside C (`\\boxed{10^{10^{10}}}` never returns). So every check runs in a small pool of worker
processes (plain `python -c` children), in their main thread where math-verify's own 5 s alarms work,
and a check that outlives CHECK_TIMEOUT_S has its worker killed and replaced and counts as not
equivalent. The runner scores from several threads at once: the pool hands each worker to one thread
at a time.

maj@k: the samples of an item vote; answers fall into equivalence classes (each compared with the
class's first answer), a sample without an answer votes for "no answer"; the largest class wins, ties
going to the class seen first; the item is right iff the winning answer is right.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path
from queue import Queue
from typing import Any

import msgspec

from benches import Item, Scored, check_unique_ids, data
from engine.errors import UserError

# Version of this module's extraction, equivalence and vote keys: part of the contract of every bench
# that scores with it (BenchSpec.scoring_versions).
VERSION = "3"  # 3: digit groups with any space, dashes, unit words, percent, answers across boxes

CHECK_TIMEOUT_S = 20.0
FLOAT_ROUNDING = 12  # decimal places to which a decimal answer must match (math-verify's default: 6)
NUMERIC_PRECISION = 50  # significant digits at which a symbolic difference must vanish (default 15)
WORKER_MEMORY_MB = 2048  # sympy building a huge integer fails with MemoryError instead of eating the box
INNER_TIMEOUT_S = 5  # math-verify's own alarm per parse/compare, inside a worker

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


# What may stand between boxes that make up one answer: separators, never words.
_BOX_GAP = re.compile(r"(?:\s|[,;&$]|\\[,;:! ]|\\q?quad(?![a-zA-Z])|\band\b|\\text\{\s*(?:and|,|;)?\s*\})*")


def last_boxed(text: str) -> str | None:
    """The final answer: the last complete \\boxed{...} or \\fbox{...} (inner boxes unwrapped) together with
    the boxes just before it that only separators part from it (joined by ", "); None if no box."""
    boxes: list[tuple[int, int]] = []  # (start of the command, index of the closing brace)
    pos = 0
    while match := _BOX.search(text, pos):
        end = _closing_brace(text, match.end())
        if end is None:  # never closed (cut off): an earlier complete box still counts
            pos = match.end()
            continue
        boxes.append((match.start(), end))
        pos = end + 1
    if not boxes:
        return None
    group = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if not _BOX_GAP.fullmatch(text, box[1] + 1, group[0][0]):
            break
        group.insert(0, box)
    contents = [_unwrap_boxes(text[_BOX.match(text, start).end() : end]).strip() for start, end in group]
    return ", ".join(contents)


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the brace closing the one opened just before `start`; escaped braces (\\{) do not count."""
    depth = 1
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


def _unwrap_boxes(text: str) -> str:
    while match := _BOX.search(text):
        end = _closing_brace(text, match.end())
        if end is None:
            break
        text = text[: match.start()] + text[match.end() : end] + text[end + 1 :]
    return text


class Check(msgspec.Struct, frozen=True):
    equal: bool
    parsed: str | None  # how math-verify read the answer (None: it could not parse it)
    timed_out: bool = False


# ---- the checker pool ----------------------------------------------------------------------------

# A worker: a plain `python -c` child answering one JSON line per request ([gold, answer] ->
# [equal, parsed]). Not multiprocessing: its spawn re-imports the parent's __main__, which a harness
# started from a script, a REPL or stdin may not have.
_WORKER = r"""
import json, logging, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
# Replies get their own copy of stdout; whatever a library prints goes where stderr goes (nowhere).
replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
logging.disable(logging.WARNING)  # math-verify logs every timeout and parse failure
from math_verify import parse, verify
print("ready", file=replies, flush=True)
for line in sys.stdin:
    gold, answer = json.loads(line)
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=TIMEOUT)
        answer_parsed = parse(f"${answer}$", parsing_timeout=TIMEOUT)
        equal = verify(gold_parsed, answer_parsed, float_rounding=ROUNDING, numeric_precision=PRECISION, timeout_seconds=TIMEOUT)
        reply = [bool(equal), str(answer_parsed[0]) if answer_parsed else None]
    except Exception:  # MemoryError, sympy internals: not shown equal
        reply = [False, None]
    print(json.dumps(reply), file=replies, flush=True)
"""


class _Worker:
    def __init__(self) -> None:
        code = (
            _WORKER.replace("MEMORY", str(WORKER_MEMORY_MB << 20))
            .replace("TIMEOUT", str(INNER_TIMEOUT_S))
            .replace("ROUNDING", str(FLOAT_ROUNDING))
            .replace("PRECISION", str(NUMERIC_PRECISION))
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        # Importing sympy takes a second or two: wait for it here, not inside a check's time budget.
        if self._read_line(120.0) != b"ready\n":
            self.kill()
            raise RuntimeError("the math-verify worker did not start (is math-verify installed?)")

    def _read_line(self, timeout_s: float) -> bytes | None:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout_s)[0]:
            return None
        return self.proc.stdout.readline()

    def ask(self, gold: str, answer: str, timeout_s: float) -> tuple[bool, str | None] | None:
        """The reply, or None when the worker overran or died (it is then unusable)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps([gold, answer]).encode() + b"\n")
            self.proc.stdin.flush()
            line = self._read_line(timeout_s)
        except OSError:
            return None
        if not line:
            return None
        equal, parsed = json.loads(line)
        return bool(equal), parsed

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


# Up to WORKERS checks at once; a None slot starts its worker on first use, so a run that never scores
# math starts no process.
WORKERS = max(1, min(4, os.cpu_count() or 1))
_pool: Queue[_Worker | None] = Queue()
for _slot in range(WORKERS):
    _pool.put(None)


def _take_worker() -> _Worker:
    worker = _pool.get()
    if worker is not None:
        return worker
    try:
        return _Worker()
    except BaseException:
        _pool.put(None)
        raise


# Spacing commands of LaTeX and Unicode spaces that may group digits: `1\,000`, `1~000`, `1{,}000`.
_LATEX_SPACE = r"(?:\\[,;:! ]|\\(?:thinspace|medspace|thickspace|enspace|nobreakspace)(?![a-zA-Z]) ?|~|\{,\})"
_UNICODE_SPACE = "[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
_DIGIT_GROUP = re.compile(rf"(?<=\d)(?:{_LATEX_SPACE}|{_UNICODE_SPACE}| )+(?=\d{{3}}(?!\d))")
_OTHER_SPACE = re.compile(rf"{_LATEX_SPACE}|{_UNICODE_SPACE}|\\q?quad(?![a-zA-Z])|\\hspace\*?\{{[^{{}}]*\}}")
_DASH = re.compile("[\u2010\u2011\u2012\u2013\u2212\ufe63\uff0d]")
_TEXT = r"\\(?:text|textrm|textbf|textnormal|mathrm|mbox)\s*"
_WORDS = r"[A-Za-z][A-Za-z.\-/ ]*"
_NUMBER = r"-?\d+(?:\.\d+)?"
_NUMBER_IN_TEXT = re.compile(rf"{_TEXT}\{{\s*({_NUMBER})\s*(?:{_WORDS})?\}}(?:\^(?:\{{[^{{}}]*\}}|\d))?")
_UNIT_AFTER_NUMBER = re.compile(rf"(?<=\d)(\s*){_TEXT}\{{\s*{_WORDS}\}}(?:\^(?:\{{[^{{}}]*\}}|\d))?\s*$")
_PERCENT = re.compile(rf"^\s*({_NUMBER})\s*(?:\\?%|\\text\{{\s*\\?%\s*\}}|\\text\{{\s*percent\s*\}}|percent)\s*$")


def normalize_spacing(latex: str) -> str:
    """Join digit groups separated by any space; any other spacing command becomes one space."""
    latex = _DIGIT_GROUP.sub("", latex)
    return _OTHER_SPACE.sub(lambda m: "" if m.group() == "\\!" else " ", latex)


def normalize_answer(latex: str) -> str:
    """The rules of the module docstring, percent aside (see percent_readings): spacing and digit
    groups, dashes as minus, unit words dropped from a number."""
    latex = normalize_spacing(_DASH.sub("-", latex))
    latex = _NUMBER_IN_TEXT.sub(lambda m: m[1], latex)
    return _UNIT_AFTER_NUMBER.sub("", latex).strip()


def percent_readings(answer: str) -> list[str]:
    """`p%` -> [p, p/100] (either may be what the question asked for); any other answer -> [answer]."""
    match = _PERCENT.match(answer)
    if match is None:
        return [answer]
    return [match[1], rf"\frac{{{match[1]}}}{{100}}"]


def check(gold: str, answer: str, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """Is `answer` equivalent to `gold` (both LaTeX without $)? Thread-safe, bounded in time, exact
    up to the documented FLOAT_ROUNDING / NUMERIC_PRECISION. A percent answer is right under either
    of its readings (percent_readings)."""
    gold = normalize_answer(gold)
    checks = [_check_cached(gold, reading, timeout_s) for reading in percent_readings(normalize_answer(answer))]
    return next((c for c in checks if c.equal), checks[0])


@functools.lru_cache(maxsize=65536)
def _check_cached(gold: str, answer: str, timeout_s: float) -> Check:
    worker = _take_worker()
    reply = worker.ask(gold, answer, timeout_s)
    if reply is None:
        worker.kill()
        _pool.put(None)  # a fresh worker replaces it on next use
        return Check(equal=False, parsed=None, timed_out=True)
    _pool.put(worker)
    return Check(equal=reply[0], parsed=reply[1])


# ---- scoring and voting --------------------------------------------------------------------------


def score_boxed(gold: str, text: str) -> Scored:
    """Score one completion's final text (after any reasoning) against the gold answer."""
    boxed = last_boxed(text)
    if boxed is None:
        return Scored(answer=None, score=0.0, extra={"boxed": False})
    verdict = check(gold, boxed)
    extra: dict[str, Any] = {"parsed": verdict.parsed}
    if verdict.timed_out:
        extra["check_timed_out"] = True
    # maj@k groups samples by this key (engine/pairing.py): every answer equivalent to the gold answer
    # in one class; other answers by how math-verify read them, so "0.5" and "\frac{1}{2}" vote together.
    vote_key = "=gold" if verdict.equal else f"~{verdict.parsed if verdict.parsed is not None else boxed.strip()}"
    return Scored(answer=boxed, score=float(verdict.equal), extra=extra, vote_key=vote_key)


# ---- loading the MathArena files -----------------------------------------------------------------

FIELDS = {"problem_idx": int, "problem": str, "answer": str}


def load_matharena(bench: str, data_dir: Path | None, hub: data.HubFile, local_files: tuple[str, ...]) -> list[Item]:
    """Rows `problem_idx, problem, answer` (MathArena's fields) from DIR/<bench>/, else the pinned hub file."""
    if importlib.util.find_spec("math_verify") is None:  # before any engine starts, not at the first score
        raise UserError(f"{bench}: answers are checked with math-verify, which is not installed: pip install math-verify")
    rows, source = data.load_rows(bench, data_dir, hub, local_files)
    rows = data.check_fields(rows, source, FIELDS)
    items = [Item(id=str(row["problem_idx"]), question=row["problem"], target=row["answer"].strip()) for row in rows]
    return check_unique_ids(items, source)
