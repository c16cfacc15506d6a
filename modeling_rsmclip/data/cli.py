"""``rsmclip build-dataset``: build (and optionally push) a multilingual remote-sensing caption dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ArgumentParser, UserError, report_user_error, run_command
from ..safe_io import check_outputs_not_inputs
from .readers import LAYOUTS
from .translate import RECOMMENDED_MODELS

_EPILOG = """example (UCM-Captions with its shipped translation cache):
  rsmclip build-dataset --layout karpathy --source ucm-captions \\
      --annotations ../shared/data/ucm-captions/dataset.json \\
      --images ../shared/data/ucm-captions/images \\
      --labels-csv ../shared/data/ucm-captions/labels.csv \\
      --translations-cache ../shared/data/ucm-captions/translations \\
      --languages all --output outputs/ucm-captions-multilingual

translation models that work well (--translation-model):
""" + "\n".join(f"  {name}: {note}" for name, note in RECOMMENDED_MODELS.items())


def _split_ratios(value: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {value!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {value!r}")
    return parts  # type: ignore[return-value]


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``rsmclip build-dataset``."""
    parser = subparsers.add_parser(
        "build-dataset",
        help="build a multilingual image-caption dataset from a Karpathy or ImageFolder layout",
        description="Read a public remote-sensing layout, check every image, translate the English captions "
        "(with a translation cache and optionally a transformers model), and save a DatasetDict with a dataset "
        "card and a build report, or push it to the Hub as parquet shards.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--layout", choices=LAYOUTS, required=True)
    inputs.add_argument(
        "--source", required=True, help="dataset name for the source column, e.g. ucm-captions, rsscn7"
    )
    inputs.add_argument(
        "--images", required=True, type=Path, help="image folder (the ImageFolder root for imagefolder)"
    )
    inputs.add_argument("--annotations", type=Path, help="Karpathy caption JSON (karpathy layout)")
    inputs.add_argument(
        "--labels-csv", type=Path, help="filename,label[,split] CSV with class labels (karpathy)"
    )
    inputs.add_argument("--class-names", type=Path, help="JSON {label: {lang: name}} for ImageFolder classes")
    inputs.add_argument(
        "--templates", type=Path, help="JSON {lang: [templates with one {}]} for ImageFolder captions"
    )
    inputs.add_argument(
        "--templates-per-image", type=int, help="templates per image (seeded choice); default all"
    )
    inputs.add_argument(
        "--split-ratios",
        type=_split_ratios,
        default=(0.8, 0.1, 0.1),
        help="train,val,test for ImageFolder sets",
    )
    inputs.add_argument("--seed", type=int, default=0)

    translation = parser.add_argument_group("translation")
    translation.add_argument(
        "--languages", default="all", help="'all' or a comma list, e.g. en,pt,zh (default all)"
    )
    translation.add_argument(
        "--translations-cache", type=Path, help="folder of <lang>.json translation files"
    )
    translation.add_argument(
        "--translation-model", help="transformers model for captions missing from the cache"
    )
    translation.add_argument("--batch-size", type=int, default=32, help="translation batch size (default 32)")
    translation.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    translation.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, ..."
    )
    translation.add_argument("--max-new-tokens", type=int, default=256)
    translation.add_argument("--num-beams", type=int, default=1, help="1 = greedy decoding (default)")

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output", type=Path, help="folder for save_to_disk + README.md card + build_report.json"
    )
    output.add_argument(
        "--push-to-hub", metavar="REPO_ID", help="push to this Hub dataset repository (parquet)"
    )
    output.add_argument("--private", action="store_true", help="create the Hub repository as private")
    output.add_argument(
        "--max-shard-size", default="500MB", help="shard size for saving/pushing (default 500MB)"
    )
    output.add_argument(
        "--cache-dir", type=Path, help="datasets cache folder for the intermediate Arrow files"
    )
    output.add_argument(
        "--strict", action="store_true", help="fail (exit 1) if any item is skipped or repaired"
    )
    output.add_argument("--num-workers", type=int, help="threads for checking images (default min(8, CPUs))")
    output.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run_build_dataset)


def run_build_dataset(args: argparse.Namespace) -> int:
    """Run the build described by parsed ``build-dataset`` arguments; returns the exit code."""
    from .builder import BuildError, build_dataset, push_dataset, save_dataset
    from .translate import HFTranslator, MissingTranslationsError

    if args.output is None and args.push_to_hub is None:
        raise UserError("give --output DIR and/or --push-to-hub REPO_ID")
    inputs = [args.images, args.annotations, args.labels_csv, args.class_names, args.templates]
    # The translation cache is read (and extended with new translations): the dataset folder must not hold it.
    check_outputs_not_inputs([args.cache_dir], [*inputs, args.translations_cache], owned=[args.output])
    translator = None
    if args.translation_model:
        translator = HFTranslator(
            args.translation_model,
            device=args.device,
            dtype=args.dtype,
            max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams,
        )
    try:
        dataset, report = build_dataset(
            args.layout,
            source=args.source,
            annotations=args.annotations,
            images=args.images,
            labels_csv=args.labels_csv,
            languages=args.languages,
            translations_cache=args.translations_cache,
            translator=translator,
            translation_batch_size=args.batch_size,
            class_names=args.class_names,
            templates=args.templates,
            templates_per_image=args.templates_per_image,
            split_ratios=args.split_ratios,
            seed=args.seed,
            strict=args.strict,
            num_workers=args.num_workers,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        if args.output is not None:
            path = error.report.save(args.output / "build_report.json")
            print(f"build report written to {path}", file=sys.stderr)
        return 1
    except MissingTranslationsError as error:
        return report_user_error(error)
    print(report.summary())
    if args.output is not None:
        save_dataset(
            dataset,
            report,
            args.output,
            translation_model=args.translation_model,
            max_shard_size=args.max_shard_size,
        )
        print(f"saved to {args.output} (load with datasets.load_from_disk)")
    if args.push_to_hub is not None:
        url = push_dataset(
            dataset,
            report,
            args.push_to_hub,
            private=args.private or None,
            translation_model=args.translation_model,
            max_shard_size=args.max_shard_size,
        )
        print(f"pushed to {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m modeling_rsmclip.data.cli ...``) with the same arguments."""
    parser = ArgumentParser(prog="rsmclip")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subparser(subparsers)
    args = parser.parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    raise SystemExit(main())
