"""``rsmclip index build``, ``rsmclip index add`` and ``rsmclip search``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError, cli_type
from ..geo.options import parse_bands, parse_bbox
from ..inference.options import add_backend_arguments

DEFAULT_DEMO = "the bundled demo model"


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="image folders (recursive), image files or GeoTIFF scenes",
    )
    data = parser.add_argument_group("datasets and scenes")
    data.add_argument("--dataset", help="a builder dataset: save_to_disk folder or Hub dataset id")
    data.add_argument("--split", default=None, help="dataset split (e.g. test)")
    data.add_argument(
        "--tile-size", type=int, default=None, help="cut GeoTIFF scenes into tiles of this many pixels"
    )
    data.add_argument("--overlap", type=int, default=0, help="tile overlap in pixels")
    data.add_argument(
        "--preset", default=None, help="band preset of the scenes (see `rsmclip map --list-presets`)"
    )
    data.add_argument(
        "--bands",
        type=cli_type(parse_bands),
        default=None,
        help="bands used as R,G,B: 0-based indices (3,2,1) or, for GeoTIFFs, band names (B4,B3,B2)",
    )
    data.add_argument(
        "--min-valid", type=float, default=0.5, help="skip (and report) tiles with less valid data than this"
    )
    run = parser.add_argument_group("embedding")
    run.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    run.add_argument(
        "--num-workers", type=int, default=None, help="decoding workers (default: half the CPU cores, 1-4)"
    )
    run.add_argument("--shard-size", type=int, default=4096, help="items per Parquet shard (the resume unit)")
    add_backend_arguments(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def _index_type_help() -> str:
    return (
        "auto (exact up to 100k vectors, then IVF-Flat, IVF-PQ beyond 2M), flat, ivf-flat, ivf-pq, hnsw, "
        "or a FAISS factory string such as 'IVF1024,PQ64'"
    )


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "dataset": args.dataset,
        "split": args.split,
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "preset": args.preset,
        "bands": args.bands,
        "min_valid": args.min_valid,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "shard_size": args.shard_size,
        "precision": args.precision,
        "backend": args.backend,
        "device": args.device,
        "progress": not args.quiet,
    }


def _summary(index: Any) -> str:
    counts = index.manifest["counts"]
    return (
        f"{index.path}: {counts['items']} items, {index.manifest['index']['factory']} index; "
        f"unreadable {counts['unreadable']}, nodata tiles {counts['nodata_tiles']}, duplicates "
        f"{counts['duplicates']}, unchanged {counts['unchanged']} (listed in {index.path / 'report.json'})"
    )


def _check_index_outputs(index: Path, args: argparse.Namespace) -> None:
    """Before any work: the index folder (which the command owns) is no source or model, and holds none."""
    from ..inference import local_model_folder
    from ..safe_io import check_outputs_not_inputs

    inputs = [*args.sources, args.dataset, local_model_folder(args.model or "demo")]
    check_outputs_not_inputs([], inputs, owned=[index])


def _run_build(args: argparse.Namespace) -> int:
    from . import build_index

    if not args.sources and not args.dataset:
        raise ValueError("nothing to index: give SOURCE folders/files or --dataset")
    _check_index_outputs(args.output, args)
    index = build_index(
        args.model or "demo", args.output, args.sources, index_type=args.index_type, **_common_kwargs(args)
    )
    print(_summary(index))
    return 0


def _run_add(args: argparse.Namespace) -> int:
    from . import add_to_index

    if not args.sources and not args.dataset:
        raise ValueError("nothing to add: give SOURCE folders/files or --dataset")
    _check_index_outputs(args.index, args)
    index = add_to_index(
        args.index, args.sources, model=args.model, index_type=args.index_type, **_common_kwargs(args)
    )
    print(_summary(index))
    return 0


def _format_table(results: list[dict[str, Any]]) -> str:
    headers = ["rank", "score", "label", "id"]
    geo = any(r.get("bbox") for r in results)
    if geo:
        headers.append("bbox (W,S,E,N)")
    lines = []
    for r in results:
        row = [str(r["rank"]), f"{r['score']:.4f}", str(r.get("label") or "-"), str(r["id"])]
        if geo:
            row.append(",".join(f"{v:.5f}" for v in r["bbox"]) if r.get("bbox") else "-")
        lines.append(row)
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(out)


def _run_search(args: argparse.Namespace) -> int:
    from . import RSMCLIPIndex, to_geojson

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.image and not Path(args.query).is_file():
        raise FileNotFoundError(f"query image not found: {args.query}")
    if args.geojson:
        from ..inference import local_model_folder
        from ..safe_io import check_outputs_not_inputs

        query = args.query if args.image else None
        check_outputs_not_inputs([args.geojson], [args.index, query, local_model_folder(args.model)])
    index = RSMCLIPIndex.load(args.index, model=args.model, backend=args.backend, precision=args.precision)
    results = index.search(args.query, top_k=args.top_k, image=args.image, where=args.where, bbox=args.bbox)
    if args.geojson:
        from ..safe_io import atomic_write_json

        atomic_write_json(args.geojson, to_geojson(results), indent=1)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=1))
    else:
        print(_format_table(results) if results else "no results")
        if args.geojson:
            print(f"wrote {args.geojson}")
    return 0


def _guarded(func: Any) -> Any:
    """A KeyError (an unknown metadata column) is a user error too; `errors.run_command` reports the rest."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except KeyError as err:
            raise UserError(err.args[0] if err.args else str(err)) from err

    return run


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    index = subparsers.add_parser(
        "index",
        help="build or extend a searchable archive index (Parquet + FAISS)",
        description="Build or extend an archive index: embeddings and metadata as Parquet shards, a FAISS index "
        "and a manifest. A killed build resumes where it stopped when run again; under `accelerate launch` or "
        "`torchrun` the work is split across processes.",
    )
    actions = index.add_subparsers(dest="index_command", metavar="ACTION")
    build = actions.add_parser(
        "build", help="embed SOURCEs into a new index folder (resumes an unfinished one)"
    )
    build.add_argument("--model", default=None, help=f"model folder or Hub id (default: {DEFAULT_DEMO})")
    build.add_argument("--output", "-o", required=True, type=Path, help="index folder")
    build.add_argument("--index-type", default="auto", help=_index_type_help())
    _add_source_arguments(build)
    build.set_defaults(func=_guarded(_run_build))

    add = actions.add_parser(
        "add", help="append SOURCEs to an index (unchanged files are not embedded again)"
    )
    add.add_argument("index", type=Path, help="index folder")
    add.add_argument("--model", default=None, help="model (default: the one in the index's manifest)")
    add.add_argument("--index-type", default=None, help=_index_type_help() + " (default: the index's)")
    _add_source_arguments(add)
    add.set_defaults(func=_guarded(_run_add))
    index.set_defaults(func=lambda args: (index.print_help(), 2)[1])

    search = subparsers.add_parser(
        "search",
        help="search an index with a text (any of the ten languages) or an image",
        description="Search an archive index. QUERY is a text in any of the model's languages, or an image "
        "file with --image. --where filters on the metadata columns with a pandas-query-style expression, e.g. "
        "\"label in ['beach', 'river'] and valid_fraction >= 0.9\" (see docs/index.md).",
    )
    search.add_argument("index", type=Path, help="index folder")
    search.add_argument("query", help="query text, or an image path with --image")
    search.add_argument("--top-k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--image", action="store_true", help="QUERY is an image file")
    search.add_argument("--where", default=None, help="metadata filter, e.g. \"label == 'airplane'\"")
    search.add_argument(
        "--bbox", type=cli_type(parse_bbox), default=None, help="lon/lat box west,south,east,north"
    )
    search.add_argument("--json", action="store_true", help="print the results as a JSON list")
    search.add_argument(
        "--geojson", type=Path, default=None, help="also write the footprints as GeoJSON here"
    )
    search.add_argument(
        "--model", default=None, help="query model (default: the one in the index's manifest)"
    )
    add_backend_arguments(
        search.add_argument_group("query embedding (any backend fits any index)"), device=False
    )
    search.set_defaults(func=_guarded(_run_search))
