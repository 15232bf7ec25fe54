"""The 25 IFEval instruction checkers, as google-research `instruction_following_eval/instructions.py` defines them.

Each checker is `check(response, **kwargs) -> bool`, the reference's `check_following` with the kwargs its
`build_description` takes. Regular expressions, counting rules and comparison relations are the
reference's own, quirks included (keywords are regular expressions, `keywords:frequency` counts
substrings, a `* bullet` is any line starting with `*` then a non-`*`), because scores must agree with
published IFEval numbers on the same responses.

Measured against the reference code (lm-eval's copy, same Punkt model, langdetect seeded 0) on 12,283
published responses of five models to IFEval-style prompts (31,392 instructions, all 25 ids): the same
strict and loose verdict on every instruction except the random `letter_frequency` case below.

Deliberate differences, each where the reference would not be deterministic or would crash:
- keywords:letter_frequency counts the character given, whatever it is. The reference swaps anything
  that is not a single a-z letter for a random letter, so the two prompts of the split that ask for `#`
  and `!` (keys 1122 and 1129) would score at random.
- Language detection is seeded (see text.py); the reference's is not.
- kwargs are validated when the split is loaded (`validate_kwargs`): where the reference would draw a
  random threshold or relation for a missing or invalid argument, loading stops with a one-line error.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable
from typing import Any

from benches.ifeval.text import LanguageUnknown, count_sentences, count_words, detect_language, word_tokenize

RELATIONS = ("less than", "at least")


def _compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == "less than" else count >= threshold


# keywords


def keywords_existence(response: str, *, keywords: list[str]) -> bool:
    return all(re.search(keyword, response, flags=re.IGNORECASE) for keyword in keywords)


def keywords_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    occurrences = len(re.findall(keyword.strip(), response, flags=re.IGNORECASE))
    return _compare(occurrences, relation, frequency)


def keywords_forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    return not any(re.search(r"\b" + word + r"\b", response, flags=re.IGNORECASE) for word in forbidden_words)


def keywords_letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    count = collections.Counter(response.lower())[letter.strip().lower()]
    return _compare(count, let_relation, let_frequency)


# language


def language_response_language(response: str, *, language: str) -> bool:
    try:
        return detect_language(response) == language
    except LanguageUnknown:
        return True  # the reference counts an undetectable response as followed


# length_constraints


def length_number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(response), relation, num_sentences)


def length_number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Paragraphs split by a `***` divider; an empty one is allowed only at either end."""
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if index in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def length_number_words(response: str, *, num_words: int, relation: str) -> bool:
    return _compare(count_words(response), relation, num_words)


def length_nth_paragraph_first_word(
    response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str
) -> bool:
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for paragraph in paragraphs if paragraph.strip())
    # As in the reference, the nth paragraph is indexed among all splits, empty ones included.
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    found = ""
    for char in word:
        if char in {".", ",", "?", "!", "'", '"'}:
            break
        found += char.lower()
    return count == num_paragraphs and found == first_word.lower()


# detectable_content


