"""Zero-shot classification and multilingual retrieval with an RS-M-CLIP model, on the bundled sample images.

python examples/zero_shot_and_retrieval.py --model path/to/model   # a converted or trained model folder
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from transformers import pipeline

import modeling_rsmclip  # noqa: F401  (registers the model type)
from modeling_rsmclip.templates import PROMPT_TEMPLATES, class_name
from modeling_rsmclip.testing import sample_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    args = parser.parse_args()

    rsscn7 = sample_dir() / "rsscn7"
    classes = sorted(p.name for p in rsscn7.iterdir() if p.is_dir())
    classifier = pipeline("zero-shot-image-classification", model=args.model)
    for lang in ("en", "fr", "ko"):
        labels = [class_name("rsscn7", c, lang) for c in classes]
        for path in sorted(rsscn7.glob("*/*.jpg"))[:3]:
            best = classifier(
                Image.open(path), candidate_labels=labels, hypothesis_template=PROMPT_TEMPLATES[lang][0]
            )[0]
            print(f"[{lang}] {path.parent.name:12s} -> {best['label']} ({best['score']:.2f})")

    retriever = pipeline("rsmclip-retrieval", model=args.model, trust_remote_code=True)
    gallery = [str(p) for p in sorted((sample_dir() / "ucm" / "images").glob("*.jpg"))]
    for query in ("many airplanes at an airport", "uma praia junto ao mar", "密集的住宅区"):
        hits = retriever(query, images=gallery, top_k=3)
        print(query, "->", ", ".join(f"{Path(h['image']).name} ({h['score']:.2f})" for h in hits))


if __name__ == "__main__":
    main()
