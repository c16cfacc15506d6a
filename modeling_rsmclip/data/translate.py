"""Machine translation of English captions into the RS-M-CLIP languages, with a persistent cache.

The cache is a folder with one ``<lang>.json`` per target language, each a JSON list of
``{"id": int, "en": str, "text": str}`` entries (the format of the translation files shipped with
UCM-Captions). A caption found in the cache is never sent to the model again; new translations are
appended to the cache file after every batch (atomically), so an interrupted run loses at most the
batch in flight and a rerun continues where it stopped.

Any transformers translation model can fill the cache:

- encoder-decoder models (``AutoModelForSeq2SeqLM``): NLLB-200 (``facebook/nllb-200-distilled-600M``,
  ``facebook/nllb-200-3.3B``), M2M100 (``facebook/m2m100_418M``, ``facebook/m2m100_1.2B``) and mBART-50
  (``facebook/mbart-large-50-one-to-many-mmt``) select the target language with a forced first token;
  multi-target Marian models with ``>>xxx<<`` language tokens get the token prepended; a model name
  containing ``{lang}`` loads one model per language (e.g. single-pair Marian models);
- decoder-only instruction models (``AutoModelForCausalLM``), e.g. ``Unbabel/TowerInstruct-7B-v0.2``
  (the model family used for the RS-M-CLIP training captions), are prompted with
  ``Translate the following text from English into <Language>.`` through their chat template.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from ..safe_io import atomic_write_text
from ..templates import LANGUAGE_NAMES, LANGUAGES

SOURCE_LANGUAGE = "en"

# Language tokens of the common many-to-many translation models, for the RS-M-CLIP languages.
FLORES200_CODES = {
    "en": "eng_Latn",
    "pt": "por_Latn",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "de": "deu_Latn",
    "nl": "nld_Latn",
    "it": "ita_Latn",
    "zh": "zho_Hans",
    "ko": "kor_Hang",
    "ru": "rus_Cyrl",
}
MBART50_CODES = {
    "en": "en_XX",
    "pt": "pt_XX",
    "es": "es_XX",
    "fr": "fr_XX",
    "de": "de_DE",
    "nl": "nl_XX",
    "it": "it_IT",
    "zh": "zh_CN",
    "ko": "ko_KR",
    "ru": "ru_RU",
}
ISO639_3_CODES = {
    "en": "eng",
    "pt": "por",
    "es": "spa",
    "fr": "fra",
    "de": "deu",
    "nl": "nld",
    "it": "ita",
    "zh": "zho",
    "ko": "kor",
    "ru": "rus",
}

RECOMMENDED_MODELS = {
    "facebook/nllb-200-distilled-600M": "NLLB-200 distilled, 600M parameters: good quality/speed balance, CC-BY-NC-4.0",
    "facebook/nllb-200-3.3B": "NLLB-200, 3.3B parameters: best of the seq2seq models here, needs a GPU, CC-BY-NC-4.0",
    "facebook/m2m100_418M": "M2M100, 418M parameters: fast, MIT licence, lower quality than NLLB",
    "facebook/m2m100_1.2B": "M2M100, 1.2B parameters: MIT licence",
    "Unbabel/TowerInstruct-7B-v0.2": "TowerInstruct (decoder-only LLM) as in the RS-M-CLIP paper; covers exactly the "
    "ten languages, needs a GPU with >= 16 GB, CC-BY-NC-4.0",
}


class MissingTranslationsError(RuntimeError):
    """Captions lack a cached translation and no translation model was given."""


def _validate_language(lang: str) -> None:
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}; choose from {', '.join(LANGUAGES)}")


# --------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------


class TranslationCache:
    """English -> target-language translations, one JSON file per language in ``directory``.

    Keys are the English strings exactly as they appear in the annotations (no normalisation, so the
    shipped UCM-Captions files match the captions of ``dataset.json`` one to one). Entries with an empty
    ``text`` count as missing. When an English string appears more than once in a file, the last entry
    wins. ``directory=None`` keeps the cache in memory only.
    """

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._entries: dict[str, list[dict[str, Any]]] = {}
        self._index: dict[str, dict[str, str]] = {}
        self._next_id: dict[str, int] = {}
        self._dirty: set[str] = set()

    def path(self, lang: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{lang}.json"

    def _load(self, lang: str) -> dict[str, str]:
        if lang in self._index:
            return self._index[lang]
        entries: list[dict[str, Any]] = []
        path = self.path(lang)
        if path is not None and path.exists():
            try:
                entries = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"translation cache {path} is not valid JSON: {error}") from error
            if not isinstance(entries, list):
                raise ValueError(
                    f"translation cache {path} must hold a JSON list of {{id, en, text}} entries"
                )
            for position, entry in enumerate(entries):
                if (
                    not isinstance(entry, dict)
                    or not isinstance(entry.get("en"), str)
                    or not isinstance(entry.get("text"), str)
                ):
                    raise ValueError(
                        f"translation cache {path}, entry {position}: expected {{'id': int, 'en': str, 'text': str}},"
                        f" got {entry!r:.200}"
                    )
        index: dict[str, str] = {}
        for entry in entries:
            if entry["text"].strip():
                index[entry["en"]] = entry["text"]
        ids = [entry["id"] for entry in entries if isinstance(entry.get("id"), int)]
        self._entries[lang] = entries
        self._index[lang] = index
        self._next_id[lang] = max(ids, default=-1) + 1
        return index

    def get(self, lang: str, text: str) -> str | None:
        return self._load(lang).get(text)

    def __contains__(self, key: tuple[str, str]) -> bool:
        lang, text = key
        return text in self._load(lang)

    def size(self, lang: str) -> int:
        """The number of distinct English strings with a usable translation into ``lang``."""
        return len(self._load(lang))

    def missing(self, lang: str, texts: Iterable[str]) -> list[str]:
        """The distinct ``texts`` (first-seen order) without a usable translation into ``lang``."""
        index = self._load(lang)
        return list(dict.fromkeys(text for text in texts if text not in index))

    def add(self, lang: str, translations: Mapping[str, str]) -> None:
        """Record translations in memory; :meth:`flush` writes them. Empty translations are refused."""
        index = self._load(lang)
        for source, target in translations.items():
            if not target.strip():
                raise ValueError(f"refusing to cache an empty {lang} translation of {source!r}")
            self._entries[lang].append({"id": self._next_id[lang], "en": source, "text": target})
            self._next_id[lang] += 1
            index[source] = target
            self._dirty.add(lang)

    def flush(self, lang: str | None = None) -> None:
        """Atomically rewrite the cache file of ``lang`` (or of every changed language) if it changed."""
        if self.directory is None:
            self._dirty.clear()
            return
        for current in [lang] if lang is not None else sorted(self._dirty):
            if current not in self._dirty:
                continue
            self.directory.mkdir(parents=True, exist_ok=True)
            # indent=0, no ASCII escaping and no trailing newline: the format of the shipped cache files.
            atomic_write_text(
                self.path(current), json.dumps(self._entries[current], ensure_ascii=False, indent=0)
            )
            self._dirty.discard(current)


# --------------------------------------------------------------------------------------------------------------
# Translators
# --------------------------------------------------------------------------------------------------------------


@runtime_checkable
class Translator(Protocol):
    """Anything that turns a batch of English texts into a target language, one output per input."""

    name: str

    def translate(self, texts: Sequence[str], target_lang: str) -> list[str]: ...


@dataclass
class _LanguageSelection:
    """How a loaded model is told the target language."""

    scheme: str  # "flores200", "m2m100", "mbart50", "marian-prefix", "per-language-model" or "prompt"
    forced_bos_token_id: int | None = None
    source_code: str | None = None
    prefix: str = ""


def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str | None, device: str) -> Any:
    import torch

    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, float16, bfloat16 or float64")
    return getattr(torch, dtype)


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` if the tokenizer knows it as one token (not mapped to unknown), else None."""
    try:
        token_id = tokenizer.convert_tokens_to_ids(token)
    except (KeyError, ValueError, TypeError):
        return None
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return int(token_id) if tokenizer.convert_ids_to_tokens(int(token_id)) == token else None