def content_number_placeholders(response: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def content_postscript(response: str, *, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


# detectable_format


def format_number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    star_bullets = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dash_bullets = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(star_bullets) + len(dash_bullets) == num_bullets


CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def format_constrained_response(response: str) -> bool:
    stripped = response.strip()
    return any(option in stripped for option in CONSTRAINED_RESPONSES)


def format_number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    # `**bold**` counts through both patterns, as in the reference.
    singles = re.findall(r"\*[^\n\*]*\*", response)
    doubles = re.findall(r"\*\*[^\n\*]*\*\*", response)
    count = sum(1 for h in singles if h.strip("*").strip())
    count += sum(1 for h in doubles if h.removeprefix("**").removesuffix("**").strip())
    return count >= num_highlights


def format_multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    pattern = r"\s?" + section_spliter.strip() + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


def format_json_format(response: str) -> bool:
    value = (
        response.strip()
        .removeprefix("```json")
        .removeprefix("```Json")
        .removeprefix("```JSON")
        .removeprefix("```")
        .removesuffix("```")
        .strip()
    )
    try:
        json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting, where the reference crashes
        return False
    return True


def format_title(response: str) -> bool:
    titles = re.findall(r"<<[^\n]+>>", response)
    return any(title.lstrip("<").rstrip(">").strip() for title in titles)


# combination


def combination_two_responses(response: str) -> bool:
    """Exactly two different non-empty responses separated by `******` (empty parts only at the ends)."""
    parts = response.split("******")
    answers = []
    for index, part in enumerate(parts):
        if not part.strip():
            if index not in (0, len(parts) - 1):
                return False
        else:
            answers.append(part)
    return len(answers) == 2 and answers[0].strip() != answers[1].strip()


def combination_repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


# startend


def startend_end_checker(response: str, *, end_phrase: str) -> bool:
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def startend_quotation(response: str) -> bool:
    stripped = response.strip()
    return len(stripped) > 1 and stripped[0] == '"' and stripped[-1] == '"'


# change_case


def case_capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    capital_words = sum(1 for word in word_tokenize(response) if word.isupper())
    return _compare(capital_words, capital_relation, capital_frequency)


def case_english_capital(response: str) -> bool:
    if not response.isupper():
        return False
    try:
        return detect_language(response) == "en"
    except LanguageUnknown:
        return True


def case_english_lowercase(response: str) -> bool:
    if not response.islower():
        return False
    try:
        return detect_language(response) == "en"
    except LanguageUnknown:
        return True


# punctuation


def punctuation_no_comma(response: str) -> bool:
    return "," not in response


# instruction id -> (checker, its kwargs and their types)
CHECKERS: dict[str, tuple[Callable[..., bool], dict[str, type]]] = {
    "keywords:existence": (keywords_existence, {"keywords": list}),
    "keywords:frequency": (keywords_frequency, {"keyword": str, "frequency": int, "relation": str}),
    "keywords:forbidden_words": (keywords_forbidden_words, {"forbidden_words": list}),
    "keywords:letter_frequency": (
        keywords_letter_frequency,
        {"letter": str, "let_frequency": int, "let_relation": str},
    ),
    "language:response_language": (language_response_language, {"language": str}),
    "length_constraints:number_sentences": (length_number_sentences, {"num_sentences": int, "relation": str}),
    "length_constraints:number_paragraphs": (length_number_paragraphs, {"num_paragraphs": int}),
    "length_constraints:number_words": (length_number_words, {"num_words": int, "relation": str}),
    "length_constraints:nth_paragraph_first_word": (
        length_nth_paragraph_first_word,
        {"num_paragraphs": int, "nth_paragraph": int, "first_word": str},
    ),
    "detectable_content:number_placeholders": (content_number_placeholders, {"num_placeholders": int}),
    "detectable_content:postscript": (content_postscript, {"postscript_marker": str}),
    "detectable_format:number_bullet_lists": (format_number_bullet_lists, {"num_bullets": int}),
    "detectable_format:constrained_response": (format_constrained_response, {}),
    "detectable_format:number_highlighted_sections": (format_number_highlighted_sections, {"num_highlights": int}),
    "detectable_format:multiple_sections": (
        format_multiple_sections,
        {"section_spliter": str, "num_sections": int},
    ),
    "detectable_format:json_format": (format_json_format, {}),
    "detectable_format:title": (format_title, {}),
    "combination:two_responses": (combination_two_responses, {}),
    "combination:repeat_prompt": (combination_repeat_prompt, {"prompt_to_repeat": str}),
    "startend:end_checker": (startend_end_checker, {"end_phrase": str}),
    "startend:quotation": (startend_quotation, {}),
    "change_case:capital_word_frequency": (
        case_capital_word_frequency,
        {"capital_frequency": int, "capital_relation": str},
    ),
    "change_case:english_capital": (case_english_capital, {}),
    "change_case:english_lowercase": (case_english_lowercase, {}),
    "punctuation:no_comma": (punctuation_no_comma, {}),
}


def validate_kwargs(instruction_id: str, kwargs: dict[str, Any]) -> str | None:
    """What is wrong with these kwargs for this instruction (None: nothing).

    kwargs arrive with None values already dropped (the hub split lists every argument of every
    instruction, null where unused). Extra arguments are refused: they would mean another instruction.
    """
    if instruction_id not in CHECKERS:
        return f"unknown instruction id {instruction_id!r}"
    _, spec = CHECKERS[instruction_id]
    for name in kwargs:
        if name not in spec:
            return f"{instruction_id} takes no argument {name!r} (takes: {', '.join(spec) or 'none'})"
    for name, kind in spec.items():
        if name not in kwargs:
            return f"{instruction_id} needs argument {name!r}"
        value = kwargs[name]
        if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            return f"{instruction_id} argument {name!r} is {value!r}, expected a whole number >= 0"
        if kind is str and not (isinstance(value, str) and value.strip()):
            return f"{instruction_id} argument {name!r} is {value!r}, expected non-empty text"
        if kind is list and not (
            isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
        ):
            return f"{instruction_id} argument {name!r} is {value!r}, expected a non-empty list of words"
    for name in ("relation", "let_relation", "capital_relation"):
        if name in kwargs and kwargs[name] not in RELATIONS:
            return f"{instruction_id} argument {name!r} is {kwargs[name]!r}, expected one of {RELATIONS}"
    if instruction_id == "keywords:letter_frequency" and len(kwargs["letter"]) != 1:
        return f"{instruction_id} argument 'letter' is {kwargs['letter']!r}, expected one character"
    if instruction_id == "length_constraints:nth_paragraph_first_word" and not (
        1 <= kwargs["nth_paragraph"] <= kwargs["num_paragraphs"]
    ):
        return f"{instruction_id} needs 1 <= nth_paragraph <= num_paragraphs, got {kwargs}"
    # These arguments go into regular expressions as they are (as in the reference).
    for name in ("keywords", "forbidden_words", "keyword", "section_spliter", "postscript_marker"):
        value = kwargs.get(name)
        for pattern in value if isinstance(value, list) else [value] if value is not None else []:
            try:
                re.compile(pattern)
            except re.error as exc:
                return f"{instruction_id} argument {name!r}: {pattern!r} is not a valid regular expression ({exc})"
    return None


def check(instruction_id: str, response: str, kwargs: dict[str, Any]) -> bool:
    """The reference's test: an empty (whitespace-only) response follows nothing."""
    checker, _ = CHECKERS[instruction_id]
    return bool(response.strip()) and checker(response, **kwargs)
