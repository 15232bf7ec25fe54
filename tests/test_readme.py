"""The README stays true: its exit-code table is engine.errors.ExitCode, and its demo block is what
grading the committed demo candidate against the committed baseline prints.

The demo block is generated: `python tests/test_readme.py --write` rewrites it from
tests/fixtures/demo-rtn-int3 (the candidate run of `make demo`) and baselines/smollm2-135m/smoke-nothink-s0.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEMO_BASELINE = ROOT / "baselines" / "smollm2-135m" / "smoke-nothink-s0"
DEMO_CANDIDATE = ROOT / "tests" / "fixtures" / "demo-rtn-int3"
START = re.compile(r"<!-- demo-output:start[^\n]*-->\n")
END = "<!-- demo-output:end -->"


def demo_output() -> str:
    """`compare` of the committed demo runs, as `make demo` prints it (paths as the demo names them)."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(DEMO_BASELINE, Path(tmp, "baselines/smollm2-135m/smoke-nothink-s0"))
        shutil.copytree(DEMO_CANDIDATE, Path(tmp, "runs/demo-rtn-int3"))
        proc = subprocess.run(
            [sys.executable, "-m", "engine", "compare", "baselines/smollm2-135m/smoke-nothink-s0", "runs/demo-rtn-int3"],
            cwd=tmp, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    # The runs' paths as the demo names them (relative to the checkout), not this temporary copy's.
    lines = proc.stdout.replace(str(Path(tmp).resolve()) + "/", "").replace(tmp + "/", "").rstrip("\n").splitlines()
    # The table, then "...", then the verdict and its reasons (the method paragraph is left out).
    head = lines[: lines.index("")] if "" in lines else lines
    verdict = next((i for i, line in enumerate(lines) if line.startswith("verdict")), len(lines))
    tail = [line for line in lines[verdict:] if not line.startswith("method:")]
    shown = head + (["...  (per bench: flips, per category, canaries)"] if verdict > len(head) else []) + tail
    return "```\n" + "\n".join(shown) + "\n```\n"


def readme_demo_block(text: str) -> str:
    start = START.search(text)
    assert start and END in text, "README.md lost its demo-output markers"
    return text[start.end() : text.index(END)]


def write() -> None:
    text = README.read_text()
    start = START.search(text)
    README.write_text(text[: start.end()] + demo_output() + text[text.index(END) :])


def exit_code_rows(text: str) -> dict[int, str]:
    table = text.split("<!-- exit-codes", 1)[1].split("\n\n", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (\w+) \|", table, re.M)}


def test_exit_code_table_is_the_exit_code_enum():
    from engine.errors import ExitCode

    assert exit_code_rows(README.read_text()) == {int(c): c.name for c in ExitCode}


def test_every_verdict_word_is_explained():
    text = README.read_text()
    for word in ("PASS", "EQUIVALENT", "INCONCLUSIVE", "DEGRADED", "INCOMPLETE", "NOT COMPARABLE", "INVALID", "GATE FAILED"):
        assert re.search(rf"^\| `(⚠ )?{word}` \|", text, re.M), word


def test_demo_block_is_what_the_committed_demo_prints():
    assert readme_demo_block(README.read_text()) == demo_output(), "regenerate it: python tests/test_readme.py --write"


def test_readme_links_resolve_or_are_announced_docs():
    # Other topics' docs land with their own changes; every link must point at docs/ or exist.
    for link in re.findall(r"\]\(([^)#]+)", README.read_text()):
        assert link.startswith("docs/") or (ROOT / link).exists(), link
    for doc in ("cli", "statistics", "benches", "probe", "determinism-and-scale", "records", "architecture", "measurements"):
        assert (ROOT / "docs" / f"{doc}.md").is_file(), doc


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
        print(f"rewrote the demo block of {README}")
    else:
        print(demo_output())
