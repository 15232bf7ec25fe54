"""aime_2026 / hmmt_feb_2026: boxed extraction, math-verify equivalence on every hmmt answer shape,
maj@4 voting, truncation inside reasoning, the bounded checker, and the loaders."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from conftest import need_shared_data

from benches import Item, aime_2026, hmmt_feb_2026, math_answer, split_reasoning
from engine.errors import UserError
from engine.pairing import majority_value
from engine.records import ItemRecord

pytest.importorskip("math_verify", reason="math-verify is not installed (pip install math-verify)")


@pytest.mark.parametrize(
    "text,boxed",
    [
        (r"so the answer is \boxed{277}.", "277"),
        (r"first \boxed{1}, then corrected: \boxed{2}", "2"),
        (r"\boxed{\frac{9\sqrt{3}}{4}}", r"\frac{9\sqrt{3}}{4}"),
        (r"\fbox{42}", "42"),
        (r"\boxed {7}", "7"),
        (r"\boxed{x = \boxed{5}}", "x = 5"),  # inner boxes unwrapped (MathArena)
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"\boxed{12} and then a cut-off \boxed{\frac{1}{", "12"),  # an unclosed last box falls back
        ("no box at all: 277", None),
        (r"\boxed{", None),
    ],
)
def test_last_boxed(text, boxed):
    assert math_answer.last_boxed(text) == boxed


# Hand-written final answers for every answer shape in hmmt_feb_2026 (and aime's integers): gold,
# completions that must match, completions that must not.
SHAPES = {
    "integer": ("277", [r"\boxed{277}", r"\boxed{0277}", r"\boxed{277.0}"], [r"\boxed{278}", r"\boxed{27}"]),
    "fraction": (r"\frac{3}{4}", [r"\boxed{\dfrac{3}{4}}", r"\boxed{0.75}", r"\boxed{3/4}", r"\boxed{\frac{6}{8}}"], [r"\boxed{\frac{4}{3}}"]),
    "radical": (r"\frac{9\sqrt{3}}{4}", [r"\boxed{\frac{9}{4}\sqrt{3}}", r"\boxed{\frac{\sqrt{243}}{4}}"], [r"\boxed{\frac{9\sqrt{2}}{4}}"]),
    "sum with radical": (r"\frac{1+\sqrt{5}}{2}", [r"\boxed{\frac{\sqrt{5}+1}{2}}"], [r"\boxed{\frac{\sqrt{5}-1}{2}}"]),
    "degree": (r"30^\circ", [r"\boxed{30^\circ}", r"\boxed{30^{\circ}}", r"\boxed{30}"], [r"\boxed{31^\circ}", r"\boxed{60^\circ}"]),
    "power": (r"2^{25} \cdot 3^{12}", [r"\boxed{3^{12}\cdot 2^{25}}", r"\boxed{17832200896512}"], [r"\boxed{2^{12} \cdot 3^{25}}"]),
    "list": ("1, 3, 5", [r"\boxed{5, 3, 1}", r"\boxed{1,3,5}", r"\boxed{\{1, 3, 5\}}"], [r"\boxed{1, 3}", r"\boxed{1, 3, 6}"]),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_equivalence_for_every_answer_shape(shape):
    gold, right, wrong = SHAPES[shape]
    for completion in right:
        scored = math_answer.score_boxed(gold, f"Working...\nTherefore {completion}.")
        assert scored.score == 1.0, (shape, completion, scored)
    for completion in wrong:
        scored = math_answer.score_boxed(gold, f"Therefore {completion}.")
        assert scored.score == 0.0, (shape, completion, scored)
        assert scored.answer == math_answer.last_boxed(completion)


def test_no_box_is_wrong_with_no_answer():
    scored = math_answer.score_boxed("277", "The answer is 277.")
    assert (scored.answer, scored.score, scored.extra) == (None, 0.0, {"boxed": False})


def test_hung_check_is_killed_and_the_pool_recovers():
    math_answer.check("1", "1")  # a started worker: the time below is the check's, not an import
    started = time.monotonic()
    verdict = math_answer.check(r"10^{10^{10}}", "5", timeout_s=2.0)  # sympy computes this integer in C
    assert verdict.timed_out and not verdict.equal
    assert time.monotonic() - started < 10
    assert math_answer.check(r"\frac{1}{2}", "0.5").equal


def test_checks_from_many_threads():
    pairs = [(str(n), f"{n}.0" if n % 2 else str(n + 1)) for n in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = list(pool.map(lambda p: math_answer.check(*p).equal, pairs))
    assert verdicts == [n % 2 == 1 for n in range(40)]


def _records(answers: list[str | None], gold: str) -> list[ItemRecord]:
    """One item's samples as the runner records them: score and vote key from score_boxed."""
    records = []
    for sample, answer in enumerate(answers):
        scored = math_answer.score_boxed(gold, "no box" if answer is None else f"\\boxed{{{answer}}}")
        records.append(
            ItemRecord(
                item_id="1", sample=sample, seed=100 + sample, prompt_hash="h", completion="", prompt_tokens=1,
                completion_tokens=1, finish_reason="stop", truncated=answer is None, answer=scored.answer,
                score=scored.score, latency_s=0.0, vote_key=scored.vote_key,
            )
        )
    return records[::-1]  # voting must not depend on the order records were written in


