"""`rsmclip demo`: zero-shot classification, multilingual retrieval and archive search on the bundled sample images,
offline."""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path
from typing import Any

from .templates import class_name
from .testing import SAMPLE_DIR

ARCHIVE_QUERIES = {
    "pt": "campos de futebol perto de um rio",
    "zh": "停满飞机的机场",
    "fr": "une plage de sable au bord de la mer",
    "ru": "густой лес",
}
DEMO_QUERIES = {
    "en": "a tennis court surrounded by trees",
    "pt": "muitos aviões estacionados no aeroporto",
    "zh": "一条穿过森林的河流",
    "de": "ein Strand mit blauem Meer",
}


def load_demo_model(model: str | None) -> tuple[Any, Any, str, bool]:
    """The model given by path/Hub id, else the bundled demo model, else a random `tiny` model (said loudly)."""
    from .inference import DEMO_MODEL_DIR, load_model

    if model is None and (DEMO_MODEL_DIR / "config.json").exists():
        net, processor = load_model("demo")
        return (
            net,
            processor,
            "bundled demo model (trained on the UCM-Captions train split, 10 languages)",
            True,
        )
    if model is not None:
        net, processor = load_model(model)
        return net, processor, model, True
    from .testing import make_tiny_model_and_processor

    tmp = tempfile.mkdtemp(prefix="rsmclip-demo-")
    net, processor = make_tiny_model_and_processor(tmp)
    return net, processor, "randomly initialised 'tiny' model", False


def _image_embeds(model: Any, processor: Any, paths: list[Path]) -> Any:
    import torch
    import torch.nn.functional as F

    from .inference.families import image_features, image_inputs
    from .processing_rsmclip import load_image_file

    images = [load_image_file(p) for p in paths]
    with torch.inference_mode():
        return F.normalize(image_features(model, image_inputs(processor, images)), dim=-1)


def _text_embeds(model: Any, processor: Any, texts: list[str]) -> Any:
    import torch
    import torch.nn.functional as F

    from .inference.families import text_features, text_inputs

    batch = text_inputs(model, getattr(processor, "tokenizer", processor), texts)
    with torch.inference_mode():
        return F.normalize(text_features(model, batch), dim=-1)


def class_embeddings(model: Any, processor: Any, dataset: str, labels: list[str], lang: str) -> Any:
    """One embedding per class: its name in `lang` (the dataset's class-name table) in every prompt template."""
    import torch

    from .inference import class_embeddings as embed_classes

    names = [class_name(dataset, label, lang) for label in labels]
    return torch.from_numpy(embed_classes(model, processor, names, lang)).float()


