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


# ------------------------------------------------------------------------------ tiny models of the other families
FAMILY_IMAGE_SIZE = 32  # the tiny families' image size (4 x 4 patches of 8 px)
TINY_WIDTH = 32


def make_clip_bpe_tokenizer(out_dir: str | os.PathLike, num_merges: int | None = 2000):
    """OpenAI's CLIP tokenizer (byte-level BPE, lower-cased) from the vocabulary file that open_clip ships
    (`bpe_simple_vocab_16e6.txt.gz`), saved in `out_dir` as a transformers `CLIPTokenizer`.

    The vocabulary is built as open_clip's `SimpleTokenizer` builds it: the 256 byte symbols, the same with the
    end-of-word mark, the merges in order, then `<|startoftext|>` and `<|endoftext|>`. `num_merges` keeps the first
    merges only (a smaller, self-consistent vocabulary for tiny test models); None keeps all 48894 (49408 tokens,
    the real tokenizer). Needs open_clip_torch (the dev extra)."""
    import gzip

    from transformers import CLIPTokenizer

    try:
        import open_clip
        from open_clip.tokenizer import bytes_to_unicode
    except ImportError as error:
        raise ImportError(
            'the CLIP test tokenizer is built from open_clip\'s vocabulary file: pip install "rsmclip[dev]"'
        ) from error

    path = Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    if num_merges is not None:
        merges = merges[:num_merges]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(
        json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8"
    )
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(out_dir / "vocab.json"), merges=str(out_dir / "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(out_dir)
    return CLIPTokenizer.from_pretrained(out_dir)


def make_siglip_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 1000):
    """A SigLIP tokenizer (SentencePiece unigram, `</s>` = padding and end, as Google's) trained on the bundled
    multilingual captions, saved in `out_dir`."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample_captions()),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    (out_dir / "spiece.model").write_bytes(buffer.getvalue())
    tokenizer = SiglipTokenizer(vocab_file=str(out_dir / "spiece.model"), model_max_length=64)
    tokenizer.save_pretrained(out_dir)
    return SiglipTokenizer.from_pretrained(out_dir)


def make_siglip2_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 1000):
    """A SigLIP 2 tokenizer (`Siglip2Tokenizer`: Gemma-style byte-level BPE, lower-cased, padded on the left) with a
    BPE vocabulary trained on the bundled multilingual captions, saved in `out_dir`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # Siglip2Tokenizer's ids 0..4
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "\u2581")])
    bpe.pre_tokenizer = pre_tokenizers.Split(pattern="\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    bpe.train_from_iterator(sample_captions(), trainer)
    state = json.loads(bpe.to_str())["model"]
    tokenizer = Siglip2Tokenizer(
        vocab=state["vocab"], merges=[tuple(pair) for pair in state["merges"]], model_max_length=64
    )
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Siglip2Tokenizer.from_pretrained(out_dir)


def _tower(**overrides):
    return dict(
        hidden_size=TINY_WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **overrides
    )


def make_tiny_family_model(family: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A randomly initialised tiny model of a Hub-native family (``"clip"``, ``"siglip"``, ``"siglip2"`` or
    ``"altclip"``), with its real processor class and a real tokenizer (CLIP's BPE, a SentencePiece model trained on
    the bundled captions for SigLIP, the XLM-R-style one for AltCLIP), saved with `save_pretrained` in `out_dir`:
    a folder `AutoModel` / `AutoProcessor` load as they load the released checkpoints."""
    import torch
    import transformers as tf

    out_dir = Path(out_dir)
    size, patch = FAMILY_IMAGE_SIZE, 8
    vision = _tower(image_size=size, patch_size=patch)
    if family == "clip":
        tokenizer = make_clip_bpe_tokenizer(out_dir / "tokenizer-src")
        text = _tower(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        config = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        image_processor = tf.CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        model_class, processor = tf.CLIPModel, tf.CLIPProcessor(image_processor, tokenizer)
    elif family in ("siglip", "siglip2"):
        make = make_siglip_tokenizer if family == "siglip" else make_siglip2_tokenizer
        tokenizer = make(out_dir / "tokenizer-src")
        text = _tower(
            vocab_size=len(tokenizer),
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        if family == "siglip":
            config = tf.SiglipConfig(text_config=text, vision_config=vision)
            image_processor = tf.SiglipImageProcessor(size={"height": size, "width": size})
            model_class, processor = tf.SiglipModel, tf.SiglipProcessor(image_processor, tokenizer)
        else:
            vision = _tower(patch_size=patch, num_patches=(size // patch) ** 2)
            config = tf.Siglip2Config(text_config=text, vision_config=vision)
            image_processor = tf.Siglip2ImageProcessor(patch_size=patch, max_num_patches=(size // patch) ** 2)
            model_class, processor = tf.Siglip2Model, tf.Siglip2Processor(image_processor, tokenizer)
    elif family == "altclip":
        make_tiny_tokenizer(out_dir / "tokenizer-src")
        tokenizer = tf.XLMRobertaTokenizer.from_pretrained(out_dir / "tokenizer-src", model_max_length=77)
        text = _tower(vocab_size=len(tokenizer), max_position_embeddings=80, project_dim=TINY_WIDTH)
        config = tf.AltCLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        image_processor = tf.CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        model_class, processor = tf.AltCLIPModel, tf.AltCLIPProcessor(image_processor, tokenizer)
    else:
        raise ValueError(f"no tiny model for family {family!r}; choose clip, siglip, siglip2 or altclip")
    torch.manual_seed(seed)
    model = model_class(config).eval()
    folder = out_dir / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_tiny_converted_clip(out_dir: str | os.PathLike, seed: int = 0, quick_gelu: bool = True) -> Path:
    """A tiny OpenCLIP CLIP (the standard architecture of OpenAI CLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP: a ViT and
    OpenCLIP's causal text transformer, QuickGELU as OpenAI-trained weights) made by open_clip itself with random
    weights (2 layers, width 32, 32 px images of 8 px patches, the real 49408-token vocabulary), written as an
    OpenCLIP checkpoint folder and converted by `rsmclip convert` (`conversion.convert_open_clip`) into an
    `RSMCLIPModel` with the CLIP text tower. Returns the converted folder (``out_dir / "model"``); the OpenCLIP
    folder is ``out_dir / "open_clip"``. Needs open_clip_torch (the dev extra)."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    from .conversion.convert import convert_open_clip

    out_dir = Path(out_dir)
    source = out_dir / "open_clip"
    source.mkdir(parents=True, exist_ok=True)
    cfg: dict = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": FAMILY_IMAGE_SIZE,
            "patch_size": 8,
            "layers": 2,
            "width": TINY_WIDTH,
            "head_width": 8,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": TINY_WIDTH, "heads": 2, "layers": 2},
    }
    if quick_gelu:
        cfg["quick_gelu"] = True
    (source / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(seed)
    model = CLIP(**cfg)
    with torch.no_grad():  # every tensor random (LayerNorms and zero-initialised biases included)
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(source / "open_clip_model.safetensors"),
    )
    return convert_open_clip(source, out_dir / "model", config_overrides={"dino_out_dim": 64})
