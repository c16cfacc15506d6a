"""Label-language detection of comma-separated label lists (the Classify and Segment tabs' boxes), per language.

Lists of class names have almost no function words, so they are read by their nouns: checked on every class name of
the package's tables (`class_names.json`, in lists of four) and on hand-written lists of bare nouns, most of them
absent from those tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modeling_rsmclip
from modeling_rsmclip.app.language import detect_language
from modeling_rsmclip.app.service import split_labels
from modeling_rsmclip.templates import LANGUAGES

_NAMES = json.loads(
    (Path(modeling_rsmclip.__file__).with_name("class_names.json")).read_text(encoding="utf-8")
)["names"]

# Bare nouns as a user types them: the first list of each language is the one of the Portuguese example; the second
# is made of words that no class name of the tables uses.
HAND_WRITTEN = {
    "en": ["forest, beach, harbour, tennis court", "river, road, houses, lake"],
    "pt": ["floresta, praia, porto, campo de ténis", "rio, estrada, edifícios, lago, montanha"],
    "es": ["bosque, playa, puerto, pista de tenis", "río, carretera, edificios, lago, montaña"],
    "fr": ["forêt, plage, port, court de tennis", "rivière, route, bâtiments, lac, montagne"],
    "de": ["Wald, Strand, Hafen, Tennisplatz", "Fluss, Straße, Gebäude, See, Berg"],
    "nl": ["bos, strand, haven, tennisbaan", "rivier, weg, gebouwen, meer, berg"],
    "it": ["foresta, spiaggia, porto, campo da tennis", "fiume, strada, edifici, lago, montagna"],
    "zh": ["森林, 海滩, 港口, 网球场", "河流，道路、湖泊"],
    "ko": ["숲, 해변, 항구, 테니스장", "강, 도로, 호수"],
    "ru": ["лес, пляж, гавань, теннисный корт", "река, дорога, озеро"],
}


def _table_lists(lang: str, size: int = 4) -> list[str]:
    names = [translations[lang] for translations in _NAMES.values() if lang in translations]
    return [", ".join(names[i : i + size]) for i in range(0, len(names), size)]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_comma_separated_class_names_of_the_tables(lang):
    lists = _table_lists(lang)
    assert len(lists) >= 25  # every concept of the tables, four per list
    wrong = [(text, detect_language(text)) for text in lists if detect_language(text) != lang]
    assert not wrong, wrong


@pytest.mark.parametrize("lang", LANGUAGES)
def test_hand_written_label_lists(lang):
    for text in HAND_WRITTEN[lang]:
        assert len(split_labels(text)) >= 3
        assert detect_language(text) == lang, text
        # The tabs detect on the parsed labels joined by spaces: the same answer.
        assert detect_language(" ".join(split_labels(text))) == lang, text


def test_the_portuguese_example_is_not_english():
    assert detect_language("floresta, praia, porto") == "pt"
    assert detect_language("floresta, praia, porto, campo de ténis") == "pt"
