"""``rsmclip eval-retrieval``, ``rsmclip eval-zero-shot``, ``rsmclip model-index`` and ``rsmclip benchmark``."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

from ..errors import UserError, cli_type
from ..inference.options import add_backend_arguments

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- helpers
def _csv_list(value: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _csv_ints(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(item) for item in _csv_list(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from err
    if min(ks) < 1:
        raise argparse.ArgumentTypeError(f"every K must be >= 1, got {value!r}")
    return ks


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "dataset"


RETRIEVAL_OUTPUTS = (".json", "_languages.png", "_grid_queries.json", "_top5_grid.png")


def _write_json(path: Path, data: Any) -> Path:
    from ..safe_io import atomic_write_json

    return atomic_write_json(path, data)


# The options naming what an evaluation reads (files, folders, a local builder dataset, a class-name file).
_INPUT_OPTIONS = (
    "karpathy_json",
    "images",
    "translations",
    "dataset",
    "image_folder",
    "labels_csv",
    "class_names",
)


def _check_outputs(args: argparse.Namespace, names: list[str]) -> None:
    """Before the model is loaded: the results, the plots and the embedding cache overwrite no input."""
    from ..inference import local_model_folder
    from ..safe_io import check_outputs_not_inputs
    from .embed import default_cache_dir

    out = Path(args.output_dir)
    outputs = [out, *(out / name for name in names)]
    if not args.no_cache:
        outputs.append(args.cache_dir or default_cache_dir())
    inputs = [getattr(args, option, None) for option in _INPUT_OPTIONS]
    check_outputs_not_inputs(outputs, [*inputs, local_model_folder(args.model)])


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and inference")
    group.add_argument(
        "--model", required=True, help="model folder, Hub id, or 'demo' (the bundled demo model)"
    )
    group.add_argument("--batch-size", type=int, default=64, help="images or texts per forward pass")
    group.add_argument("--num-workers", type=int, default=2, help="data-loader workers for image decoding")
    add_backend_arguments(group)
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="embedding cache directory (default: $RSMCLIP_EMBEDDINGS_CACHE or ~/.cache/rsmclip/embeddings)",
    )
    group.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output-dir", type=Path, default=Path("outputs/eval"), help="where results and plots go"
    )
    out.add_argument("--no-plots", action="store_true", help="write the JSON results only")
    out.add_argument("--quiet", action="store_true", help="no progress bars")


def _make_embedder(args: argparse.Namespace) -> tuple[Any, str]:
    from ..inference import autocast_precision, check_backend, load_encoder, load_model, resolve_device
    from .embed import Embedder, default_cache_dir

    cpu_encoder = check_backend(args.backend, args.precision, args.device)  # before the model is loaded
    device = "cpu" if cpu_encoder else resolve_device(args.device)
    model, processor = load_model(args.model, device=None if cpu_encoder else device)
    encoder = load_encoder(model, args.backend, args.precision, processor, inplace=True)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    embedder = Embedder(
        encoder,
        processor,
        device=device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        precision=autocast_precision(args.backend, args.precision),
        cache_dir=cache_dir,
        show_progress=not args.quiet,
    )
    return embedder, str(args.model)


# ------------------------------------------------------------------------------------------------- retrieval
def add_retrieval_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (a Karpathy caption file with its images, or a builder dataset)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--karpathy-json", type=Path, help="Karpathy-format caption file (e.g. dataset.json)")
    source.add_argument("--dataset", help="builder dataset: a save_to_disk folder or a Hub dataset id")
    data.add_argument("--images", type=Path, help="image folder of the Karpathy file")
    data.add_argument(
        "--translations", type=Path, help="folder of <lang>.json translation caches (Karpathy input)"
    )
    data.add_argument("--split", default="test", help="split to evaluate (default: test)")
    data.add_argument(
        "--languages", type=_csv_list, help="comma-separated languages (default: every one found)"
    )
    data.add_argument(
        "--dataset-name", help="dataset name in results and the model card (default: from the input)"
    )
    parser.add_argument("--ks", type=_csv_ints, default=(1, 5, 10), help="recall cut-offs (default: 1,5,10)")
    parser.add_argument(
        "--ties",
        choices=("pessimistic", "optimistic"),
        default="pessimistic",
        help="how an exact score tie with the correct item counts: against it (pessimistic, default) or for it "
        "(optimistic). Caption sets that repeat the same sentence for many images (UCM-Captions, RSICD) tie "
        "often in image->text; published numbers rank with a sort, which falls between the two",
    )
    parser.add_argument("--grid-queries", type=int, default=3, help="images whose captions are grid queries")
    parser.add_argument(
        "--grid-languages",
        type=_csv_list,
        default=None,
        help="grid query languages (default: up to 4, en first)",
    )
    _add_model_arguments(parser)


def run_retrieval(args: argparse.Namespace) -> int:
    from .plots import plot_language_bars, plot_retrieval_grid
    from .retrieval import evaluate_retrieval, grid_queries, load_builder_dataset, load_karpathy

    if args.karpathy_json is not None:
        if args.images is None:
            raise UserError("--karpathy-json needs --images (the image folder)")
        data = load_karpathy(
            args.karpathy_json, args.images, args.split, args.translations, args.languages, args.dataset_name
        )
    else:
        if args.translations is not None:
            raise UserError("--translations applies to --karpathy-json input only")
        data = load_builder_dataset(args.dataset, args.split, args.languages, args.dataset_name)
    stem = f"retrieval_{_slug(data.name)}_{_slug(str(data.split))}"
    _check_outputs(args, [f"{stem}{end}" for end in RETRIEVAL_OUTPUTS])
    embedder, model_name = _make_embedder(args)
    result = evaluate_retrieval(embedder, data, tuple(args.ks), model_name=model_name, ties=args.ties)
    out = Path(args.output_dir)
    path = _write_json(out / f"{stem}.json", result.results)
    print(f"results: {path}")
    for lang, metrics in result.results["languages"].items():
        recalls = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k.startswith(("i2t", "t2i")))
        print(f"  {lang}: {recalls}  mR {metrics['mR']:.2f}")
    if not args.no_plots:
        metric_names = [k for k in result.results["average"] if k != "mR"] + ["mR"]
        bars = plot_language_bars(
            result.results["languages"],
            metric_names,
            out / f"{stem}_languages.png",
            f"Retrieval on {data.name}",
        )
        langs = args.grid_languages or _default_grid_languages(list(result.texts))
        queries = grid_queries(result, langs, num_queries=args.grid_queries, top_k=5)
        _write_json(out / f"{stem}_grid_queries.json", queries)
        grid = plot_retrieval_grid(
            queries, data.images, out / f"{stem}_top5_grid.png", f"Top-5 images, {data.name}"
        )
        print(f"plots: {bars}, {grid}")
    return 0


def _default_grid_languages(available: list[str]) -> list[str]:
    preferred = [lang for lang in ("en", "zh", "ru", "pt") if lang in available]
    return (preferred + [lang for lang in available if lang not in preferred])[:4]


# ------------------------------------------------------------------------------------------------- zero-shot
def add_zero_shot_arguments(parser: argparse.ArgumentParser) -> None:
    from ..templates import CLASS_NAMES, DATASET_ALIASES, LANGUAGES, parse_language_list

    data = parser.add_argument_group(
        "data (an ImageFolder, an image folder with a labels CSV, or a builder dataset)"
    )
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--image-folder", type=Path, help="ImageFolder layout: <root>/<class>/<image>")
    source.add_argument(
        "--labels-csv", type=Path, help="CSV with filename,label[,split] columns (needs --images)"
    )
    source.add_argument(
        "--dataset", help="builder dataset with a 'label' column: save_to_disk folder or Hub id"
    )
    data.add_argument("--images", type=Path, help="image folder of the labels CSV")
    data.add_argument(
        "--split",
        default=None,
        help="split (labels CSV: rows of that split, default all; builder: default test)",
    )
    data.add_argument(
        "--dataset-name", help="dataset name in results and the model card (default: from the input)"
    )
    data.add_argument(
        "--class-names",
        metavar="FILE_OR_TABLE",
        default=None,
        help="class names: a JSON or YAML file mapping each class folder to a name (used in every language) or "
        "to {language: name}; or the name of a shipped table ("
        + ", ".join(sorted(k for k in CLASS_NAMES if k not in DATASET_ALIASES))
        + "). An existing file wins over a table name. Default: the builder's names for a builder dataset, "
        "else the shipped table that knows the classes; classes no source knows are split into words "
        "(BareLand -> 'bare land') and flagged",
    )
    parser.add_argument(
        "--languages",
        type=cli_type(parse_language_list),
        default=list(LANGUAGES),
        help="comma-separated prompt languages, or 'all' (default: all)",
    )
    parser.add_argument("--ks", type=_csv_ints, default=(1, 5), help="top-K accuracies (default: 1,5)")
    _add_model_arguments(parser)


def run_zero_shot(args: argparse.Namespace) -> int:
    from .plots import plot_confusion_matrix, plot_language_bars
    from .zero_shot import evaluate_zero_shot, load_builder_labels, load_image_folder, load_labels_csv

    if args.image_folder is not None:
        if args.split is not None:
            raise UserError("--split does not apply to --image-folder input")
        data = load_image_folder(args.image_folder, args.dataset_name)
    elif args.labels_csv is not None:
        if args.images is None:
            raise UserError("--labels-csv needs --images (the image folder)")
        data = load_labels_csv(args.labels_csv, args.images, args.split, args.dataset_name)
    else:
        data = load_builder_labels(args.dataset, args.split or "test", args.dataset_name)
    table, user_names = _class_names_option(args.class_names)
    stem = f"zero_shot_{_slug(data.name)}" + (f"_{_slug(data.split)}" if data.split else "")
    ends = [".json", "_languages.png", *(f"_confusion_{lang}.png" for lang in args.languages)]
    _check_outputs(args, [f"{stem}{end}" for end in ends])
    embedder, model_name = _make_embedder(args)
    results = evaluate_zero_shot(
        embedder,
        data,
        args.languages,
        table,
        ks=tuple(args.ks),
        model_name=model_name,
        class_names=user_names,
    )
    out = Path(args.output_dir)
    path = _write_json(out / f"{stem}.json", results)
    print(f"results: {path}")
    for lang, metrics in results["languages"].items():
        accs = "  ".join(f"top-{k} {metrics[f'top{k}']:.2f}" for k in results["ks"])
        print(f"  {lang}: {accs}  mean per-class {metrics['mean_per_class_accuracy']:.2f}")
    for line in class_names_summary(results):
        print(line)
    if not args.no_plots:
        metric_names = [f"top{k}" for k in results["ks"]] + ["mean_per_class_accuracy"]
        plot_language_bars(
            results["languages"],
            metric_names,
            out / f"{stem}_languages.png",
            f"Zero-shot accuracy on {data.name}",
        )
        for lang, metrics in results["languages"].items():
            plot_confusion_matrix(
                metrics["confusion_matrix"],
                results["classes"],
                out / f"{stem}_confusion_{lang}.png",
                f"{data.name}, {lang} prompts: top-1 {metrics['top1']:.1f}%"
                if "top1" in metrics
                else f"{data.name}, {lang} prompts",
            )
        print(f"plots: {out}/{stem}_*.png")
    return 0


def _class_names_option(value: str | None) -> tuple[str | None, dict[str, Any] | None]:
    """``--class-names``: (a shipped table, None) or (None, the file's names); an existing file wins."""
    from ..templates import find_table
    from .zero_shot import load_class_names_file

    if value is None:
        return None, None
    if Path(value).is_file():
        return None, load_class_names_file(value)
    table = find_table(value)
    if table is None:
        raise UserError(f"--class-names {value!r} is neither an existing file nor a shipped class-name table")
    return table, None


def class_names_summary(results: dict[str, Any]) -> list[str]:
    """The lines that flag where class names came from: unknown classes, missing translations, unused entries."""
    sources = results.get("class_name_sources") or {}
    counts: dict[str, int] = {}
    for source in sources.values():
        counts[source] = counts.get(source, 0) + 1
    lines = ["class names: " + ", ".join(f"{n} from {source}" for source, n in sorted(counts.items()))]
    unmapped = results.get("unmapped_classes") or {}
    if unmapped:
        shown = ", ".join(f"{cls} -> {words!r}" for cls, words in unmapped.items())
        lines.append(
            f"WARNING: {len(unmapped)} class(es) are in no class-name table and were split into English words, "
            f"untranslated (give names with --class-names FILE): {shown}"
        )
    for lang, classes in sorted((results.get("untranslated_class_names") or {}).items()):
        if any(cls not in unmapped for cls in classes):
            lines.append(
                f"WARNING: no {lang} name for {', '.join(c for c in classes if c not in unmapped)}: English used"
            )
    for lang, names in sorted((results.get("content_free_class_names") or {}).items()):
        lines.append(f"WARNING: {lang} class name(s) the tokenizer cannot read (no known tokens): {names}")
    unused = results.get("unused_class_names") or []
    if unused:
        lines.append(
            f"WARNING: --class-names entries that are not classes of the dataset: {', '.join(unused)}"
        )
    empty = (results.get("skipped") or {}).get("empty_class_folders") or []
    if empty:
        lines.append(f"WARNING: skipped {len(empty)} class folder(s) without images: {', '.join(empty)}")
    return lines


# ----------------------------------------------------------------------------------------------- model index
def add_model_index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results", nargs="+", type=Path, help="results JSON files of eval-retrieval / eval-zero-shot"
    )
    parser.add_argument(
        "--card", type=Path, required=True, help="model card to update (README.md or model_card.md)"
    )
    parser.add_argument(
        "--model-name", help="model-index name (default: the card's, else the card folder's name)"
    )


