"""mmlu_pro, gpqa and tradequiz: prompts, extraction and scoring on hand-written completions, loading."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import benches
from benches import Item, gpqa, mmlu_pro, split_reasoning, tradequiz
from engine.errors import UserError


def grade(module, item: Item, completion: str, think: bool, truncated: bool) -> tuple[str | None, float]:
    """What the runner does with a completion: only the text after </think> reaches `score`."""
    _, answer_text = split_reasoning(completion, think, truncated)
    if answer_text is None:
        return None, 0.0
    scored = module.score(item, answer_text)
    return scored.answer, scored.score


# ---------------------------------------------------------------------------------------------- mmlu_pro

MMLU_ITEM = Item(
    id="1", question="q", target="C", category="physics", meta={"options": [f"opt{k}" for k in range(10)]}
)


@pytest.mark.parametrize(
    "text,answer,stage",
    [
        ("Let's think. Energy is conserved. The answer is (C).", "C", "answer_is"),
        ("so the answer is C", "C", "answer_is"),
        ("The answer is (D).", "D", "answer_is"),  # wrong
        # The reference takes the first "answer is", even when the model changes its mind.
        ("the answer is (A). Hmm, no: the answer is (C).", "A", "answer_is"),
        ("Reasoning...\nAnswer: C", "C", "answer_colon"),
        ("final answer: J", "J", "answer_colon"),
        ("Between B and C I pick C.", "C", "last_letter"),
        ("The Answer Is (C)", "C", "last_letter"),  # case-sensitive first stage, found at the last stage
        ("I cannot decide.", "I", "last_letter"),  # the reference's last standalone letter: "I"
        ("the answer is (K)", None, None),
        ("no letter here at all", None, None),
        ("", None, None),
    ],
)
def test_mmlu_pro_extraction_chain(text, answer, stage):
    scored = mmlu_pro.score(MMLU_ITEM, text)
    assert (scored.answer, scored.extra["extracted_by"]) == (answer, stage)
    assert scored.score == float(answer == "C")


def test_mmlu_pro_think_mode_reads_only_after_the_reasoning():
    closed = "<think>maybe the answer is (A)</think>\nThe answer is (C)."
    assert grade(mmlu_pro, MMLU_ITEM, closed, think=True, truncated=False) == ("C", 1.0)
    # Cut off inside the reasoning: wrong, never parsed (the last-letter stage would have found C).
    cut = "<think>options B and C look close, the answer is (C"
    assert grade(mmlu_pro, MMLU_ITEM, cut, think=True, truncated=True) == (None, 0.0)
    # No-think mode scores the whole completion.
    assert grade(mmlu_pro, MMLU_ITEM, "The answer is (C)", think=False, truncated=True) == ("C", 1.0)


def test_mmlu_pro_prompt_lists_lettered_options_and_the_format():
    content = mmlu_pro.messages(MMLU_ITEM, think=False)[0]["content"]
    assert "about physics" in content and '"The answer is (X)"' in content
    assert "\nA. opt0\n" in content and content.endswith("J. opt9")
    assert mmlu_pro.messages(MMLU_ITEM, think=True) == mmlu_pro.messages(MMLU_ITEM, think=False)


# ---------------------------------------------------------------------------------------------- gpqa

GPQA_HEADER = [
    "Pre-Revision Question", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
    "Incorrect Answer 3", "Record ID", "High-level domain", "Subdomain",
]  # fmt: skip
# Synthetic rows in the gated CSV's fields (GPQA itself never goes into the repository).
GPQA_ROWS = [
    ["", "What is 3 * 7?", "21", "24", "18", "27", "recAAA", "Math", "arith"],
    ["", "Which planet is largest?", " Jupiter", "Mars", "Venus", "Mercury ", "recBBB", "Physics", "astro"],
    ["", "Water's chemical formula?", "H2O", "CO2", "O2", "NaCl", "recCCC", "Chemistry", "general"],
    ["", "Which organelle makes ATP?", "Mitochondrion", "Ribosome", "Nucleus", "Golgi", "recDDD", "Biology", "cell"],
    ["", "", "x", "y", "z", "w", "recEEE", "Biology", "empty question"],
]  # fmt: skip


def write_gpqa(root: Path, rows=GPQA_ROWS, header=GPQA_HEADER) -> Path:
    folder = root / "gpqa"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "gpqa_diamond.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return root


def test_gpqa_loads_a_local_copy_with_recorded_permutations(tmp_path, capsys):
    items = gpqa.load(write_gpqa(tmp_path))
    assert [i.id for i in items] == ["recAAA", "recBBB", "recCCC", "recDDD"]
    assert "gpqa: dropped 1 of 5 rows" in capsys.readouterr().err  # the empty question
    for item, row in zip(items, GPQA_ROWS, strict=False):
        options = item.meta["options"]
        # The target letter points at the source's correct answer, wherever the shuffle put it.
        assert options["ABCD".index(item.target)] == row[2].strip()
        assert sorted(options) == sorted(c.strip() for c in row[2:6])
        assert item.meta["permutation"] == gpqa.permutation(item.id)
        assert [options[k] for k in range(4)] == [row[2:6][i].strip() for i in item.meta["permutation"]]
    assert items[1].category == "Physics"
    # Seeded per item: not every question puts the right answer first.
    assert {i.target for i in items} != {"A"}


def test_gpqa_permutation_follows_the_item_not_the_file_order(tmp_path):
    forward = {i.id: i for i in gpqa.load(write_gpqa(tmp_path / "a"))}
    backward = {i.id: i for i in gpqa.load(write_gpqa(tmp_path / "b", rows=GPQA_ROWS[::-1]))}
    assert forward == backward


def test_gpqa_permutation_is_part_of_the_data_fingerprint(tmp_path, monkeypatch):
    root = write_gpqa(tmp_path)
    before = benches.data_fingerprint(gpqa.load(root))
    monkeypatch.setattr(gpqa, "PERMUTATION_SEED", "another")
    after = gpqa.load(root)
    assert benches.data_fingerprint(after) != before


def test_gpqa_missing_column_is_named(tmp_path):
    header = GPQA_HEADER[:5] + ["Wrong Name"] + GPQA_HEADER[6:]
    with pytest.raises(UserError, match="row 1 has no field 'Incorrect Answer 3'"):
        gpqa.load(write_gpqa(tmp_path, header=header))


GPQA_ITEM = Item(id="r", question="q", target="B", meta={"options": ["w", "x", "y", "z"], "permutation": [1, 0, 2, 3]})


@pytest.mark.parametrize(
    "text,answer",
    [
        ("Step by step...\nAnswer: B", "B"),
        ("answer: $b$", "B"),
        ("**Answer:** B", "B"),
        ("Answer:\tC", "C"),  # wrong
        ("Answer: A\nActually Answer: B", "A"),  # first match, like simple-evals
        ("Answer: E", None),
        ("The correct option is B.", None),
        ("", None),
    ],
)
def test_gpqa_extraction(text, answer):
    scored = gpqa.score(GPQA_ITEM, text)
    assert (scored.answer, scored.score) == (answer, float(answer == "B"))
    assert scored.extra["permutation"] == [1, 0, 2, 3]


def test_gpqa_truncated_in_think_is_wrong():
    assert grade(gpqa, GPQA_ITEM, "<think>Answer: B is likely", think=True, truncated=True) == (None, 0.0)
    assert grade(gpqa, GPQA_ITEM, "<think>hmm</think>Answer: B", think=True, truncated=False) == ("B", 1.0)


def test_gpqa_prompt_is_simple_evals():
    content = gpqa.messages(GPQA_ITEM, think=False)[0]["content"]
    assert content.startswith("Answer the following multiple choice question.")
    assert content.endswith("q\n\nA) w\nB) x\nC) y\nD) z")


# ---------------------------------------------------------------------------------------------- tradequiz


def test_tradequiz_example_ships_and_loads(capsys):
    items = tradequiz.load(None)
    assert len(items) == 10
    assert "running the shipped example" in capsys.readouterr().err
    assert {i.category for i in items} == {"fixed income", "derivatives", "market microstructure", "risk"}
    for item in items:
        assert 2 <= len(item.meta["options"]) <= 10
        assert item.target in "ABCDEFGHIJ"[: len(item.meta["options"])]


def write_quiz(root: Path, name: str, text: str) -> Path:
    folder = root / "tradequiz"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return root


def test_tradequiz_reads_every_jsonl_and_csv_of_the_folder(tmp_path):
    row = {"id": 1, "question": "Q1?", "options": ["a", "b"], "answer": "b"}
    write_quiz(tmp_path, "a.jsonl", json.dumps(row) + "\n")
    write_quiz(tmp_path, "b.csv", 'id,question,options,answer,category\nq2,Q2?,"x|y|z",C,rates\nq3,Q3?,"[""p"", ""q""]",A,\n')
    items = tradequiz.load(tmp_path)
    assert [(i.id, i.target, i.category, i.meta["options"]) for i in items] == [
        ("1", "B", None, ["a", "b"]),
        ("q2", "C", "rates", ["x", "y", "z"]),
        ("q3", "A", None, ["p", "q"]),
    ]


@pytest.mark.parametrize(
    "row,message",
    [
        ({"id": "a", "question": "Q?", "options": ["x", "y"], "answer": "C"}, r"row 1 field 'answer' is 'C'.* A to B"),
        ({"id": "a", "question": "Q?", "options": ["x"], "answer": "A"}, r"row 1 field 'options': give 2 to 10"),
        ({"id": "a", "question": "Q?", "answer": "A"}, r"row 1 has no field 'options'"),
        ({"id": " ", "question": "Q?", "options": ["x", "y"], "answer": "A"}, r"row 1 field 'id' is empty"),
    ],
)
def test_tradequiz_bad_rows_stop_with_the_field_named(tmp_path, row, message):
    write_quiz(tmp_path, "quiz.jsonl", json.dumps(row) + "\n")
    with pytest.raises(UserError, match=message):
        tradequiz.load(tmp_path)


def test_tradequiz_duplicated_id_across_files(tmp_path):
    row = {"id": "same", "question": "Q?", "options": ["x", "y"], "answer": "A"}
    write_quiz(tmp_path, "a.jsonl", json.dumps(row) + "\n")
    write_quiz(tmp_path, "b.jsonl", json.dumps(row) + "\n")
    with pytest.raises(UserError, match="duplicated item id 'same'"):
        tradequiz.load(tmp_path)


def test_tradequiz_data_dir_without_quiz_folder(tmp_path):
    with pytest.raises(UserError, match=r"no \*\.jsonl or \*\.csv under .*tradequiz"):
        tradequiz.load(tmp_path)


TQ_ITEM = Item(id="t", question="q", target="C", meta={"options": ["a", "b", "c", "d", "e"]})


@pytest.mark.parametrize(
    "text,answer",
    [
        ("Duration times yield change...\nAnswer: C", "C"),
        ("Answer: A\nOn reflection:\nAnswer: C", "C"),  # the last line asked for wins
        ("**Answer:** (C)", "C"),
        ("ANSWER: E", "E"),  # wrong
        ("answer: c", None),  # letters are capitals
        ("The answer: Bonds fall.", None),
        ("C", None),
    ],
)
def test_tradequiz_extraction(text, answer):
    scored = tradequiz.score(TQ_ITEM, text)
    assert (scored.answer, scored.score) == (answer, float(answer == "C"))


def test_tradequiz_truncated_in_think_is_wrong():
    assert grade(tradequiz, TQ_ITEM, "<think>so Answer: C", think=True, truncated=True) == (None, 0.0)


def test_tradequiz_prompt_names_the_letters_in_use():
    content = tradequiz.messages(TQ_ITEM, think=True)[0]["content"]
    assert "LETTER is one of ABCDE." in content and content.endswith("A) a\nB) b\nC) c\nD) d\nE) e")


# ---------------------------------------------------------------------------------------------- all


@pytest.mark.parametrize("name", ["gsm8k", "mmlu_pro", "gpqa", "tradequiz"])
def test_every_bench_has_both_modes_and_a_version(name):
    module = benches.get_bench(name)
    assert module.NAME == name and module.VERSION
    assert set(module.MAX_TOKENS) == {False, True}
    assert module.MAX_TOKENS[True] > module.MAX_TOKENS[False] > 0
