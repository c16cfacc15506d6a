"""Translation cache and the transformers translation path, with tiny randomly initialised models.

The models are built here (no downloads): their translations are meaningless, but tokenisation, batching,
language selection, de-duplication, caching and resume are the real code paths. They run in float64 so
that greedy decoding of a padded batch matches one-by-one decoding exactly.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from _shared_data import need_shared_data

from modeling_rsmclip.data import (
    HFTranslator,
    MissingTranslationsError,
    TranslationCache,
    build_dataset,
    translate_texts,
)
from modeling_rsmclip.templates import PROMPT_TEMPLATES
from modeling_rsmclip.testing import shared_data_dir

SHARED_DATA = shared_data_dir()
UCM = SHARED_DATA / "ucm-captions"
RSSCN7 = SHARED_DATA / "rsscn7-mini"
TARGETS = ("pt", "es", "fr", "de", "nl", "it", "zh", "ko", "ru")


@pytest.fixture(autouse=True)
def _real_data():
    """ucm-captions: skip without it, or fail where the real data is required (CI)."""
    need_shared_data("ucm-captions", "dataset.json")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models are ~10x faster on one thread than with threads fighting over shared cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _ucm_images() -> list[dict]:
    return json.loads((UCM / "dataset.json").read_text(encoding="utf-8"))["images"]


def _distinct_captions() -> list[str]:
    return sorted({sentence["raw"] for image in _ucm_images() for sentence in image["sentences"]})


def _train_sentencepiece(texts: list[str], vocab_size: int = 300) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        bos_id=0,
        pad_id=1,
        eos_id=2,
        unk_id=3,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


@pytest.fixture(scope="module")
def tiny_m2m100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random M2M100 model with an M2M100 tokenizer (sentencepiece trained on UCM captions)."""
    import sentencepiece as spm
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

    out = tmp_path_factory.mktemp("tiny-m2m100")
    proto = _train_sentencepiece(_distinct_captions())
    (out / "sentencepiece.bpe.model").write_bytes(proto)
    processor = spm.SentencePieceProcessor(model_proto=proto)
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    vocab.update({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3})
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = M2M100Tokenizer(
        vocab_file=str(out / "vocab.json"), spm_file=str(out / "sentencepiece.bpe.model")
    )
    torch.manual_seed(0)
    config = M2M100Config(
        vocab_size=len(vocab) + 108,  # + the 100 language tokens and 8 made-up words M2M100 tokenizers append
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=128,
        init_std=1.0,  # large random weights: outputs that depend on the input
        scale_embedding=False,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    M2M100ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def translator(tiny_m2m100: Path) -> HFTranslator:
    return HFTranslator(str(tiny_m2m100), device="cpu", dtype="float64", max_new_tokens=8)


class Recording:
    """Wraps a translator, records every batch it is asked for, and can simulate a crash."""

    def __init__(
        self, inner: HFTranslator, crash_after_batches: int | None = None, oom_above: int | None = None
    ):
        self.inner = inner
        self.name = inner.name
        self.crash_after_batches = crash_after_batches
        self.oom_above = oom_above
        self.calls: list[tuple[str, list[str]]] = []

    def translate(self, texts, target_lang):
        import torch

        if self.crash_after_batches is not None and len(self.calls) >= self.crash_after_batches:
            raise KeyboardInterrupt("simulated crash")
        if self.oom_above is not None and len(texts) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        self.calls.append((target_lang, list(texts)))
        return self.inner.translate(texts, target_lang)

    def texts(self, lang: str) -> list[str]:
        return [text for call_lang, batch in self.calls if call_lang == lang for text in batch]


def test_shipped_cache_is_used_as_is() -> None:
    cache = TranslationCache(UCM / "translations")
    captions = [sentence["raw"] for image in _ucm_images() for sentence in image["sentences"]]
    assert len(captions) == 10_500 and len(set(captions)) == 2_032
    for lang in TARGETS:
        assert cache.size(lang) == 2_032
        assert cache.missing(lang, captions) == []
    shipped = json.loads((UCM / "translations" / "pt.json").read_text(encoding="utf-8"))
    assert cache.get("pt", shipped[0]["en"]) == shipped[0]["text"]
    # Exact strings: the double-spaced caption and its single-spaced twin are two cache entries.
    double = "An intersection  with some houses and plants at the corners ."
    assert cache.get("pt", double) is not None and cache.get("pt", " ".join(double.split())) is not None


def test_cache_appends_in_the_shipped_format(tmp_path: Path) -> None:
    shutil.copy(UCM / "translations" / "pt.json", tmp_path / "pt.json")
    original = (tmp_path / "pt.json").read_bytes()
    cache = TranslationCache(tmp_path)
    cache.flush()  # nothing new: the file is not rewritten
    assert (tmp_path / "pt.json").read_bytes() == original
    cache.add("pt", {"A brand new caption .": "Uma legenda nova."})
    cache.flush("pt")
    text = (tmp_path / "pt.json").read_text(encoding="utf-8")
    entries = json.loads(text)
    assert entries[:-1] == json.loads(original)
    assert entries[-1] == {"id": 2032, "en": "A brand new caption .", "text": "Uma legenda nova."}
    assert text == json.dumps(entries, ensure_ascii=False, indent=0)
    assert text.startswith(original.decode("utf-8")[:-2])  # old entries untouched, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pt.json"]  # no temporary files left behind
    assert TranslationCache(tmp_path).get("pt", "A brand new caption .") == "Uma legenda nova."


def test_cache_rejects_malformed_files_and_ignores_empty_translations(tmp_path: Path) -> None:
    (tmp_path / "de.json").write_text(
        '[{"id": 0, "en": "a", "text": "b"}, {"id": 1, "en": "c"}]', encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"de\.json, entry 1"):
        TranslationCache(tmp_path).get("de", "a")
    (tmp_path / "fr.json").write_text('[{"id": 0, "en": "x", "text": "  "}]', encoding="utf-8")
    assert TranslationCache(tmp_path).missing("fr", ["x"]) == ["x"]


def test_missing_translations_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MissingTranslationsError, match=r"pt: 1 .*--translation-model"):
        translate_texts(
            ["An unseen caption ."], ["en", "pt"], TranslationCache(tmp_path), None, progress=False
        )