def run_model_index(args: argparse.Namespace) -> int:
    from .model_index import update_model_card

    card = update_model_card(args.card, args.results, args.model_name)
    print(f"updated {args.card}: {len(card.data.eval_results or [])} model-index results")
    return 0


# ------------------------------------------------------------------------------------------------- benchmark
def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    from ..templates import LANGUAGES

    parser.add_argument(
        "--models",
        type=_csv_list,
        required=True,
        help="comma-separated models, each MODEL or NAME=MODEL (NAME is shown in the table): folders, Hub ids, "
        "known model names or 'demo' (RS-M-CLIP, CLIP, SigLIP, SigLIP 2, AltCLIP checkpoints)",
    )
    parser.add_argument(
        "--datasets",
        type=_csv_list,
        required=True,
        help="comma-separated [NAME=]PATH: an image folder of class sub-folders (zero-shot), a Karpathy caption "
        "file or its folder with images/ and translations/ (retrieval; a labels.csv there adds zero-shot), a "
        "builder dataset folder or Hub id (retrieval on captions, zero-shot on labels)",
    )
    parser.add_argument(
        "--languages",
        type=_csv_list,
        default=["en"],
        help=f"comma-separated languages of the prompts and captions (default: en; any of {','.join(LANGUAGES)})",
    )
    parser.add_argument(
        "--english-only",
        type=_csv_list,
        default=[],
        help="models trained on English only, marked in the table (known models are marked by the table of "
        "known models)",
    )
    parser.add_argument("--split", default="test", help="split of caption files and builder datasets (test)")
    parser.add_argument(
        "--ties",
        choices=("pessimistic", "optimistic"),
        default="pessimistic",
        help="retrieval: how an exact score tie with the correct item counts (see eval-retrieval)",
    )
    parser.add_argument("--output", type=Path, default=Path("outputs/benchmark"), help="folder for the table")
    parser.add_argument("--batch-size", type=int, default=64, help="images or texts per forward pass")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loader workers for image decoding")
    add_backend_arguments(parser)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="embedding cache directory (default: $RSMCLIP_EMBEDDINGS_CACHE or ~/.cache/rsmclip/embeddings)",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    parser.add_argument("--no-plots", action="store_true", help="no benchmark.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_benchmark_command(args: argparse.Namespace) -> int:
    from .benchmark import parse_model_spec, run_benchmark, write_outputs
    from .embed import default_cache_dir

    given = {part for spec in args.models for part in parse_model_spec(spec)}
    unknown = [m for m in args.english_only if m not in given]
    if unknown:
        raise UserError(f"--english-only names model(s) not in --models: {', '.join(unknown)}")
    result = run_benchmark(
        args.models,
        args.datasets,
        args.languages,
        english_only=args.english_only,
        split=args.split,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
        ties=args.ties,
        show_progress=not args.quiet,
    )
    files = write_outputs(result, args.output, plot=not args.no_plots)
    print(files["markdown"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(path) for path in files.values()))
    return 0


# ------------------------------------------------------------------------------------------------------ wiring
def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``eval-retrieval``, ``eval-zero-shot``, ``model-index`` and ``benchmark``."""
    retrieval = subparsers.add_parser(
        "eval-retrieval",
        help="image-text retrieval recall@K per language",
        description="Image->text and text->image recall@K and mR, per language, on a Karpathy-format caption set "
        "or a builder dataset. Writes a JSON of results and PNG plots.",
    )
    add_retrieval_arguments(retrieval)
    retrieval.set_defaults(func=run_retrieval)

    zero_shot = subparsers.add_parser(
        "eval-zero-shot",
        help="zero-shot scene classification per language",
        description="Zero-shot classification with averaged multilingual prompt embeddings: top-K accuracy, "
        "per-class accuracy and confusion matrix per language. Writes a JSON of results and PNG plots.",
    )
    add_zero_shot_arguments(zero_shot)
    zero_shot.set_defaults(func=run_zero_shot)

    model_index = subparsers.add_parser(
        "model-index",
        help="write evaluation results into a model card's model-index metadata",
        description="Add or replace model-index entries (one per language and metric) in a model card from "
        "results JSON files; re-running with the same results leaves the card unchanged.",
    )
    add_model_index_arguments(model_index)
    model_index.set_defaults(func=run_model_index)

    benchmark = subparsers.add_parser(
        "benchmark",
        help="compare models: zero-shot classification and retrieval per dataset and language",
        description="Zero-shot classification and image-text retrieval of every model on every dataset in every "
        "language (prompts and captions in that language), with cached embeddings. Writes one table as "
        "benchmark.md, benchmark.csv and benchmark.json (CLIP_benchmark's result format) and benchmark.png.",
    )
    add_benchmark_arguments(benchmark)
    benchmark.set_defaults(func=run_benchmark_command)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