def test_benches_vote_by_majority():
    assert aime_2026.PER_ITEM == hmmt_feb_2026.PER_ITEM == "majority"
    assert aime_2026.SCORING_VERSIONS == {"math_answer": math_answer.VERSION}


def test_majority_by_equivalence_classes():
    records = _records([r"\frac{1}{2}", "7", "0.5", "3"], gold="0.5")
    assert len({r.vote_key for r in records}) == 3  # 1/2 and 0.5 vote together
    assert majority_value(records) == 1.0


def test_wrong_answers_spelled_differently_vote_together():
    records = _records([r"\frac{1}{3}", "5", "1/3", "7"], gold="5")
    assert majority_value(records) == 0.0


def test_majority_wrong_even_when_one_sample_is_right():
    records = _records(["12", "12", "5", "12"], gold="5")
    assert majority_value(records) == 0.0
    assert sum(r.score for r in records) / len(records) == 0.25  # avg@4 still sees the one right sample


def test_majority_tie_is_the_mean_of_the_tied_answers():
    # Not "whatever sample 0 said": the expected value of breaking the tie at random.
    assert majority_value(_records(["5", "9", "9", "5"], gold="5")) == 0.5
    assert majority_value(_records(["9", "5", "5", "9"], gold="5")) == 0.5


def test_no_answer_votes_for_no_answer():
    # Blanks do not abstain (one answer and three blanks is not maj@4 = 1): they vote "no answer", scored 0.
    assert majority_value(_records([None, "5", None, "6"], gold="5")) == 0.0  # no answer 2 votes, 5 and 6 one each
    assert majority_value(_records([None, "5", "5", None], gold="5")) == 0.5  # no answer vs 5, two votes each
    assert majority_value(_records([None, "5", "5", "5"], gold="5")) == 1.0
    assert majority_value(_records([None, None, None, "6"], gold="5")) == 0.0
    assert majority_value(_records([None, None, None, None], gold="5")) == 0.0


def test_truncated_in_reasoning_is_never_parsed():
    gold = "277"
    cut = "<think>Let me try: maybe \\boxed{277}? Checking again"
    reasoning, answer_text = split_reasoning(cut, think=True, truncated=True)
    assert answer_text is None  # the runner scores this 0 and records it truncated
    finished = "<think>draft \\boxed{100}</think>The answer is \\boxed{277}."
    _, answer_text = split_reasoning(finished, think=True, truncated=False)
    assert math_answer.score_boxed(gold, answer_text).score == 1.0
    only_in_reasoning = "<think>it is \\boxed{277}</think>I am not sure."
    _, answer_text = split_reasoning(only_in_reasoning, think=True, truncated=False)
    assert math_answer.score_boxed(gold, answer_text).answer is None


def test_bench_modules_take_four_samples_and_think():
    for bench in (aime_2026, hmmt_feb_2026):
        assert bench.SAMPLES == 4 and bench.THINK is True
        item = Item(id="1", question="Compute $1+1$.", target="2")
        content = bench.messages(item, True)[0]["content"]
        assert content.startswith("Put your final answer within \\boxed{}.") and content.endswith("Compute $1+1$.")
    assert "between 0 and 999" in aime_2026.INSTRUCTION and "999" not in hmmt_feb_2026.INSTRUCTION


def test_real_aime_file_loads_30_rows():
    path = need_shared_data("aime_2026/aime_2026.jsonl")
    items = aime_2026.load(path.parent.parent)
    assert len(items) == 30 and [i.id for i in items] == [str(n) for n in range(1, 31)]
    assert items[0].target == "277" and all(0 <= int(i.target) <= 999 for i in items)


def test_hmmt_loads_a_local_file_and_names_bad_rows(tmp_path):
    folder = tmp_path / "hmmt_feb_2026"
    folder.mkdir()
    rows = [
        {"problem_idx": 1, "problem": "Find x.", "answer": r"\frac{3}{4}"},
        {"problem_idx": 2, "problem": "Find y.", "answer": "1, 3, 5"},
    ]
    (folder / "hmmt_feb_2026.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    items = hmmt_feb_2026.load(tmp_path)
    assert [(i.id, i.target) for i in items] == [("1", r"\frac{3}{4}"), ("2", "1, 3, 5")]
    (folder / "hmmt_feb_2026.jsonl").write_bytes(orjson.dumps({"problem_idx": 3, "problem": "Find z."}) + b"\n")
    with pytest.raises(UserError, match="row 1 has no field 'answer'"):
        hmmt_feb_2026.load(tmp_path)
