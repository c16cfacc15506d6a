"""``rsmclip map classify`` and ``rsmclip map segment``: georeferenced maps from a GeoTIFF scene."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..inference import PRECISIONS, add_backend_arguments
from ..templates import LANGUAGES


def _bands(value: str) -> list[int | str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if len(items) not in (1, 3):
        raise argparse.ArgumentTypeError(f"give 1 or 3 bands (red,green,blue), got {value!r}")
    return [int(item) if item.lstrip("-").isdigit() else item for item in items]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", help="GeoTIFF / COG scene")
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
        "--bands", type=_bands, default=None, help="explicit bands: 0-based indices 3,2,1 or names B4,B3,B2"
    )
    group.add_argument(
        "--stretch", default=None, help="'percentile', 'p2,98', or fixed 'LOW,HIGH' (e.g. 0,3000)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--device", default=None, help="torch device (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from .zero_shot import load_model

    cpu_only = getattr(args, "backend", "torch") != "torch" or args.precision != "fp32"
    if cpu_only and args.device and args.device != "cpu":
        raise ValueError(
            f"--device {args.device}: the {getattr(args, 'backend', 'torch')} {args.precision} backend runs on "
            "the CPU; use --precision fp32 (and --backend torch) on an accelerator"
        )
    model, processor = load_model(args.model)
    if args.device:
        model.to(args.device)
    if cpu_only:
        # The command needs only the CPU encoder: quantise the loaded model itself, no fp32 copy kept.
        from .zero_shot import inference_model

        model = inference_model(
            model, processor, getattr(args, "backend", "torch"), args.precision, inplace=True
        )
    return model, processor


def _classify(args: argparse.Namespace) -> int:
    from .zero_shot import classify_scene

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
    )
    print(json.dumps(result.summary(), ensure_ascii=False, indent=2))
    return 0


def _segment(args: argparse.Namespace) -> int:
    from .naclip import segment_scene

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
    )
    print(json.dumps(result.summary(), ensure_ascii=False, indent=2))
    return 0


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "map",
        help="georeferenced maps from a GeoTIFF scene (zero-shot tiles, open-vocabulary segmentation)",
        description="Georeferenced maps from a GeoTIFF scene. Needs rasterio: pip install 'rsmclip[geo]'.",
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
    add_backend_arguments(classify)
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
    segment.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32, or int8 weights (PyTorch dynamic quantisation; CPU)",
    )
    segment.set_defaults(func=_segment)

    def _help(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_help)
