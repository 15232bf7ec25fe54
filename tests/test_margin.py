"""engine/margin.py without an engine: queries on the real tokenizer, the two margin forms, the
endpoint's answer parsed, the file's checksum and the pairwise contract."""

from __future__ import annotations

import math

import msgspec
import pytest
from conftest import need_shared_data

import benches
from engine.errors import NotComparable, UserError
from engine.margin import (
    FORMS,
    MarginFile,
    MarginItem,
    Query,
    build_queries,
    endpoint_body,
    margins_path,
    option_margin,
    paired_margins,
    parse_endpoint,
    read_margins,
    write_margins,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from engine.backends.protocol import load_tokenizer

    return load_tokenizer(tiny_model)


def test_option_margin_is_log_odds_against_the_other_options():
    lps = [math.log(0.5), math.log(0.2), math.log(0.1)]
    assert option_margin(lps, 0) == pytest.approx(math.log(0.5 / 0.3))
    assert option_margin(lps, 2) == pytest.approx(math.log(0.1 / 0.7))
    # only the options' relative probabilities matter
    assert option_margin([lp - 3.0 for lp in lps], 1) == pytest.approx(option_margin(lps, 1))


def test_answer_queries_are_the_bench_prompt_plus_prefix_plus_reference(tokenizer):
    from engine.backends.protocol import render_chat

    arith = benches.get_bench("arith")
    items = arith.load()[:3]
    queries, hashes = build_queries("arith", arith, items, tokenizer)
    for q, item in zip(queries, items, strict=True):
        prompt = render_chat(tokenizer, arith.messages(item, False), False)
        assert q.context == prompt and tokenizer.decode(q.answer) == item.target and not q.options
    assert len(set(hashes)) == 3


def test_gsm8k_prefix_and_answer_tokens(tokenizer):
    gsm8k = benches.get_bench("gsm8k")
    items = gsm8k.load(need_shared_data("gsm8k").parent)[:4]
    queries, _ = build_queries("gsm8k", gsm8k, items, tokenizer)
    for q, item in zip(queries, items, strict=True):
        assert tokenizer.decode(q.context[-3:]).endswith("####")
        assert tokenizer.decode(q.answer).strip() == item.target


def test_option_queries_one_token_per_letter(tokenizer):
    mmlu = benches.get_bench("mmlu_pro")
    items = mmlu.load(need_shared_data("mmlu_pro").parent)[:5]
    queries, _ = build_queries("mmlu_pro", mmlu, items, tokenizer)
    for q, item in zip(queries, items, strict=True):
        letters = "ABCDEFGHIJ"[: len(item.meta["options"])]
        assert [tokenizer.decode([t]) for t in q.options] == list(letters)
        assert letters[q.correct] == item.target
        assert tokenizer.decode(q.context).endswith("The answer is (")
    tradequiz = benches.get_bench("tradequiz")
    tq_items = tradequiz.load(None)[:2]
    tq, _ = build_queries("tradequiz", tradequiz, tq_items, tokenizer)
    assert [tokenizer.decode([t]) for t in tq[0].options][0] == " A"


def test_endpoint_body_and_answer_parsed():
    q = Query(item_id="i", context=[1, 2], answer=[], options=[49, 50, 51], correct=1)
    body = endpoint_body("m", q)
    assert body["logprob_token_ids"] == [49, 50, 51] and body["logprobs"] == 3 and body["return_tokens_as_token_ids"]
    data = {"choices": [{"logprobs": {"top_logprobs": [{"token_id:49": -2.0, "token_id:50": -0.5, "token_id:51": -3.0, "token_id:7": -0.1}]}}]}
    assert parse_endpoint(q, data).margin == pytest.approx(option_margin([-2.0, -0.5, -3.0], 1))
    a = Query(item_id="j", context=[1, 2], answer=[5, 6], options=[])
    assert endpoint_body("m", a)["prompt"] == [1, 2, 5, 6] and endpoint_body("m", a)["prompt_logprobs"] == 0
    rows = [None, {"2": {"logprob": -9.0}}, {"5": {"logprob": -1.25}}, {"6": {"logprob": -0.5}, "9": {"logprob": -0.1}}]
    got = parse_endpoint(a, {"choices": [{"prompt_logprobs": rows}]})
    assert got.margin == pytest.approx(-1.75) and got.tokens == 2
    from engine.backends.openai_backend import BackendError

    with pytest.raises(BackendError, match="prompt log-probs"):
        parse_endpoint(a, {"choices": [{}]})


def _file(bench="arith", **changes) -> MarginFile:
    form = FORMS[bench]
    margins = MarginFile(
        version="1", bench=bench, bench_version="1", kind=form.kind, prefix=form.prefix, answer_format=form.answer_format,
        prompt="chat template, thinking off", dtype="float32", model_fingerprint="f", backend="vllm", seconds=1.0,
        items=[MarginItem(item_id="a", margin=-1.5, tokens=1), MarginItem(item_id="b", margin=-0.1, tokens=2)],
    )  # fmt: skip
    return msgspec.structs.replace(margins, **changes)


def test_file_round_trip_checksum_and_contract(tmp_path):
    write_margins(tmp_path / "base", _file())
    write_margins(tmp_path / "cand", _file(items=[MarginItem(item_id="a", margin=-2.0, tokens=1)]))
    stored = read_margins(tmp_path / "base", "arith")
    assert stored.checksum and stored.items[0].margin == -1.5
    base, cand = paired_margins(tmp_path / "base", tmp_path / "cand")
    assert base == {"arith": {"a": -1.5, "b": -0.1}} and cand == {"arith": {"a": -2.0}}
    write_margins(tmp_path / "cand", _file(prefix="The answer is "))
    with pytest.raises(NotComparable, match="answer prefix"):
        paired_margins(tmp_path / "base", tmp_path / "cand")
    path = margins_path(tmp_path / "base", "arith")
    path.write_text(path.read_text().replace("-1.5", "-1.25"))
    with pytest.raises(UserError, match="checksum"):
        read_margins(tmp_path / "base", "arith")
    assert read_margins(tmp_path / "nowhere", "arith") is None
