"""OpenAI CLIP's byte-level BPE tokenizer, built offline from the vocabulary file that the `open_clip` package ships.

OpenCLIP tokenizes the standard CLIP models (OpenAI CLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP) with its
`SimpleTokenizer`, whose vocabulary is `bpe_simple_vocab_16e6.txt.gz`: 256 byte symbols, the same with the
end-of-word mark `</w>`, the first 48894 merges, then `<|startoftext|>` (49406) and `<|endoftext|>` (49407). The
same vocabulary and merges make a transformers `CLIPTokenizer` (`RSMCLIPBPETokenizer`, which also cleans texts and
pads as OpenCLIP does), so converted models need no download for their tokenizer.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from ..processing_rsmclip import RSMCLIPBPETokenizer
from .open_clip_keys import ConversionError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI CLIP's vocabulary: 256 bytes x 2 (with and without `</w>`) + 48894 merges + 2 special tokens.
NUM_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"


def open_clip_bpe_path() -> Path:
    """The BPE vocabulary file inside the installed `open_clip` package (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the CLIP tokenizer is built from OpenCLIP's vocabulary ({BPE_FILE}), which comes with the "
            f'open_clip_torch package (pip install "rsmclip[convert]")'
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILE
    if not path.is_file():
        raise ConversionError(f"{path}: not found in the installed open_clip package")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (the BPE's base symbols), in
    OpenCLIP's order: printable Latin-1 bytes first, then the rest mapped to U+0100 onwards."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes)))


def clip_bpe_vocabulary(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """`(vocab, merges)` of OpenAI CLIP's tokenizer, as OpenCLIP's `SimpleTokenizer` builds them."""
    path = Path(bpe_path) if bpe_path is not None else open_clip_bpe_path()
    try:
        lines = gzip.open(path).read().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: cannot read the BPE vocabulary ({error})") from error
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(merge) != 2 for merge in merges):
        raise ConversionError(
            f"{path}: expected {NUM_MERGES} merges of two symbols (OpenAI CLIP's vocabulary)"
        )
    symbols = list(bytes_to_unicode().values())
    tokens = [
        *symbols,
        *(s + "</w>" for s in symbols),
        *("".join(m) for m in merges),
        START_OF_TEXT,
        END_OF_TEXT,
    ]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ConversionError(
            f"{path}: the vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}"
        )
    return vocab, merges


def clip_bpe_tokenizer(bpe_path: str | Path | None = None) -> RSMCLIPBPETokenizer:
    """OpenAI CLIP's tokenizer as an `RSMCLIPBPETokenizer` (a transformers `CLIPTokenizer`): context 77, padding
    id 0, ids equal to `open_clip.tokenize`'s."""
    vocab, merges = clip_bpe_vocabulary(bpe_path)
    return RSMCLIPBPETokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=START_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
    )


__all__ = ["BPE_FILE", "clip_bpe_tokenizer", "clip_bpe_vocabulary", "open_clip_bpe_path"]