def test_language_tokens_are_forced(translator: HFTranslator) -> None:
    for lang in TARGETS:
        selection = translator.language_selection(lang)
        assert selection.scheme == "m2m100"
        assert selection.forced_bos_token_id == translator.tokenizer.get_lang_id(lang)
        assert selection.source_code == "en"


def test_batch_translation_equals_one_by_one(translator: HFTranslator) -> None:
    texts = _distinct_captions()[::150][:12]
    assert len({len(text) for text in texts}) > 3  # different lengths: the batch is padded
    batched = translator.translate(texts, "pt")
    single = [translator.translate([text], "pt")[0] for text in texts]
    assert batched == single
    assert len(set(batched)) > 1, "the random model should depend on its input"
    assert all(output and "__pt__" not in output for output in batched)


def test_interrupted_run_resumes_without_redoing_work(
    translator: HFTranslator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captions = [sentence["raw"] for image in _ucm_images()[::100] for sentence in image["sentences"]]
    distinct = list(dict.fromkeys(captions))
    assert len(distinct) < len(captions), "the sample should contain duplicate captions"
    languages = ["en", "pt", "es"]

    first = Recording(translator, crash_after_batches=3)
    with pytest.raises(KeyboardInterrupt):
        translate_texts(captions, languages, TranslationCache(tmp_path), first, batch_size=8)
    done_first = first.texts("pt")
    assert len(done_first) == 24 and len(set(done_first)) == 24
    on_disk = json.loads((tmp_path / "pt.json").read_text(encoding="utf-8"))
    assert [entry["en"] for entry in on_disk] == done_first  # every finished batch was flushed
    assert not (tmp_path / "es.json").exists()

    second = Recording(translator)
    stats = translate_texts(captions, languages, TranslationCache(tmp_path), second, batch_size=8)
    for lang in ("pt", "es"):
        sent = second.texts(lang)
        assert len(sent) == len(set(sent)), f"a {lang} caption was translated twice"
    assert set(second.texts("pt")) == set(distinct) - set(done_first)
    assert set(second.texts("es")) == set(distinct)
    assert stats["pt"].cached == 24 and stats["pt"].translated == len(distinct) - 24
    assert stats["es"].translated == len(distinct) and not stats["pt"].failed
    assert "translating" in capsys.readouterr().err  # the progress bar

    third = Recording(translator)
    stats = translate_texts(captions, languages, TranslationCache(tmp_path), third, batch_size=8)
    assert third.calls == [] and stats["es"].cached == len(distinct)

    # Translations made in different batch compositions equal one-by-one greedy translations.
    final = TranslationCache(tmp_path)
    assert final.size("pt") == final.size("es") == len(distinct)
    for text in distinct[::9]:
        assert final.get("pt", text) == translator.translate([text], "pt")[0]


def test_out_of_memory_halves_the_batch(translator: HFTranslator, tmp_path: Path) -> None:
    texts = _distinct_captions()[:10]
    recording = Recording(translator, oom_above=3)
    stats = translate_texts(
        texts, ["pt"], TranslationCache(tmp_path), recording, batch_size=16, progress=False
    )
    assert stats["pt"].translated == 10
    assert max(len(batch) for _, batch in recording.calls) == 2  # 16 -> 8 -> 4 -> 2
    assert sorted(recording.texts("pt")) == sorted(texts)


def test_empty_outputs_are_not_cached(translator: HFTranslator, tmp_path: Path) -> None:
    class DropsOne(Recording):
        def translate(self, texts, target_lang):
            outputs = super().translate(texts, target_lang)
            return ["" if text == victim else output for text, output in zip(texts, outputs)]

    texts = _distinct_captions()[:5]
    victim = texts[2]
    stats = translate_texts(texts, ["ko"], TranslationCache(tmp_path), DropsOne(translator), progress=False)
    assert stats["ko"].failed == [victim] and stats["ko"].translated == 4
    assert TranslationCache(tmp_path).missing("ko", texts) == [victim]  # a rerun retries it


def _small_karpathy(tmp_path: Path, count: int) -> Path:
    images = _ucm_images()[::100][:count]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    return path


def test_build_translates_once_then_reuses_the_cache(translator: HFTranslator, tmp_path: Path) -> None:
    annotations = _small_karpathy(tmp_path, 6)
    cache_dir = tmp_path / "translations"
    recording = Recording(translator)
    kwargs = dict(
        source="ucm-captions",
        annotations=annotations,
        images=UCM / "images",
        languages="en,pt,ko",
        translations_cache=cache_dir,
        translation_batch_size=4,
        cache_dir=tmp_path / "arrow",
        progress=False,
    )
    dataset, report = build_dataset("karpathy", translator=recording, **kwargs)
    english = [
        sentence["raw"]
        for image in json.loads(annotations.read_text())["images"]
        for sentence in image["sentences"]
    ]
    assert sorted(recording.texts("pt")) == sorted(set(english)) == sorted(recording.texts("ko"))
    assert report.ok and report.translation["pt"]["translated"] == len(set(english))
    assert report.translation_model == translator.name
    cache = TranslationCache(cache_dir)
    rows = [row for split in dataset.values() for row in split.remove_columns("image")]
    assert len(rows) == 6
    for row in rows:
        by_lang = {
            lang: [c["text"] for c in row["captions"] if c["lang"] == lang] for lang in ("en", "pt", "ko")
        }
        assert [len(texts) for texts in by_lang.values()] == [5, 5, 5]
        assert by_lang["pt"] == [cache.get("pt", text) for text in by_lang["en"]]

    again = Recording(translator)
    dataset2, report2 = build_dataset("karpathy", translator=again, **kwargs)
    assert again.calls == [] and report2.translation["ko"]["cached"] == len(set(english))
    assert report2.translation_model is None  # nothing was translated this time
    rows2 = [row for split in dataset2.values() for row in split.remove_columns("image")]
    assert rows2 == rows


def test_unknown_class_names_are_translated_and_cached(translator: HFTranslator, tmp_path: Path) -> None:
    root = tmp_path / "folder"
    for label, source in (("solar_farm", "industry"), ("sea_ice", "river_lake")):
        (root / label).mkdir(parents=True)
        for image in sorted((RSSCN7 / source).iterdir())[:2]:
            shutil.copy(image, root / label / image.name)
    common = dict(
        source="my-set", images=root, languages="en,de", cache_dir=tmp_path / "arrow", progress=False
    )
    with pytest.raises(MissingTranslationsError, match="solar_farm"):
        build_dataset("imagefolder", **common)

    recording = Recording(translator)
    dataset, report = build_dataset(
        "imagefolder",
        translator=recording,
        translations_cache=tmp_path / "cache",
        split_ratios=(1, 0, 0),
        **common,
    )
    assert sorted(recording.texts("de")) == ["sea ice", "solar farm"]
    german = TranslationCache(tmp_path / "cache").get("de", "solar farm")
    row = next(r for r in dataset["train"].remove_columns("image") if r["label"] == "solar_farm")
    assert [c["text"] for c in row["captions"] if c["lang"] == "de"] == [
        t.format(german) for t in PROMPT_TEMPLATES["de"]
    ]
    assert [c["text"] for c in row["captions"] if c["lang"] == "en"][0] == PROMPT_TEMPLATES["en"][0].format(
        "solar farm"
    )

    names = {"solar_farm": {"en": "a solar farm", "de": "ein Solarpark"}, "sea_ice": {"de": "Meereis"}}
    dataset, _ = build_dataset("imagefolder", class_names=names, split_ratios=(1, 0, 0), **common)
    texts = {c["text"] for r in dataset["train"].remove_columns("image") for c in r["captions"]}
    assert PROMPT_TEMPLATES["de"][1].format("ein Solarpark") in texts
    assert PROMPT_TEMPLATES["en"][1].format("a solar farm") in texts
    assert PROMPT_TEMPLATES["en"][1].format("sea ice") in texts  # English falls back to the folder name


def test_decoder_only_instruction_model(tmp_path: Path) -> None:
    import sentencepiece as spm
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    proto = _train_sentencepiece(_distinct_captions())
    processor = spm.SentencePieceProcessor(model_proto=proto)
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    backend = Tokenizer(models.Unigram(pieces, unk_id=3))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = "{% for m in messages %}<s>user: {{ m['content'] }}\n{% endfor %}assistant:"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(pieces),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=1.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny-llm")
    tokenizer.save_pretrained(tmp_path / "tiny-llm")

    llm = HFTranslator(str(tmp_path / "tiny-llm"), device="cpu", dtype="float64", max_new_tokens=6)
    assert llm.language_selection("pt").scheme == "prompt"
    assert llm.tokenizer.padding_side == "left"
    prompt = llm._prompt("A caption .", "pt")
    assert prompt.startswith(
        "<s>user: Translate the following text from English into Portuguese.\nEnglish: A caption ."
    )
    texts = _distinct_captions()[::300][:6]
    batched = llm.translate(texts, "pt")
    assert batched == [llm.translate([text], "pt")[0] for text in texts]
    assert len(batched) == 6 and all("\n" not in text for text in batched)
