from collections import Counter

import pytest
from conftest import need_shared_data

from benches import Item, arith, gsm8k, select_items, split_reasoning
from engine.errors import UserError


def test_arith_pool_is_deterministic_and_stratified():
    items = arith.load()
    assert items == arith.load()
    assert Counter(i.category for i in items) == {"add": 300, "sub": 300, "mul": 300, "two-step": 300}
    for item in items:
        assert eval(item.question.removeprefix("What is ").removesuffix("?")) == int(item.target)


@pytest.mark.parametrize(
    "text,answer,score",
    [
        ("7", "7", 1.0),
        ("3 + 4 = 7. The answer is 7.", "7", 1.0),
        ("The answer is 8, not 7", "8", 0.0),
        ("Answer: 1,200", "1200", 0.0),
        ("I don't know", None, 0.0),
        ("", None, 0.0),
    ],
)
def test_arith_scoring(text, answer, score):
    got = arith.score(Item(id="x", question="What is 3 + 4?", target="7"), text)
    assert (got.answer, got.score) == (answer, score)


ITEM = Item(id="g", question="q", target="1200")


@pytest.mark.parametrize(
    "text,flex,strict",
    [
        ("so 1,200 dollars.\n#### 1,200", 1.0, 1.0),
        ("She pays $1,200.", 1.0, 0.0),
        ("#### 1200.", 1.0, 1.0),
        ("#### 1200\nwait, actually 1300", 0.0, 1.0),
        ("no number", 0.0, 0.0),
        ("1200.00", 1.0, 0.0),
    ],
)
def test_gsm8k_strict_and_flexible(text, flex, strict):
    got = gsm8k.score(ITEM, text)
    assert got.score == flex
    assert got.extra["strict_score"] == strict


def test_gsm8k_loads_real_file_with_all_rows():
    data = need_shared_data("gsm8k/test.jsonl").parent.parent
    items = gsm8k.load(data)
    assert len(items) == 1319
    assert items[0].target == "18"  # Janet's ducks
    assert len({i.id for i in items}) == 1319


def test_gsm8k_missing_field_is_a_clear_error(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(UserError, match="'answer'"):
        gsm8k.load(tmp_path)


def test_gsm8k_missing_data_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="--data-dir"):
        gsm8k.load(tmp_path)


def test_smoke_selection_is_stable_stratified_and_seeded():
    items = arith.load()
    first = select_items(items, "smoke", "arith", 0)
    assert first == select_items(items, "smoke", "arith", 0)
    assert len(first) == 150
    assert Counter(i.category for i in first) == {"add": 38, "sub": 38, "mul": 37, "two-step": 37} or all(
        c in (37, 38) for c in Counter(i.category for i in first).values()
    )
    assert select_items(items, "smoke", "arith", 1) != first
    assert select_items(items, "full", "arith", 0) == items


def test_split_reasoning():
    assert split_reasoning("<think>hmm</think>\n42", True, False) == ("<think>hmm", "\n42")
    assert split_reasoning("<think>still going", True, True) == ("<think>still going", None)
    assert split_reasoning("no think block, answer 3", True, False) == ("", "no think block, answer 3")
    assert split_reasoning("plain", False, True) == ("", "plain")
