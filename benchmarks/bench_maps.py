"""Scene-map throughput and peak memory: `rsmclip map classify` and `rsmclip map segment` on large scenes.

The scene is a GDAL VRT mosaic of real UC Merced images (256 px, 0.3 m) laid on a grid with a chosen
geotransform (EPSG:32611), built in a temporary folder: nothing is copied, GDAL reads the JPEGs by window. Each
measurement runs in a fresh process, so its peak RSS (`ru_maxrss`) is its own; the model is loaded before the clock
starts, and the timed part is the whole map: reading windows, band conversion, the processor, the model, the
blending and the written GeoTIFF / GeoJSON / overlay PNG.

    python benchmarks/bench_maps.py                                   # the default plan (see PLAN), demo + full size
    python benchmarks/bench_maps.py --only demo-classify-20k          # one entry
    flock /tmp/rsmclip-heavy.lock python benchmarks/bench_maps.py     # on a shared machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, cpu_model, write_result

CELL = 256
PIXEL = 0.3
ORIGIN = (500000.0, 4100000.0)
LABELS = "farmland,beach,forest,buildings,parking lot,river,road"

# name: (model, task, scene size in px, window / tile px, stride px or None, labels)
PLAN: dict[str, dict] = {
    "demo-classify-20k": {"model": "demo", "task": "classify", "size": 20000, "window": 512, "stride": None},
    "demo-segment-20k": {"model": "demo", "task": "segment", "size": 20000, "window": 1024, "stride": 768},
    "demo-classify-2k": {"model": "demo", "task": "classify", "size": 2048, "window": 256, "stride": None},
    "demo-segment-2k": {"model": "demo", "task": "segment", "size": 2048, "window": 256, "stride": 128},
    "full-classify-2k": {
        "model": "rs-m-clip",
        "task": "classify",
        "size": 2048,
        "window": 256,
        "stride": None,
    },
    "full-segment-2k": {"model": "rs-m-clip", "task": "segment", "size": 2048, "window": 256, "stride": 128},
    # The same with int8 weights (PyTorch dynamic quantisation, CPU), to read against the two above.
    "full-classify-2k-int8": {
        "model": "rs-m-clip",
        "task": "classify",
        "size": 2048,
        "window": 256,
        "stride": None,
        "precision": "int8",
    },
    "full-segment-2k-int8": {
        "model": "rs-m-clip",
        "task": "segment",
        "size": 2048,
        "window": 256,
        "stride": 128,
        "precision": "int8",
    },
}


def _ucm_images() -> list[Path]:
    from PIL import Image

    root = (
        Path(os.environ.get("RSMCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
        / "ucm-captions"
        / "images"
    )
    if not root.is_dir():
        raise SystemExit(f"UCM images not found at {root}: set RSMCLIP_SHARED_DATA")
    paths = []
    for path in sorted(root.glob("*.jpg"), key=lambda p: int(p.stem)):
        with Image.open(path) as image:
            if image.size == (CELL, CELL):
                paths.append(path)
    return paths


def build_vrt(path: Path, size: int, images: list[Path]) -> Path:
    """A ``size`` x ``size`` RGB VRT mosaic of 256 px JPEGs (reused in turn), 0.3 m pixels, EPSG:32611."""
    from rasterio.crs import CRS

    cells = -(-size // CELL)
    wkt = CRS.from_epsg(32611).to_wkt()
    parts = [
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}">',
        f"<SRS>{wkt.replace('&', '&amp;').replace('<', '&lt;')}</SRS>",
        f"<GeoTransform>{ORIGIN[0]}, {PIXEL}, 0, {ORIGIN[1]}, 0, {-PIXEL}</GeoTransform>",
    ]
    for band, colour in ((1, "Red"), (2, "Green"), (3, "Blue")):
        parts.append(f'<VRTRasterBand dataType="Byte" band="{band}"><ColorInterp>{colour}</ColorInterp>')
        for i in range(cells * cells):
            row, col = divmod(i, cells)
            parts.append(
                f'<SimpleSource><SourceFilename relativeToVRT="0">{images[i % len(images)]}</SourceFilename>'
                f"<SourceBand>{band}</SourceBand>"
                f'<SourceProperties RasterXSize="{CELL}" RasterYSize="{CELL}" DataType="Byte" '
                f'BlockXSize="{CELL}" BlockYSize="1"/>'
                f'<SrcRect xOff="0" yOff="0" xSize="{CELL}" ySize="{CELL}"/>'
                f'<DstRect xOff="{col * CELL}" yOff="{row * CELL}" xSize="{CELL}" ySize="{CELL}"/></SimpleSource>'
            )
        parts.append("</VRTRasterBand>")
    parts.append("</VRTDataset>")
    path.write_text("\n".join(parts))
    return path


def _load_model(name: str):
    import torch

    import modeling_rsmclip  # noqa: F401
    from modeling_rsmclip.geo.zero_shot import load_model

    if name == "demo":
        return load_model("demo")
    from modeling_rsmclip import RSMCLIPConfig, RSMCLIPModel

    # The real architecture with random weights (speed only), and the demo processor re-sized to 224 px.
    torch.manual_seed(0)
    config = RSMCLIPConfig.from_preset(name)
    model = RSMCLIPModel(config).eval()
    _, processor = load_model("demo")
    size = config.vision_config.image_size
    processor.image_processor.size = {"shortest_edge": size}
    processor.image_processor.crop_size = {"height": size, "width": size}
    # The demo tokenizer has fewer ids than XLM-R: fine for speed, the ids stay in range.
    return model, processor


def run_one(name: str, scene: Path, out_dir: Path) -> dict:
    """One plan entry in this process."""
    import torch

    entry = PLAN[name]
    torch.set_num_threads(os.cpu_count() or 1)
    model, processor = _load_model(entry["model"])
    if entry.get("precision", "fp32") != "fp32":  # quantised once, before the clock (as `rsmclip app` does)
        from modeling_rsmclip.geo.zero_shot import inference_model

        model = inference_model(model, processor, "torch", entry["precision"], inplace=True)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if entry["task"] == "classify":
        from modeling_rsmclip.geo import classify_scene

        result = classify_scene(
            scene, LABELS, model=model, processor=processor, tile_size=entry["window"], output_dir=out_dir
        )
        units = {"tiles": len(result.grid), "skipped": len(result.skipped)}
    else:
        from modeling_rsmclip.geo import segment_scene

        result = segment_scene(
            scene,
            LABELS,
            model=model,
            processor=processor,
            window=entry["window"],
            stride=entry["stride"],
            output_dir=out_dir,
        )
        units = {"windows": result.windows, "skipped": result.skipped_windows}
    seconds = time.perf_counter() - start
    megapixels = entry["size"] ** 2 / 1e6
    return {
        "name": name,
        **entry,
        **units,
        "megapixels": megapixels,
        "seconds": round(seconds, 1),
        "megapixels_per_second": round(megapixels / seconds, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_after_model_mib": round(rss_before),
        "outputs": sorted(p.name for p in out_dir.iterdir()),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", choices=sorted(PLAN), help="plan entries to run (default: all)")
    parser.add_argument("--output", default=str(REPO / "results" / "bench_maps.json"), help="results JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scene", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        out = Path(tempfile.mkdtemp(prefix=f"bench-maps-{args.child}-"))
        print(json.dumps(run_one(args.child, Path(args.scene), out)), flush=True)
        return 0

    names = args.only or list(PLAN)
    images = _ucm_images()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-maps-") as tmp:
        scenes: dict[int, Path] = {}
        for name in names:
            size = PLAN[name]["size"]
            if size not in scenes:
                scenes[size] = build_vrt(Path(tmp) / f"ucm_mosaic_{size}.vrt", size, images)
            print(f"== {name}: {PLAN[name]} on {scenes[size].name}", file=sys.stderr, flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name, "--scene", str(scenes[size])],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
            )
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
    report = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "scene": f"VRT mosaic of {len(images)} real UC Merced 256 px images (reused in turn), 0.3 m, EPSG:32611",
        "labels": LABELS,
        "results": results,
    }
    write_result(args.output, report)
    print("| run | model | task | scene | window / stride | windows | s | Mpx/s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        count = r.get("tiles", r.get("windows"))
        stride = r["stride"] or r["window"]
        print(
            f"| {r['name']} | {r['model']} | {r['task']} | {r['size']}x{r['size']} | {r['window']} / {stride} | "
            f"{count} | {r['seconds']} | {r['megapixels_per_second']} | {r['peak_rss_mib']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
