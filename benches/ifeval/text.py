"""Word counting, sentence splitting, word tokenizing and language detection, offline and deterministic.

The reference (google-research `instruction_following_eval/instructions_util.py`) counts sentences with
nltk's Punkt English model loaded from nltk_data (`tokenizers/punkt/english.pickle`), a download that is
not on PyPI. `punkt_english/` beside this file carries that model's parameters (156 abbreviations, 37
collocations, 39 sentence starters, 20,366 orthographic-context entries: Kiss & Strunk's model trained on
the WSJ), exported from the pickle in the same layout as nltk_data's `punkt_tab/english`. With them nltk's
own Punkt algorithm splits exactly as the reference does. The orthographic context is not optional: without
it, "... be x. Thus ..." stays one sentence where the reference sees two.

Language detection is langdetect (it ships its profiles) with the seed fixed at 0: the reference leaves it
unseeded, so the same text can be judged differently from run to run.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from functools import cache
from pathlib import Path

from nltk.tokenize.destructive import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

PUNKT_DIR = Path(__file__).resolve().parent / "punkt_english"
LANGDETECT_SEED = 0

_WORD = re.compile(r"\w+")
_word_tokenizer = NLTKWordTokenizer()


def _lines(name: str) -> list[str]:
    # Only the newline goes: the abbreviation ". . " (a spaced ellipsis) ends in a space.
    return (PUNKT_DIR / name).read_text(encoding="utf-8").split("\n")[:-1]


@cache
def punkt() -> PunktSentenceTokenizer:
    params = PunktParameters()
    params.abbrev_types = set(_lines("abbrev_types.txt"))
    params.sent_starters = set(_lines("sent_starters.txt"))
    params.collocations = {tuple(line.split("\t")) for line in _lines("collocations.tab")}
    ortho: defaultdict[str, int] = defaultdict(int)
    for line in _lines("ortho_context.tab"):
        word, flags = line.split("\t")
        ortho[word] = int(flags)
    params.ortho_context = ortho
    return PunktSentenceTokenizer(params)


def count_words(text: str) -> int:
    """Words as the reference counts them: runs of `\\w` (nltk RegexpTokenizer(r"\\w+"))."""
    return len(_WORD.findall(text))


def split_sentences(text: str) -> list[str]:
    return punkt().tokenize(text)


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def word_tokenize(text: str) -> list[str]:
    """nltk.word_tokenize(text): Punkt sentences, then the Treebank-style word tokenizer on each."""
    return [token for sentence in split_sentences(text) for token in _word_tokenizer.tokenize(sentence)]


class LanguageUnknown(Exception):
    """langdetect found nothing to go on (no letters): the reference counts the instruction followed."""


_factory_lock = threading.Lock()
_factory = None


def _detector_factory():
    # Loading the profiles into a factory is not thread-safe (a second load raises "duplicate
    # profile"); once loaded, each detection builds its own Detector with its own seeded Random.
    global _factory
    with _factory_lock:
        if _factory is None:
            from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

            factory = DetectorFactory()
            factory.load_profile(PROFILES_DIRECTORY)
            factory.set_seed(LANGDETECT_SEED)
            _factory = factory
        return _factory


def detect_language(text: str) -> str:
    """ISO 639-1 code (langdetect's), e.g. "en"; raises LanguageUnknown when there is nothing to detect."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _detector_factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException as exc:
        raise LanguageUnknown(str(exc)) from exc