class HFTranslator:
    """Translate with a transformers model (seq2seq or decoder-only), greedy by default.

    ``model_name_or_path`` is a Hub id or a local folder; a name containing ``{lang}`` is formatted with
    the target language and loads one model per language (the previous one is released). Batches are
    tokenised with padding (right for encoder-decoder models, left for decoder-only ones), so a batch
    translates exactly like its texts one by one up to floating-point summation order.
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str | None = "auto",
        dtype: str | None = "auto",
        max_new_tokens: int = 256,
        num_beams: int = 1,
        max_input_length: int = 512,
        source_lang: str = SOURCE_LANGUAGE,
        trust_remote_code: bool = False,
    ) -> None:
        self.name = model_name_or_path
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.max_input_length = max_input_length
        self.source_lang = source_lang
        self.trust_remote_code = trust_remote_code
        self.per_language = "{lang}" in model_name_or_path
        self._loaded_name: str | None = None
        self._selections: dict[tuple[str, str], _LanguageSelection] = {}
        self.model: Any = None
        self.tokenizer: Any = None
        self.is_encoder_decoder = False

    def _load(self, target_lang: str) -> None:
        name = self.name.format(lang=target_lang) if self.per_language else self.name
        if name == self._loaded_name:
            return
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        self.model = self.tokenizer = None  # release the previous per-language model first
        config = AutoConfig.from_pretrained(name, trust_remote_code=self.trust_remote_code)
        self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        model_class = AutoModelForSeq2SeqLM if self.is_encoder_decoder else AutoModelForCausalLM
        model = model_class.from_pretrained(name, dtype=self.dtype, trust_remote_code=self.trust_remote_code)
        self.model = model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=self.trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right" if self.is_encoder_decoder else "left"
        self._loaded_name = name

    def language_selection(self, target_lang: str) -> _LanguageSelection:
        """Find how the loaded tokenizer names ``target_lang`` (NLLB, M2M100, mBART-50, Marian tokens)."""
        _validate_language(target_lang)
        self._load(target_lang)
        key = (self._loaded_name or "", target_lang)
        if key not in self._selections:
            self._selections[key] = self._find_language_selection(target_lang)
        return self._selections[key]

    def _find_language_selection(self, target_lang: str) -> _LanguageSelection:
        if not self.is_encoder_decoder:
            return _LanguageSelection("prompt")
        tokenizer = self.tokenizer
        candidates = (
            ("flores200", FLORES200_CODES[target_lang], FLORES200_CODES[self.source_lang]),
            ("m2m100", f"__{target_lang}__", self.source_lang),
            ("mbart50", MBART50_CODES[target_lang], MBART50_CODES[self.source_lang]),
        )
        for scheme, token, source_code in candidates:
            token_id = _token_id(tokenizer, token)
            if token_id is not None:
                return _LanguageSelection(scheme, forced_bos_token_id=token_id, source_code=source_code)
        marian_token = f">>{ISO639_3_CODES[target_lang]}<<"
        if _token_id(tokenizer, marian_token) is not None:
            return _LanguageSelection("marian-prefix", prefix=marian_token + " ")
        if self.per_language:
            return _LanguageSelection("per-language-model")
        raise ValueError(
            f"cannot tell how {self.name!r} selects the target language {target_lang!r}: its tokenizer has no "
            f"NLLB ({FLORES200_CODES[target_lang]}), M2M100 (__{target_lang}__), mBART-50 "
            f"({MBART50_CODES[target_lang]}) or Marian ({marian_token}) language token. For single-pair models, "
            "pass a name with a {lang} placeholder, e.g. 'Helsinki-NLP/opus-mt-en-{lang}'."
        )

    def _prompt(self, text: str, target_lang: str) -> str:
        source_name, target_name = LANGUAGE_NAMES[self.source_lang], LANGUAGE_NAMES[target_lang]
        content = f"Translate the following text from {source_name} into {target_name}.\n{source_name}: {text}\n{target_name}:"
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        return content

    def translate(self, texts: Sequence[str], target_lang: str) -> list[str]:
        import torch

        if not texts:
            return []
        selection = self.language_selection(target_lang)
        tokenizer = self.tokenizer
        generate_kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": False,
        }
        if selection.scheme == "prompt":
            prompts = [self._prompt(text, target_lang) for text in texts]
            has_template = bool(getattr(tokenizer, "chat_template", None))
            inputs = tokenizer(
                prompts, return_tensors="pt", padding=True, add_special_tokens=not has_template
            )
        else:
            if selection.source_code is not None and hasattr(tokenizer, "src_lang"):
                tokenizer.src_lang = selection.source_code
            if selection.forced_bos_token_id is not None:
                generate_kwargs["forced_bos_token_id"] = selection.forced_bos_token_id
            inputs = tokenizer(
                [selection.prefix + text for text in texts],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_input_length,
            )
        inputs = {
            key: value.to(self.device)
            for key, value in inputs.items()
            if key in ("input_ids", "attention_mask")
        }
        if tokenizer.pad_token_id is not None:
            generate_kwargs["pad_token_id"] = tokenizer.pad_token_id
        with torch.inference_mode():
            output = self.model.generate(**inputs, **generate_kwargs)
        if not self.is_encoder_decoder:
            output = output[:, inputs["input_ids"].shape[1] :]
        elif selection.forced_bos_token_id is not None and tokenizer.pad_token_id is not None:
            # The forced language token is not always registered as special: blank it before decoding.
            output = output.masked_fill(output == selection.forced_bos_token_id, tokenizer.pad_token_id)
        decoded = tokenizer.batch_decode(output, skip_special_tokens=True)
        if selection.scheme == "prompt":
            # Instruction models sometimes keep talking after the translation: keep its first line.
            decoded = [text.strip().split("\n", 1)[0] for text in decoded]
        return [text.strip() for text in decoded]


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TranslationStats:
    """Per-language outcome of :func:`translate_texts`."""

    distinct: int = 0
    cached: int = 0
    translated: int = 0
    failed: list[str] = field(default_factory=list)  # English texts whose translation came back empty

    def as_counts(self) -> dict[str, int]:
        return {
            "distinct": self.distinct,
            "cached": self.cached,
            "translated": self.translated,
            "failed": len(self.failed),
        }


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def translate_texts(
    texts: Iterable[str],
    languages: Sequence[str],
    cache: TranslationCache,
    translator: Translator | None = None,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, TranslationStats]:
    """Make sure every distinct text has a cached translation into every language.

    Each distinct English string is translated at most once per language: strings already in ``cache``
    are skipped, the rest are sorted by length (similar lengths batch with little padding) and
    translated in batches of ``batch_size``; the cache file is rewritten after every batch. A CUDA
    out-of-memory error halves the batch size and retries. Empty outputs are not cached and are listed
    in ``TranslationStats.failed``. Without a translator, missing translations raise
    :class:`MissingTranslationsError`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    distinct = list(dict.fromkeys(texts))
    targets = [lang for lang in languages if lang != SOURCE_LANGUAGE]
    for lang in targets:
        _validate_language(lang)
    stats = {lang: TranslationStats(distinct=len(distinct)) for lang in targets}
    todo: dict[str, list[str]] = {}
    for lang in targets:
        missing = cache.missing(lang, distinct)
        stats[lang].cached = len(distinct) - len(missing)
        if missing:
            # Longest first: an out-of-memory error shows up on the first batch, not after an hour.
            todo[lang] = sorted(missing, key=len, reverse=True)
    if not todo:
        return stats
    if translator is None:
        details = "; ".join(f"{lang}: {len(items)} (e.g. {items[0]!r})" for lang, items in todo.items())
        where = f" in {cache.directory}" if cache.directory is not None else ""
        raise MissingTranslationsError(
            f"{sum(map(len, todo.values()))} caption translations are missing from the cache{where} ({details}). "
            "Give a translation model (--translation-model) or a cache that covers them."
        )
    if cache.directory is not None and cache.directory.exists() and not os.access(cache.directory, os.W_OK):
        raise PermissionError(
            f"translation cache {cache.directory} is not writable: copy it to a writable folder and pass that "
            "folder, so new translations can be saved"
        )
    total = sum(map(len, todo.values()))
    with tqdm(
        total=total, desc="translating", unit="caption", disable=not progress, dynamic_ncols=True
    ) as bar:
        for lang, pending in todo.items():
            bar.set_postfix_str(f"{lang}, batch {batch_size}")
            start = 0
            while start < len(pending):
                batch = pending[start : start + batch_size]
                try:
                    outputs = translator.translate(batch, lang)
                except (RuntimeError, MemoryError) as error:
                    if batch_size > 1 and _is_out_of_memory(error):
                        batch_size = max(1, batch_size // 2)
                        bar.set_postfix_str(f"{lang}, batch {batch_size} (out of memory, halved)")
                        _empty_cuda_cache()
                        continue
                    raise
                if len(outputs) != len(batch):
                    raise RuntimeError(
                        f"translator {translator.name!r} returned {len(outputs)} texts for a batch of {len(batch)}"
                    )
                good = {}
                for source, target in zip(batch, outputs):
                    if target.strip():
                        good[source] = target
                    else:
                        stats[lang].failed.append(source)
                cache.add(lang, good)
                cache.flush(lang)
                stats[lang].translated += len(good)
                bar.update(len(batch))
                start += len(batch)
    return stats


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
