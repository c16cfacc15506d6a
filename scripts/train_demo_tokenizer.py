"""Train the demo model's tokenizer: SentencePiece unigram, XLM-R id layout, on the TRAIN split captions only
(all languages) of a builder dataset, so that no test caption shapes the vocabulary."""

from __future__ import annotations

import argparse

from datasets import load_from_disk

from modeling_rsmclip.testing import train_xlmr_style_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="outputs/ucm-captions-multilingual")
    parser.add_argument("--out", default="outputs/demo-tokenizer")
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    train = load_from_disk(args.dataset)["train"].select_columns(["captions"])
    texts = sorted({c["text"] for row in train for c in row["captions"]})
    tokenizer = train_xlmr_style_tokenizer(texts, args.out, vocab_size=args.vocab_size)
    print(f"{len(texts)} distinct training captions -> {len(tokenizer)} tokens in {args.out}")


if __name__ == "__main__":
    main()
