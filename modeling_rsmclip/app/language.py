"""Which of the ten languages a short query is written in.

Short captions and queries ("muitos aviões no aeroporto") are too short for statistical language identifiers, but
the ten languages split cleanly: three by script (Han -> zh, Hangul -> ko, Cyrillic -> ru), and the seven that use
the Latin alphabet by their function words, letters and scene vocabulary. Each Latin-script language scores one point per known function
word and per characteristic letter, and a share of a point per word of its scene-class names (the package's
class-name tables, `class_names.json`: a word shared by k languages gives each 1/k), so that a comma-separated
list of class names ("floresta, praia, porto, campo de ténis"), which has almost no function words, is read by
its nouns. The highest score wins, English on a tie or when nothing matches (the model reads every language, so a
wrong guess only changes the prompt templates, never the search).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from pathlib import Path

from ..templates import LANGUAGES

AUTO = "auto"

# Function words that are frequent in captions and queries and rare in the other six Latin-script languages.
_FUNCTION_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the a an of and is are there in on with some many near next to by its it this two three several "
        "lots large small green white buildings".split()
    ),
    "pt": frozenset(
        "o os um uma uns umas de do da dos das e é são há em no na nos nas com muitos muitas alguns algumas "
        "perto ao lado pelo pela dois duas três vários várias está estão aqui".split()
    ),
    "es": frozenset(
        "el los la las un una unos unas de del y es son hay en con muchos muchas algunos algunas cerca al lado "
        "por dos tres varios varias está están aquí junto".split()
    ),
    "fr": frozenset(
        "le les la un une des de du et est sont il y a dans sur avec beaucoup quelques près à côté par deux "
        "trois plusieurs au aux ce cette voici est c' d' qu' autres".split()
    ),
    "de": frozenset(
        "der die das ein eine einer eines einem einen und ist sind es gibt in im auf mit viele einige neben "
        "nahe von zwei drei mehrere am hier dem den an auf zahlreiche".split()
    ),
    "nl": frozenset(
        "de het een van en is zijn er in op met veel enkele naast bij door twee drie meerdere staan ligt hier "
        "wat".split()
    ),
    "it": frozenset(
        "il lo la i gli le un uno una di del della dei delle e è sono ci c'è in nel nella con molti molte "
        "alcuni alcune vicino accanto al alla da due tre diversi diverse qui per sul sulla sui tanti tante poche "
        "pochi dell' all' nell' un'".split()
    ),
}

# Letters (after lower-casing) that point to one language among the seven.
_LETTERS: dict[str, str] = {
    "ã": "pt",
    "õ": "pt",
    "ç": "pt",
    "ñ": "es",
    "¿": "es",
    "¡": "es",
    "ß": "de",
    "ä": "de",
    "ö": "de",
    "ü": "de",
    "ù": "it",
    "ì": "it",
    "ò": "it",
    "œ": "fr",
    "ë": "nl",
    "ï": "nl",
}

# Words, with an elided article or preposition ("c'", "dell'") kept as its own token.
_WORD = re.compile(r"[^\W\d_]+'?", re.UNICODE)


_LATIN = ("en", "pt", "es", "fr", "de", "nl", "it")
_CLASS_NAMES_FILE = Path(__file__).resolve().parents[1] / "class_names.json"


@functools.cache
def _class_vocabulary() -> dict[str, dict[str, float]]:
    """word -> {language: weight} over the words of every scene-class name of the seven Latin-script languages.

    A word used by k of the languages (``"porto"``: Portuguese and Italian) weighs 1/k for each; function words
    (articles, prepositions) are left to `_FUNCTION_WORDS`, which already counts them.
    """
    names = json.loads(_CLASS_NAMES_FILE.read_text(encoding="utf-8"))["names"]
    users: dict[str, set[str]] = {}
    for translations in names.values():
        for lang in _LATIN:
            for word in _WORD.findall(translations.get(lang, "").lower()):
                users.setdefault(word, set()).add(lang)
    function_words = set().union(*_FUNCTION_WORDS.values())
    return {
        word: dict.fromkeys(langs, 1.0 / len(langs))
        for word, langs in users.items()
        if word not in function_words and len(word) > 2
    }


def _script(char: str) -> str | None:
    name = unicodedata.name(char, "")
    if name.startswith("CJK UNIFIED IDEOGRAPH") or name.startswith("CJK COMPATIBILITY IDEOGRAPH"):
        return "zh"
    if name.startswith("HANGUL"):
        return "ko"
    if name.startswith("CYRILLIC"):
        return "ru"
    return None


def detect_language(text: str) -> str:
    """The language code (one of `templates.LANGUAGES`) that `text` is most likely written in."""
    counts = {"zh": 0, "ko": 0, "ru": 0}
    for char in text:
        script = _script(char)
        if script:
            counts[script] += 1
    best_script = max(counts, key=counts.get)
    if counts[best_script]:
        return best_script
    lowered = text.lower()
    scores = dict.fromkeys(_FUNCTION_WORDS, 0.0)
    vocabulary = _class_vocabulary()
    for word in _WORD.findall(lowered):
        for lang, words in _FUNCTION_WORDS.items():
            if word in words:
                scores[lang] += 1.0
        for lang, weight in vocabulary.get(word, {}).items():
            scores[lang] += weight
        # Dutch "ij"/"oo"/"ee" words and German "sch" are frequent enough to break ties between the two.
        if "ij" in word:
            scores["nl"] += 0.5
        if "sch" in word and "schi" not in word:
            scores["de"] += 0.5
        if word.endswith(("ção", "ções")):
            scores["pt"] += 1.0
        if word.endswith(("ción", "ciones")):
            scores["es"] += 1.0
    for char in lowered:
        if char in _LETTERS:
            scores[_LETTERS[char]] += 1.0
    best = max(scores.values())
    if best == 0:
        return "en"
    # Ties go to the first language in LANGUAGES order (English first).
    return next(lang for lang in LANGUAGES if scores.get(lang) == best)


def resolve_language(language: str | None, text: str) -> str:
    """`language` when it is one of the ten codes, the detected language of `text` for "auto" / empty.

    Raises ValueError naming the supported codes for anything else.
    """
    choice = (language or AUTO).strip().lower()
    if choice == AUTO:
        return detect_language(text)
    if choice not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; choose one of: auto, {', '.join(LANGUAGES)}")
    return choice