def run_demo(
    model: str | None = None, sample: str | None = None, languages: tuple[str, ...] = ("en", "pt", "zh")
) -> dict:
    """Run the demo and print it; returns the figures (accuracy per language, retrieval hits) for tests."""
    from .testing import sample_dir

    start = time.time()
    root = Path(sample) if sample else sample_dir()
    net, processor, name, trained = load_demo_model(model)
    print(f"RS-M-CLIP demo — model: {name}")
    if not trained:
        print(
            "NOTE: no trained demo model is bundled in this checkout; the model below is RANDOMLY INITIALISED, "
            "so its predictions are meaningless. Pass --model PATH for a real one."
        )

    with open(root / "ucm" / "labels.csv", newline="") as f:
        labels = {row["filename"]: row["label"] for row in csv.DictReader(f)}
    ucm_files = sorted(labels, key=lambda s: int(Path(s).stem))
    ucm_paths = [root / "ucm" / "images" / f for f in ucm_files]
    classes = sorted(set(labels.values()))
    ucm_embeds = _image_embeds(net, processor, ucm_paths)

    print(
        f"\nZero-shot classification of {len(ucm_paths)} UC Merced test-split images into {len(classes)} classes "
        f"(chance {1 / len(classes):.0%}); prompts in each language"
    )
    results: dict = {"model": name, "trained": trained, "zero_shot": {}, "retrieval": {}}
    for lang in languages:
        cls = class_embeddings(net, processor, "ucm", classes, lang)
        pred = (ucm_embeds @ cls.t()).argmax(-1).tolist()
        correct = sum(classes[p] == labels[f] for p, f in zip(pred, ucm_files))
        results["zero_shot"][lang] = correct / len(ucm_files)
        examples = ", ".join(
            f"{labels[f]}->{class_name('ucm', classes[p], lang)}" for p, f in list(zip(pred, ucm_files))[:3]
        )
        print(
            f"  [{lang}] top-1 accuracy {correct}/{len(ucm_files)} = {correct / len(ucm_files):.0%}   e.g. {examples}"
        )

    print("\nText -> image retrieval over the same images (top 3)")
    for lang, query in DEMO_QUERIES.items():
        scores = (_text_embeds(net, processor, [query]) @ ucm_embeds.t())[0]
        top = scores.topk(3)
        hits = [
            (ucm_files[i], labels[ucm_files[i]], s) for s, i in zip(top.values.tolist(), top.indices.tolist())
        ]
        results["retrieval"][query] = [h[1] for h in hits]
        shown = "  ".join(f"{f} ({label}, {s:.2f})" for f, label, s in hits)
        print(f"  [{lang}] {query!r}\n        {shown}")
    results["archive_search"] = archive_search_demo(net if model is None and trained else None, processor)
    print(f"\ndone in {time.time() - start:.1f} s")
    return results


def archive_search_demo(model=None, processor=None) -> dict:
    """Archive search over an index of all bundled samples (UC Merced + RSSCN7), built once with the bundled demo
    model and cached; queried in several languages, plain and filtered by label. Skipped, with the install command,
    when the `index` extra (faiss, pyarrow) is missing."""
    try:
        from .index import bundled_sample_index
        from .index.common import require_index_dependencies

        require_index_dependencies()
    except ImportError as err:
        print(f"\n(archive search skipped: {err})")
        return {}
    start = time.time()
    index = bundled_sample_index(model=model, processor=processor if model is not None else None)
    print(
        f"\nArchive search: a persistent index of {len(index)} images ({index.manifest['index']['factory']}, "
        f"{index.path}), ready in {time.time() - start:.1f} s; `rsmclip search INDEX QUERY` does the same"
    )
    found: dict = {}
    for lang, query in ARCHIVE_QUERIES.items():
        hits = index.search(query, top_k=3)
        found[query] = [h["label"] for h in hits]
        shown = "  ".join(f"{h['id']} ({h['label']}, {h['score']:.2f})" for h in hits)
        print(f"  [{lang}] {query!r}\n        {shown}")
    where = "source == 'rsscn7'"
    query = "muitos carros num parque de estacionamento"
    hits = index.search(query, top_k=3, where=where)
    found[f"{query} | {where}"] = [h["label"] for h in hits]
    shown = "  ".join(f"{h['id']} ({h['label']}, {h['score']:.2f})" for h in hits)
    print(f"  [pt] {query!r} where {where}\n        {shown}")
    return found


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="zero-shot classification and multilingual retrieval on the bundled sample images (offline)",
        description=__doc__,
    )
    parser.add_argument(
        "--model", default=None, help="model folder or Hub id (default: the bundled demo model)"
    )
    parser.add_argument("--sample", default=None, help="sample data folder (default: examples/sample)")
    parser.add_argument("--languages", default="en,pt,zh", help="comma-separated prompt languages")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")

    def _run(args: argparse.Namespace) -> int:
        from .safe_io import atomic_write_json, check_outputs_not_inputs

        if args.json:
            from .inference import local_model_folder

            inputs = [local_model_folder(args.model or "demo"), args.sample or SAMPLE_DIR]
            check_outputs_not_inputs([args.json], inputs)
        results = run_demo(args.model, args.sample, tuple(args.languages.split(",")))
        if args.json:
            atomic_write_json(args.json, results)
        return 0

    parser.set_defaults(func=_run)
