"""IFEval: every instruction checker on passing and failing responses, loose variants, loading, metrics.

Expected verdicts follow the reference (google-research instruction_following_eval) definitions, quirks
included. When written, every case here (strict and loose) was also run through the reference code
(lm-eval's copy, Punkt English model, langdetect seeded 0) and got the same verdicts.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import need_shared_data, run_cli

from benches import Item, get_bench, split_reasoning
from benches import ifeval as bench
from benches.ifeval import checkers, text
from engine.errors import UserError
from engine.records import ItemRecord, read_run

RU = "Привет! Как у тебя дела? Я надеюсь, что всё хорошо и ты хорошо отдыхаешь летом."
FR = "Bonjour, je m'appelle Marie et j'habite à Paris depuis dix ans avec ma famille."
EN = "This is an English sentence about the weather today and the plans for tomorrow."

# (instruction id, kwargs, response, followed strictly)
CASES = [
    # keywords: the reference searches keywords as regular expressions, without word boundaries
    ("keywords:existence", {"keywords": ["river", "bank"]}, "We walked along the River to the bank.", True),
    ("keywords:existence", {"keywords": ["river", "bank"]}, "We walked along the river.", False),
    ("keywords:existence", {"keywords": ["river", "bank"]}, "A riverbank.", True),
    ("keywords:frequency", {"keyword": "lion", "frequency": 3, "relation": "at least"}, "Lion, lion, LION.", True),
    ("keywords:frequency", {"keyword": "lion", "frequency": 3, "relation": "at least"}, "A lion, a lioness.", False),
    ("keywords:frequency", {"keyword": "lion", "frequency": 2, "relation": "less than"}, "One lion.", True),
    ("keywords:frequency", {"keyword": "lion", "frequency": 2, "relation": "less than"}, "A lion, a lioness.", False),
    ("keywords:forbidden_words", {"forbidden_words": ["cat", "dog"]}, "Concatenation and dogma.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat", "dog"]}, "My Dog sleeps.", False),
    ("keywords:letter_frequency", {"letter": "q", "let_frequency": 2, "let_relation": "at least"}, "Quick quiz", True),
    ("keywords:letter_frequency", {"letter": "q", "let_frequency": 2, "let_relation": "at least"}, "quick", False),
    ("keywords:letter_frequency", {"letter": "e", "let_frequency": 1, "let_relation": "less than"}, "Élan vital", True),
    ("keywords:letter_frequency", {"letter": "e", "let_frequency": 1, "let_relation": "less than"}, "Hello", False),
    # language
    ("language:response_language", {"language": "ru"}, RU, True),
    ("language:response_language", {"language": "ru"}, EN, False),
    ("language:response_language", {"language": "ru"}, "12345 67890 !!!", True),  # undetectable: followed
    # length_constraints
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two.", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two. Three.", False),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "Dr. Smith came. He sat.", False),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "Dr. Smith came. He sat.", True),
    # Punkt's orthographic context makes "x. Thus" a sentence break: 2 sentences, not 1.
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "Let the width be x. Thus it is 2x.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "A\n***\nB\n***\nC", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "***\nA\n***\nB\n***\nC\n***", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "A\n***\n***\nB\n***\nC", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "A\n\nB\n\nC", False),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "naïve café résumé über straße", True),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "it's a test", False),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "Hello world", True),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "Hello big world", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "First part.\n\nThen, second part.", True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, 'First part.\n\n"Then" it ends.', True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "First part.\n\nNow it ends.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "First.\n\nThen.\n\nMore.", False),
    # The reference indexes the nth paragraph among all "\n\n" splits, a leading empty one included.
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "\n\nFirst.\n\nThen it ends.", False),
    # detectable_content
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], meet me at [address].", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], meet me.", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\n\nP.S. See you soon", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\n\np. s. see you soon", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\n\nPS see you soon", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Body.\nP.P.S hi", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Body.\nP.S. hi", False),
    # detectable_format
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "- one\n- two\n- three", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "**Bold title**\n* one", False),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True),
    ("detectable_format:constrained_response", {}, "Well... My answer is maybe. Because.", True),
    ("detectable_format:constrained_response", {}, "My answer is yes", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "**a** and **b**", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "**bold** only", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "* * and **  **", False),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "Section 1\nIntro\nSection 2\nBody", True),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "SECTION 1\nIntro\nSECTION 2\nBody", False),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2}, "Section one\nSection two", False),
    ("detectable_format:json_format", {}, '```json\n{"name": "Zoë", "n": 1}\n```', True),
    ("detectable_format:json_format", {}, '{"a": 1} and more', False),
    ("detectable_format:json_format", {}, 'Here it is:\n{"a": 1}', False),
    ("detectable_format:title", {}, "<<Ode to Joy>>\nText", True),
    ("detectable_format:title", {}, "<< >>\nText", False),
    ("detectable_format:title", {}, "<<Ode\nto Joy>>", False),
    # combination
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", True),
    ("combination:two_responses", {}, "******\nAnswer one.\n******\nAnswer two.", True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False),
    ("combination:two_responses", {}, "A\n******\n******\nB", False),
    ("combination:two_responses", {}, "A ****** B ****** C", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem about cats."}, "write a poem about cats. Cats purr.", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem about cats."}, "Sure! Write a poem about cats.", False),
    # startend
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Text. Any other questions?", True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, '"Text. any other questions?"', True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Thanks", False),
    ("startend:quotation", {}, '"Hello"', True),
    ("startend:quotation", {}, '"', False),
    ("startend:quotation", {}, "Hello", False),
    ("startend:quotation", {}, "“Hello”", False),  # curly quotes are not the asked double quotation marks
    # change_case
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "The NASA and FBI teams", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "I went home.", False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}, "I AM HERE", False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}, "The STATE-OF-THE-ART idea", True),
    ("change_case:english_capital", {}, EN.upper(), True),
    ("change_case:english_capital", {}, EN, False),
    ("change_case:english_capital", {}, RU.upper(), False),
    ("change_case:english_lowercase", {}, EN.lower(), True),
    ("change_case:english_lowercase", {}, EN, False),
    ("change_case:english_lowercase", {}, FR.lower(), False),
    # punctuation
    ("punctuation:no_comma", {}, "No commas here.", True),
    ("punctuation:no_comma", {}, "One, two", False),
    ("punctuation:no_comma", {}, "一，二", True),  # a full-width comma is not ","
]

# Valid kwargs for every instruction id (for the empty-response and completeness checks).
ANY_KWARGS = {instruction_id: kwargs for instruction_id, kwargs, _, _ in CASES}


@pytest.mark.parametrize("instruction_id,kwargs,response,expected", CASES)
def test_checker_strict(instruction_id, kwargs, response, expected):
    assert checkers.validate_kwargs(instruction_id, kwargs) is None
    assert checkers.check(instruction_id, response, kwargs) is expected


def test_every_instruction_id_has_a_passing_and_a_failing_case():
    assert len(checkers.CHECKERS) == 25
    for instruction_id in checkers.CHECKERS:
        verdicts = {expected for i, _, _, expected in CASES if i == instruction_id}
        assert verdicts == {True, False}, instruction_id


@pytest.mark.parametrize("response", ["", "   \n\t "])
def test_an_empty_response_follows_nothing(response):
    # Also instructions an empty text would trivially satisfy (no comma, forbidden words, fewer than N).
    for instruction_id, kwargs in ANY_KWARGS.items():
        item = Item(id="e", question="q", target="", meta={"instruction_id_list": [instruction_id], "kwargs": [kwargs]})
        scored = bench.score(item, response)
        assert scored.extra["strict"] == [False] and scored.extra["loose"] == [False], instruction_id


def test_letter_frequency_counts_the_given_symbol():
    # The reference swaps a non a-z letter for a random one; here "#" is counted, the same every time.
    kwargs = {"letter": "#", "let_frequency": 4, "let_relation": "at least"}
    assert checkers.check("keywords:letter_frequency", "# A\n## B\n#", kwargs)
    assert not checkers.check("keywords:letter_frequency", "# A\n## B", kwargs)


def test_language_detection_is_deterministic():
    # A short ambiguous text is where unseeded langdetect varies from call to call.
    answers = {text.detect_language("ok merci") for _ in range(20)}
    assert len(answers) == 1


def test_sentence_splitter_carries_the_full_punkt_english_model():
    params = text.punkt()._params
    assert len(params.abbrev_types) == 156 and ". . " in params.abbrev_types and "dr" in params.abbrev_types
    assert len(params.collocations) == 37 and len(params.sent_starters) == 39
    assert len(params.ortho_context) == 20366
    assert text.split_sentences("Mr. Smith paid $3.50 for the U.S. edition. It sold out! Really?") == [
        "Mr. Smith paid $3.50 for the U.S. edition.",
        "It sold out!",
        "Really?",
    ]
    assert text.word_tokenize("THE U.S. ARMY can't wait.") == ["THE", "U.S.", "ARMY", "ca", "n't", "wait", "."]


def _item(ids_kwargs: list[tuple[str, dict]]) -> Item:
    return Item(
        id="i",
        question="q",
        target="",
        meta={"instruction_id_list": [i for i, _ in ids_kwargs], "kwargs": [k for _, k in ids_kwargs]},
    )


def test_loose_variants_are_the_references_eight():
    assert bench.loose_variants("*a*\nb\n*c*") == [
        "*a*\nb\n*c*",
        "a\nb\nc",
        "b\n*c*",
        "*a*\nb",
        "b",
        "b\nc",
        "a\nb",
        "b",
    ]


@pytest.mark.parametrize(
    "instruction_id,kwargs,response",
    [
        ("detectable_format:json_format", {}, 'Sure, here it is:\n```json\n{"a": [1, 2]}\n```'),  # first line off
        ("startend:quotation", {}, '*"Hi there"*'),  # asterisks off
        ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Body. Any other questions?\nHope it helps."),
        ("detectable_format:constrained_response", {}, "**My answer is** yes."),
    ],
)
def test_loose_rescues_what_strict_fails(instruction_id, kwargs, response):
    scored = bench.score(_item([(instruction_id, kwargs)]), response)
    assert scored.extra["strict"] == [False] and scored.extra["loose"] == [True]
    assert scored.score == 0.0 and scored.extra["prompt_loose"] is True


def test_loose_does_not_rescue_a_comma_in_the_middle():
    scored = bench.score(_item([("punctuation:no_comma", {})]), "Title\nOne, two\nEnd")
    assert scored.extra["loose"] == [False]


def test_score_is_prompt_level_strict_with_repeated_ids():
    item = _item(
        [
            ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}),
            ("length_constraints:number_words", {"num_words": 6, "relation": "less than"}),
            ("punctuation:no_comma", {}),
        ]
    )
    good = bench.score(item, "Four words right here")
    assert good.score == 1.0 and good.extra["strict"] == [True, True, True] and good.answer == "strict 3/3, loose 3/3"
    bad = bench.score(item, "Far, far too many words are in this one")
    assert bad.score == 0.0 and bad.extra["strict"] == [True, False, False]
    assert bad.extra["instructions"] == item.meta["instruction_id_list"]


def test_think_mode_scores_the_answer_and_fails_a_cut_reasoning():
    item = _item([("detectable_format:constrained_response", {})])
    _, answer = split_reasoning("<think>Should I say yes?</think>\nMy answer is yes.", think=True, truncated=False)
    assert bench.score(item, answer).score == 1.0
    _, cut = split_reasoning("<think>My answer is yes. Hmm, let me", think=True, truncated=True)
    assert cut is None  # the runner then records score 0 and no checks: failed strict and loose
    record = ItemRecord(
        item_id="i", sample=0, seed=0, prompt_hash="h", completion="<think>My answer is yes.", prompt_tokens=1,
        completion_tokens=1, finish_reason="length", truncated=True, answer=None, score=0.0, latency_s=0.0,
        extra={"cut_in_reasoning": True},
    )
    assert bench.outcomes(record, item) == [("detectable_format:constrained_response", False, False)]
    summary = bench.summarize([record], [item])
    assert summary.prompt_loose == 0.0 and summary.inst_loose == 0.0


def _record(item: Item, response: str) -> ItemRecord:
    scored = bench.score(item, response)
    return ItemRecord(
        item_id=item.id, sample=0, seed=0, prompt_hash="h", completion=response, prompt_tokens=1,
        completion_tokens=1, finish_reason="stop", truncated=False, answer=scored.answer, score=scored.score,
        latency_s=0.0, extra=scored.extra,
    )


def test_summarize_gives_the_four_metrics_and_per_instruction_strata():
    a = Item(id="a", question="q", target="", meta={"instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}, {}]})
    b = Item(id="b", question="q", target="", meta={"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})
    records = [_record(a, '*"No commas"*'), _record(b, "Yes, a comma")]
    summary = bench.summarize(records, [a, b])
    assert (summary.responses, summary.instructions) == (2, 3)
    assert (summary.prompt_strict, summary.prompt_loose) == (0.0, 0.5)
    assert (summary.inst_strict, summary.inst_loose) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert summary.by_instruction["punctuation:no_comma"].n == 2
    assert summary.by_instruction["punctuation:no_comma"].strict == 0.5
    assert summary.by_instruction["startend:quotation"].loose == 1.0


def test_scoring_from_threads_matches_sequential():
    items = [_item([(i, k)]) for i, k, _, _ in CASES]
    responses = [r for _, _, r, _ in CASES]
    sequential = [bench.score(i, r).extra for i, r in zip(items, responses, strict=True)]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda pair: bench.score(*pair).extra, zip(items, responses, strict=True)))
    assert threaded == sequential


def test_real_split_loads_every_prompt_and_instruction():
    data_dir = need_shared_data("ifeval/input_data.jsonl").parent.parent
    items = bench.load(data_dir)
    assert len(items) == 541 and len({i.id for i in items}) == 541
    instructions = [i for item in items for i in item.meta["instruction_id_list"]]
    assert len(instructions) == 834 and set(instructions) == set(checkers.CHECKERS)
    by_id = {item.id: item for item in items}
    assert by_id["1000"].meta["kwargs"][1] == {"num_highlights": 3}
    assert all(item.category is None for item in items)
    assert get_bench("ifeval") is bench


HUB_ROW = {
    "key": 7,
    "prompt": "Say hi without commas.",
    "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
    # The hub file lists every argument name of every instruction, null where unused.
    "kwargs": [
        {"num_words": None, "relation": None, "language": None},
        {"language": None, "relation": "less than", "num_words": 5},
    ],
}


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_hub_file_and_local_copy_give_the_same_items(tmp_path, monkeypatch):
    import huggingface_hub

    cached = _write_jsonl(tmp_path / "hub" / "ifeval_input_data.jsonl", [HUB_ROW])
    calls = []

    def fake_download(repo, filename, **kwargs):
        calls.append((repo, filename, kwargs["revision"], kwargs["repo_type"]))
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    from_hub = bench.load(None)
    assert calls == [("google/IFEval", "ifeval_input_data.jsonl", bench.HUB.revision, "dataset")]
    local_row = {**HUB_ROW, "kwargs": [{}, {"num_words": 5, "relation": "less than"}]}
    local = bench.load(_write_jsonl(tmp_path / "local" / "ifeval" / "input_data.jsonl", [local_row]).parent.parent)
    assert from_hub == local
    assert local[0].id == "7" and local[0].meta["kwargs"] == [{}, {"num_words": 5, "relation": "less than"}]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"instruction_id_list": ["punctuation:semicolon"], "kwargs": [{}]}, "unknown instruction id 'punctuation:semicolon'"),
        ({"kwargs": [{}]}, "2 instruction ids but 1 kwargs"),
        ({"kwargs": [{}, {"num_words": 5}]}, "needs argument 'relation'"),
        ({"kwargs": [{}, {"num_words": 5, "relation": "at most"}]}, "'at most', expected one of"),
        ({"kwargs": [{}, {"num_words": "five", "relation": "less than"}]}, "expected a whole number"),
        ({"kwargs": [{"num_words": 5}, {"num_words": 5, "relation": "less than"}]}, "takes no argument 'num_words'"),
        ({"instruction_id_list": []}, "empty instruction_id_list"),
        ({"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": ["a(b"]}]}, "not a valid regular expression"),
        ({"kwargs": "not json"}, "field 'kwargs' is not valid JSON"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_the_row(tmp_path, change, message):
    _write_jsonl(tmp_path / "ifeval" / "input_data.jsonl", [{**HUB_ROW, **change}])
    with pytest.raises(UserError, match="input_data.jsonl: row 1 ") as error:
        bench.load(tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_missing_local_file_names_the_fix(tmp_path):
    with pytest.raises(UserError, match="input_data.jsonl"):
        bench.load(tmp_path)


@pytest.mark.heavy
def test_smoke_run_through_vllm(tiny_model, tmp_path):
    data_dir = need_shared_data("ifeval/input_data.jsonl").parent.parent
    out = tmp_path / "run"
    proc = run_cli(
        "--model", "smollm2-135m", "--benches", "ifeval", "--data-dir", str(data_dir), "--limit", "8",
        "--max-tokens", "256", "--out", str(out), "--baseline", "none",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_run(out).records["ifeval"]
    assert len(records) == 8
    assert all(r.extra["prompt_strict"] == (r.score == 1.0) for r in records)
    summary = bench.summarize(records, bench.load(data_dir))
    assert summary.responses == 8 and 0.0 <= summary.prompt_strict <= summary.prompt_loose <= 1.0
