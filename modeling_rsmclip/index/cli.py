"""``rsmclip index build``, ``rsmclip index add`` and ``rsmclip search``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import UserError, cli_type
from ..geo.options import check_datetime, parse_bands, parse_bbox
from ..inference.options import add_backend_arguments

DEFAULT_DEMO = "the bundled demo model"


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="image folders (recursive), image files or GeoTIFF scenes (or none, with --stac)",
    )
    stac = parser.add_argument_group(
        "STAC catalogs (instead of SOURCEs: the query's items, cut into --tile-size tiles; pip install "
        '"rsmclip[stac]")'
    )
    stac.add_argument(
        "--stac",
        metavar="URL",
        default=None,
        help="a STAC API, or a static catalog / collection / item collection JSON (URL or path)",
    )
    stac.add_argument(
        "--collection",
        action="append",
        default=None,
        help="collection id (repeat or comma-separate for several), e.g. sentinel-2-l2a",
    )
    stac.add_argument(
        "--bbox", type=cli_type(parse_bbox), default=None, help="lon/lat box west,south,east,north"
    )
    stac.add_argument(
        "--datetime",
        type=cli_type(check_datetime),
        default=None,
        help="RFC 3339 instant or interval, e.g. 2024-06-01/2024-08-31 or 2024-06-01/..",
    )
    stac.add_argument("--filter", default=None, help='CQL2 text or JSON, e.g. "eo:cloud_cover < 20"')
    stac.add_argument("--max-items", type=int, default=None, help="the first N items (in acquisition order)")
    stac.add_argument(
        "--signer",
        default=None,
        metavar="MODULE:FUNCTION",
        help="sign asset hrefs before reading them, e.g. planetary_computer:sign",
    )
    stac.add_argument(
        "--retries",
        type=int,
        default=3,
        help="attempts per remote window before it is reported in report.json (default 3, with back-off)",
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
        help="bands used as R,G,B: 0-based indices (3,2,1) or, for GeoTIFFs, band names (B4,B3,B2); for STAC "
        "items band ids or common names (nir,red,green)",
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
    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (or the processes of accelerate launch / torchrun); ray: a Ray Data pipeline "
        'on a local Ray or the cluster at --ray-address (pip install "rsmclip[ray]")',
    )
    engine.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to run on: auto (the cluster of this node, or of `ray job submit`), head:6379, "
        "ray://head:10001 (default: start a local Ray on this machine's cores)",
    )
    engine.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        metavar="N",
        help="model actors (default: one per GPU of the cluster, else one per CPU)",
    )


def _index_type_help() -> str:
    return (
        "auto (exact up to 100k vectors, then IVF-Flat, IVF-PQ beyond 2M, IVF-PQ on disk with exact re-ranking "
        "beyond 10M), flat, ivf-flat, ivf-pq, hnsw, ivfpq-disk (lists on disk: an index larger than memory), "
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
        "engine": args.engine,
        "ray_address": args.ray_address,
        "ray_actors": args.ray_actors,
    }


def _stac_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The STAC query and remote-read settings of ``--stac`` (nothing without it; its options alone are refused)."""
    given = [
        f"--{name.replace('_', '-')}"
        for name in ("collection", "bbox", "datetime", "filter", "max_items", "signer")
        if getattr(args, name) is not None
    ]
    if args.stac is None:
        if given:
            raise ValueError(f"{', '.join(given)} search a STAC catalog: give its URL with --stac")
        return {}
    if args.sources or args.dataset:
        raise ValueError("--stac indexes the query's items: give SOURCEs / --dataset in another `index add`")
    if args.tile_size is None:
        raise ValueError(
            "--stac needs --tile-size (the items' scenes are cut into tiles of that many pixels)"
        )
    if args.bands is not None and any(isinstance(b, int) for b in args.bands):
        raise ValueError(f"with --stac, name the bands (red,green,blue or B04,B03,B02), got {args.bands}")
    if args.retries < 1:
        raise ValueError(f"--retries must be at least 1, got {args.retries}")
    from ..geo.cloud import RetryPolicy, load_signer
    from ..geo.stac import StacQuery

    collections = [c.strip() for value in args.collection or [] for c in value.split(",") if c.strip()]
    query = StacQuery(
        args.stac,
        collections=collections,
        bbox=args.bbox,
        datetime=args.datetime,
        filter=args.filter,
        max_items=args.max_items,
    )
    return {
        "stac": query,
        "retry": RetryPolicy(attempts=args.retries),
        "signer": load_signer(args.signer) if args.signer else None,
    }


