"""``rsmclip map classify`` and ``rsmclip map segment``: georeferenced maps from a GeoTIFF scene."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import cli_type
from ..inference.options import add_backend_arguments
from ..templates import LANGUAGES
from .options import parse_bands, parse_bbox


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scene",
        help="GeoTIFF / COG scene: a path, a URL (https://, s3://, ...), or a STAC item (URL or .json file; "
        "its bands are chosen from its metadata)",
    )
    parser.add_argument(
        "--labels",
        required=True,
        help='comma-separated class names in --language, e.g. "água,floresta,cidade"',
    )
    parser.add_argument(
        "--language", default="en", choices=LANGUAGES, help="language of the labels and prompt templates"
    )
    parser.add_argument("--output", required=True, help="output folder (GeoTIFF, PNG overlay, ...)")
    parser.add_argument(
        "--model", default="demo", help='model folder or Hub id; "demo" = the bundled demo model (default)'
    )
    group = parser.add_argument_group("bands")
    group.add_argument(
        "--preset", default=None, help="band preset (sentinel2, sentinel1, landsat8, landsat9, naip, rgb)"
    )
    group.add_argument(
        "--bands",
        type=cli_type(parse_bands),
        default=None,
        help="explicit bands: 0-based indices 3,2,1 or names B4,B3,B2",
    )
    group.add_argument(
        "--stretch", default=None, help="'percentile', 'p2,98', or fixed 'LOW,HIGH' (e.g. 0,3000)"
    )
    area = parser.add_argument_group("area and remote reading")
    area.add_argument(
        "--bbox",
        type=cli_type(parse_bbox),
        default=None,
        help="map only this lon/lat box west,south,east,north (only its window is read; outputs on its grid)",
    )
    area.add_argument(
        "--signer",
        default=None,
        metavar="MODULE:FUNCTION",
        help="sign remote hrefs before reading, e.g. planetary_computer:sign",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    add_backend_arguments(parser.add_argument_group("inference"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The command's encoder and processor; the backend / precision / device choice is checked before the model
    is loaded. A CPU encoder quantises the loaded model itself (no fp32 copy kept)."""
    from ..inference import check_backend, load_encoder, load_model, resolve_device

    cpu_encoder = check_backend(args.backend, args.precision, args.device)
    device = None if cpu_encoder else resolve_device(args.device)
    model, processor = load_model(args.model, device=device)
    return load_encoder(model, args.backend, args.precision, processor, inplace=True), processor


def _signer(args: argparse.Namespace) -> Any:
    from .cloud import load_signer

    return load_signer(args.signer) if args.signer else None


def _check_outputs(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Before the model is loaded: the files written into --output overwrite neither the scene nor the model."""
    from ..inference import local_model_folder
    from ..safe_io import check_outputs_not_inputs

    outputs = [Path(args.output) / name for name in names]
    check_outputs_not_inputs(outputs, [args.scene, local_model_folder(args.model)])


def _classify(args: argparse.Namespace) -> int:
    from .writer import CLASSIFICATION_FILES
    from .zero_shot import classify_scene

    signer = _signer(args)
    _check_outputs(args, CLASSIFICATION_FILES)
    model, processor = _load(args)
    result = classify_scene(
        args.scene,
        args.labels,
        model=model,
        processor=processor,
        language=args.language,
        tile_size=args.tile_size,
        overlap=args.overlap,
        preset=args.preset,
        bands=args.bands,
        stretch=args.stretch,
        min_valid=args.min_valid,
        batch_size=args.batch_size,
        output_dir=args.output,
        progress=not args.no_progress,
        backend=args.backend,
        precision=args.precision,
        bbox=args.bbox,
        signer=signer,
    )
    print(json.dumps(result.summary(), ensure_ascii=False, indent=2))
    return 0


def _segment(args: argparse.Namespace) -> int:
    from .naclip import check_segment_backend, segment_scene
    from .writer import SEGMENTATION_FILES

    check_segment_backend(args.backend)
    signer = _signer(args)
    _check_outputs(args, SEGMENTATION_FILES)
    model, processor = _load(args)
    result = segment_scene(
        args.scene,
        args.labels,
        model=model,
        processor=processor,
        language=args.language,
        window=args.window,
        stride=args.stride,
        naclip=not args.no_naclip,
        preset=args.preset,
        bands=args.bands,
        stretch=args.stretch,
        batch_size=args.batch_size,
        output_dir=args.output,
        progress=not args.no_progress,
        backend=args.backend,
        precision=args.precision,
        bbox=args.bbox,
        signer=signer,
    )
    print(json.dumps(result.summary(), ensure_ascii=False, indent=2))
    return 0


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "map",
        help="georeferenced maps from a GeoTIFF scene (zero-shot tiles, open-vocabulary segmentation)",
        description="Georeferenced maps from a GeoTIFF scene, a COG URL or a STAC item, whole or a --bbox window "
        "of it. Needs rasterio: pip install 'rsmclip[geo]' (STAC items: 'rsmclip[stac]').",
    )
    actions = parser.add_subparsers(dest="map_command", metavar="ACTION")

    classify = actions.add_parser(
        "classify",
        help="zero-shot class per tile: classes.tif (class id + probability), tiles.geojson, overlay.png",
        description="Zero-shot class of every tile of a scene, written as a GeoTIFF at tile resolution (band 1 "
        "class id, band 2 top-1 probability, the scene's CRS), a GeoJSON of the tiles in lon/lat and a PNG overlay.",
    )
    _add_common(classify)
    classify.add_argument("--tile-size", default="224", help="tile size in pixels (224) or metres (500m)")
    classify.add_argument("--overlap", default="0", help="overlap between tiles, pixels or metres")
    classify.add_argument(
        "--min-valid", type=float, default=0.5, help="skip tiles with a smaller valid (not nodata) fraction"
    )
    classify.set_defaults(func=_classify)

    segment = actions.add_parser(
        "segment",
        help="per-pixel classes (NACLIP): segmentation.tif with the scene's CRS and transform, overlay.png",
        description="Open-vocabulary segmentation by sliding windows with overlap blending (NACLIP, Hajimiri et "
        "al., WACV 2025), written as a uint8 GeoTIFF on the scene's pixel grid (nodata 255) and a PNG overlay.",
    )
    _add_common(segment)
    segment.add_argument("--window", default="224", help="sliding window in pixels (224) or metres (500m)")
    segment.add_argument("--stride", default=None, help="window stride (default: half the window)")
    segment.add_argument(
        "--no-naclip", action="store_true", help="plain CLIP patch features instead of NACLIP's last block"
    )
    segment.set_defaults(func=_segment)

    def _help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_help)
