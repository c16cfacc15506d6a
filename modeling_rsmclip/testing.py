"""Small real objects for tests and examples: a tokenizer trained on the bundled captions, a tiny model.

Nothing here is downloaded: the tokenizer is a SentencePiece unigram model trained on the multilingual UCM captions
shipped in `examples/sample/`, laid out exactly like XLM-RoBERTa's (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, ...,
`<mask>` last), so everything that works with it works with the real XLM-R tokenizer.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "sample"


def shared_data_dir() -> Path:
    """The real data beside the checkout: `$RSMCLIP_SHARED_DATA`, else `../shared/data` (it may be absent)."""
    return Path(os.environ.get("RSMCLIP_SHARED_DATA", SAMPLE_DIR.parents[2] / "shared" / "data"))


def sample_dir() -> Path:
    """The bundled sample data (`examples/sample`): UCM-Captions and RSSCN7 images in their public layouts."""
    if not (SAMPLE_DIR / "ucm" / "dataset.json").exists():
        raise FileNotFoundError(
            f"the bundled sample data is missing at {SAMPLE_DIR} (run scripts/make_sample.py)"
        )
    return SAMPLE_DIR


def sample_captions(root: str | os.PathLike | None = None) -> list[str]:
    """All captions of a Karpathy-format caption set in English and in every language of its translation cache."""
    root = Path(root) if root is not None else sample_dir() / "ucm"
    data = json.loads((root / "dataset.json").read_text())
    captions = [s["raw"] for entry in data["images"] for s in entry["sentences"]]
    for path in sorted((root / "translations").glob("*.json")):
        captions += [row["text"] for row in json.loads(path.read_text(encoding="utf-8"))]
    return captions


def train_xlmr_style_tokenizer(texts: list[str], out_dir: str | os.PathLike, vocab_size: int = 1000):
    """Train a SentencePiece unigram model on `texts` and save it as an XLM-RoBERTa tokenizer in `out_dir`.

    `vocab_size` is the final tokenizer size (special tokens included), so it can equal the text tower's
    `vocab_size`. Returns the loaded `RSMCLIPTokenizer` (an `XLMRobertaTokenizer`).
    """
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    from .processing_rsmclip import RSMCLIPTokenizer

    buffer = io.BytesIO()
    # XLM-R = SentencePiece's pieces with <s>, <pad>, </s>, <unk> first (4 instead of SentencePiece's 3) and <mask>
    # last: 2 more than the SentencePiece vocabulary.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buffer,
        vocab_size=vocab_size - 2,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        normalization_rule_name="nmt_nfkc",
        num_threads=1,
        minloglevel=2,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sentencepiece.bpe.model").write_bytes(buffer.getvalue())
        # transformers picks the SentencePiece converter by class name: convert as XLM-R (its id layout), then
        # reload the converted tokenizer.json as the subclass.
        XLMRobertaTokenizer.from_pretrained(tmp, model_max_length=77).save_pretrained(Path(tmp) / "converted")
        tokenizer = RSMCLIPTokenizer.from_pretrained(Path(tmp) / "converted", model_max_length=77)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    if (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) != (
        0,
        1,
        2,
        3,
    ):
        raise RuntimeError(f"tokenizer lost XLM-R's id layout (ids of 'a': {ids})")
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than vocab_size={vocab_size}")
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def make_tiny_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 1000):
    """An XLM-R-style tokenizer (`vocab_size` tokens) trained on the bundled multilingual captions."""
    return train_xlmr_style_tokenizer(sample_captions(), out_dir, vocab_size=vocab_size)


def write_open_clip_xlmr_b32(root: str | os.PathLike) -> tuple[Path, Path]:
    """An OpenCLIP ``local-dir:`` folder for ``xlm-roberta-base-ViT-B-32`` (the RS-M-CLIP architecture) under
    ``root``, with nothing to download: the text tower is configured from a local XLM-R base configuration and the
    folder carries the tiny test tokenizer. Returns ``(model folder, text configuration folder)``; load it with
    ``open_clip.create_model(f"local-dir:{folder}", pretrained_text=False)``. Needs open_clip_torch."""
    import open_clip
    from transformers import XLMRobertaConfig

    from .conversion.open_clip_config import KNOWN_TEXT_ARCHITECTURES

    root = Path(root)
    text_dir = root / "xlm-roberta-base-config"
    XLMRobertaConfig(**KNOWN_TEXT_ARCHITECTURES["xlm-roberta-base"]).save_pretrained(text_dir)
    model_cfg = open_clip.get_model_config("xlm-roberta-base-ViT-B-32")
    model_cfg["text_cfg"].update(hf_model_name=str(text_dir), hf_tokenizer_name=str(text_dir))
    source = root / "open_clip"
    source.mkdir(parents=True, exist_ok=True)
    (source / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    make_tiny_tokenizer(source)
    return source, text_dir


def make_processor(tokenizer, image_size: int):
    """An `RSMCLIPProcessor` with CLIP preprocessing at `image_size` pixels and `tokenizer`."""
    from .processing_rsmclip import RSMCLIPImageProcessor, RSMCLIPProcessor

    image_processor = RSMCLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return RSMCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def make_tiny_model_and_processor(tmp_path: str | os.PathLike, seed: int = 0, **config_overrides):
    """A randomly initialised `tiny`-preset model and its processor (tokenizer saved under `tmp_path/tokenizer`)."""
    import torch

    from .configuration_rsmclip import RSMCLIPConfig
    from .modeling_rsmclip import RSMCLIPModel

    config = RSMCLIPConfig.from_preset("tiny", **config_overrides)
    tokenizer = make_tiny_tokenizer(Path(tmp_path) / "tokenizer", vocab_size=config.text_config.vocab_size)
    torch.manual_seed(seed)
    model = RSMCLIPModel(config).eval()
    return model, make_processor(tokenizer, config.vision_config.image_size)