def _summary(index: Any) -> str:
    counts = index.manifest["counts"]
    remote = ""
    if any(r.get("stac") for r in index.manifest.get("runs", [])):
        remote = (
            f", network errors {counts.get('network_errors', 0)}, items without the bands "
            f"{counts.get('missing_bands', 0)}"
        )
    return (
        f"{index.path}: {counts['items']} items, {index.manifest['index']['factory']} index; "
        f"unreadable {counts['unreadable']}, nodata tiles {counts['nodata_tiles']}, duplicates "
        f"{counts['duplicates']}, unchanged {counts['unchanged']}{remote} (listed in {index.path / 'report.json'})"
    )


def _check_index_outputs(index: Path, args: argparse.Namespace) -> None:
    """Before any work: the index folder (which the command owns) is no source or model, and holds none."""
    from ..inference import local_model_folder
    from ..safe_io import check_outputs_not_inputs

    inputs = [*args.sources, args.dataset, local_model_folder(args.model or "demo")]
    check_outputs_not_inputs([], inputs, owned=[index])


def _run_build(args: argparse.Namespace) -> int:
    from . import build_index

    stac = _stac_kwargs(args)
    if not args.sources and not args.dataset and not stac:
        raise ValueError("nothing to index: give SOURCE folders/files, --dataset or --stac")
    _check_index_outputs(args.output, args)
    index = build_index(
        args.model or "demo",
        args.output,
        args.sources,
        index_type=args.index_type,
        **_common_kwargs(args),
        **stac,
    )
    print(_summary(index))
    return 0


def _run_add(args: argparse.Namespace) -> int:
    from . import add_to_index

    stac = _stac_kwargs(args)
    if not args.sources and not args.dataset and not stac:
        raise ValueError("nothing to add: give SOURCE folders/files, --dataset or --stac")
    _check_index_outputs(args.index, args)
    index = add_to_index(
        args.index, args.sources, model=args.model, index_type=args.index_type, **_common_kwargs(args), **stac
    )
    print(_summary(index))
    return 0


def _info_lines(path: Path, manifest: dict[str, Any]) -> list[str]:
    section, counts = manifest["index"], manifest["counts"]
    params = ", ".join(f"{k} {v}" for k, v in section.get("search_params", {}).items())
    lines = [
        f"{path}: {counts['items']} items of {manifest['embedding']['dim']} dimensions",
        f"index: {section['type']} ({section['factory']}{'; ' + params if params else ''}), file {section['file']}",
        f"model: {manifest['model']['name_or_path']} (fingerprint {manifest['model']['fingerprint'][:12]})",
        f"created {manifest.get('created')}, updated {manifest.get('updated')}, {len(manifest.get('runs', []))} runs",
    ]
    trained = section.get("trained")
    if trained:
        rule = f"retrain when more than {section['retrain_fraction']:.0%} of that is added"
        state = (
            f"retrain needed: rsmclip index rebuild {path}"
            if section.get("retrain_needed")
            else "no retrain needed"
        )
        lines.append(
            f"trained {trained['at']} on a sample of {trained['sample']} of {trained['num_vectors']} vectors; "
            f"{section['added_since_training']} added since ({rule}): {state}"
        )
    else:
        lines.append(
            f"trained {manifest.get('updated')} (every build, add and rebuild retrains this index type)"
        )
    return lines


def _run_info(args: argparse.Namespace) -> int:
    manifest_path = args.index / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no index at {args.index}: {manifest_path} not found")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if args.json:
        print(json.dumps(manifest, ensure_ascii=False, indent=1))
    else:
        print("\n".join(_info_lines(args.index, manifest)))
    return 0


def _run_rebuild(args: argparse.Namespace) -> int:
    from . import RSMCLIPIndex, rebuild_index

    rebuild_index(args.index, args.index_type, progress=not args.quiet)
    print(_summary(RSMCLIPIndex.load(args.index)))
    return 0


def _format_table(results: list[dict[str, Any]]) -> str:
    headers = ["rank", "score", "label", "id"]
    geo = any(r.get("bbox") for r in results)
    stac = any(r.get("stac_item") for r in results)
    if geo:
        headers.append("bbox (W,S,E,N)")
    if stac:
        headers += ["date", "cloud %", "STAC item"]
    lines = []
    for r in results:
        row = [str(r["rank"]), f"{r['score']:.4f}", str(r.get("label") or "-"), str(r["id"])]
        if geo:
            row.append(",".join(f"{v:.5f}" for v in r["bbox"]) if r.get("bbox") else "-")
        if stac:
            cloud = r.get("cloud_cover")
            row.append(str(r.get("datetime") or "-")[:10])
            row.append(f"{cloud:g}" if cloud is not None else "-")
            row.append(str(r.get("stac_item_href") or r.get("stac_item") or "-"))
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


def _run_verify(args: argparse.Namespace) -> int:
    from .integrity import IndexFileError
    from .verify import verify_index

    result = verify_index(args.index, record=args.record, repair=args.repair)
    if result.problems:
        raise IndexFileError(
            result.summary() + " (`--repair` rebuilds the FAISS file and metadata from the shards)"
        )
    print(result.summary())
    return 0


def _add_verify_parser(actions: Any) -> None:
    verify = actions.add_parser(
        "verify",
        help="check an index folder against its checksums and its shards; repair it from the shards",
        description="Check every file of an index folder against the size and checksum its manifest records, and "
        "the FAISS vectors and metadata rows against the shards they were merged from. Exit status 2, with one "
        "error line naming each damaged file, when something is wrong.",
    )
    verify.add_argument("index", type=Path, help="index folder")
    verify.add_argument(
        "--repair",
        action="store_true",
        help="rebuild a damaged index.faiss / metadata.parquet / report.json from intact shards",
    )
    verify.add_argument(
        "--record",
        action="store_true",
        help="record the checksums of an index written before they existed (after the check passed)",
    )
    verify.set_defaults(func=_guarded(_run_verify))


def _guarded(func: Any) -> Any:
    """A KeyError (an unknown metadata column) is a user error too; `errors.run_command` reports the rest."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except KeyError as err:
            raise UserError(err.args[0] if err.args else str(err)) from err

    return run


def _add_rebuild_and_info_parsers(actions: Any) -> None:
    """``rsmclip index rebuild`` (retrain from the stored embeddings) and ``rsmclip index info``."""
    rebuild = actions.add_parser(
        "rebuild",
        help="retrain the index from its stored embeddings (no re-embedding); needed by ivfpq-disk after large adds",
    )
    rebuild.add_argument("index", type=Path, help="index folder")
    rebuild.add_argument("--index-type", default=None, help=_index_type_help() + " (default: the index's)")
    rebuild.add_argument("--quiet", action="store_true", help="no progress bar")
    rebuild.set_defaults(func=_guarded(_run_rebuild))

    info = actions.add_parser("info", help="the index's type, size, model and when it was trained")
    info.add_argument("index", type=Path, help="index folder")
    info.add_argument("--json", action="store_true", help="print the whole manifest")
    info.set_defaults(func=_guarded(_run_info))


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    index = subparsers.add_parser(
        "index",
        help="build or extend a searchable archive index (Parquet + FAISS)",
        description="Build or extend an archive index: embeddings and metadata as Parquet shards, a FAISS index "
        "and a manifest. A killed build resumes where it stopped when run again; under `accelerate launch` or "
        "`torchrun` the work is split across processes; with --engine ray it runs on a Ray cluster.",
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
    _add_verify_parser(actions)
    _add_rebuild_and_info_parsers(actions)
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
