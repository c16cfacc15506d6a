"""Tiling cloud-optimised GeoTIFFs over HTTP against the same files on disk: tiles/s, bytes read per tile, and the
fraction of each scene's bytes that tiling reads, side by side in one run.

The scenes are the sample archive's COGs (`geo.sample_archive`, made from ../shared/data: an 8 x 8 mosaic of UC
Merced images, 2048 x 2048 RGB in 256 px blocks; the four Sentinel-2 quadrants as single-band COGs per band, read
together on one grid; a three-band Landsat scene). "http" reads them from `geo.range_server.RangeServer` on
127.0.0.1 (HTTP Range requests through GDAL's /vsicurl/ with the package's cloud settings, each repetition under a
URL GDAL has not seen, so nothing comes from its cache); "disk" reads the files themselves. The timed part is
`geo.tiling.iter_tiles` over a `RasterReader` (open included): what `rsmclip index build` and `rsmclip map classify`
do before the model. Bytes: for http the response bodies the server sent; for disk the bytes the process asked the
kernel for (``rchar`` of /proc/self/io; the files are in the page cache after the first repetition).

The server is on the same machine, so http here measures the cost of the protocol and GDAL's range logic, not
network latency: with a round-trip time RTT, add about ``requests x RTT`` per scene (requests are listed).

    python benchmarks/bench_cloud.py                       # all cases, 3 repetitions, results/bench_cloud_cpu.json
    python benchmarks/bench_cloud.py --repeats 5 --output results/bench_cloud_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import REPO, cpu_model, git_commit, write_result

# name: scene (item id), tile size, read size (None: full resolution), tiles to read (None: all)
CASES = [
    {"name": "mosaic-256", "scene": "ucm-mosaic", "tile": 256, "read_size": None, "limit": None},
    {"name": "mosaic-224", "scene": "ucm-mosaic", "tile": 224, "read_size": None, "limit": None},
    {"name": "mosaic-1024-as-256", "scene": "ucm-mosaic", "tile": 1024, "read_size": 256, "limit": None},
    {"name": "mosaic-one-tile", "scene": "ucm-mosaic", "tile": 256, "read_size": None, "limit": 1},
    {"name": "sentinel2-rgb-128", "scene": "sentinel2", "tile": 128, "read_size": None, "limit": None},
    {"name": "landsat-224", "scene": "ls-1", "tile": 224, "read_size": None, "limit": None},
]


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def _sources(archive, scene: str, locate) -> list:
    """What a reader opens for a scene: one file, or (Sentinel-2) the B04, B03, B02 files of each quadrant."""
    from modeling_rsmclip.geo.raster import BandSource

    if scene == "sentinel2":
        return [
            [BandSource(locate(archive.path(q, b)), name=b) for b in ("B04", "B03", "B02")]
            for q in ("s2-nw", "s2-ne", "s2-sw", "s2-se")
        ]
    key = next(iter(archive.scene(scene).assets))
    return [locate(archive.path(scene, key))]


def _files(archive, scene: str) -> list[Path]:
    if scene == "sentinel2":
        return [
            archive.path(q, b) for q in ("s2-nw", "s2-ne", "s2-sw", "s2-se") for b in ("B04", "B03", "B02")
        ]
    return [archive.path(scene, next(iter(archive.scene(scene).assets)))]


def run_case(case: dict, archive, server, mode: str) -> dict:
    from modeling_rsmclip.geo.raster import RasterReader
    from modeling_rsmclip.geo.tiling import iter_tiles

    tag = uuid.uuid4().hex[:8]

    def locate(path: Path) -> str:
        return f"{server.url(path)}?run={tag}" if mode == "http" else str(path)

    # Fixed stretches: a percentile one would read a decimated copy of the scene first.
    preset, stretch = {"sentinel2": ("sentinel2", None), "ls-1": (None, (0, 20000))}.get(
        case["scene"], (None, None)
    )
    server.reset_counts()
    before = _rchar()
    start = time.perf_counter()
    tiles = 0
    for source in _sources(archive, case["scene"], locate):
        with RasterReader(source, preset=preset, stretch=stretch) as reader:
            grid = iter_tiles(reader, case["tile"], min_valid=0.0, read_size=case["read_size"])
            if case["limit"] is not None:
                grid.indices = list(range(case["limit"]))
            for _ in grid:
                tiles += 1
    seconds = time.perf_counter() - start
    files = _files(archive, case["scene"])
    sent = sum(server.sent(f) for f in files)
    moved = sent if mode == "http" else _rchar() - before
    size = sum(os.path.getsize(f) for f in files)
    return {
        "tiles": tiles,
        "seconds": seconds,
        "bytes": moved,
        "requests": sum(server.requests[server.key(f)] for f in files) if mode == "http" else None,
        "scene_bytes": size,
    }


def summarise(runs: list[dict]) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    first = runs[0]
    out = {
        "tiles": first["tiles"],
        "seconds_median": round(seconds, 4),
        "seconds_all": [round(r["seconds"], 4) for r in runs],
        "tiles_per_second": round(first["tiles"] / seconds, 2),
        "bytes": int(statistics.median(r["bytes"] for r in runs)),
        "scene_bytes": first["scene_bytes"],
    }
    out["bytes_per_tile"] = int(out["bytes"] / max(1, first["tiles"]))
    out["fraction_of_scene_bytes"] = round(out["bytes"] / first["scene_bytes"], 4)
    if first["requests"] is not None:
        out["requests"] = int(statistics.median(r["requests"] for r in runs))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="repetitions per case and mode (median reported)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    parser.add_argument(
        "--archive", type=Path, default=None, help="reuse a sample archive folder (else temporary)"
    )
    parser.add_argument("--output", type=Path, default=REPO / "results" / "bench_cloud_cpu.json")
    args = parser.parse_args()

    import rasterio

    from modeling_rsmclip.geo.range_server import RangeServer
    from modeling_rsmclip.geo.sample_archive import build_sample_archive
    from modeling_rsmclip.testing import shared_data_dir

    cases = [c for c in CASES if args.only is None or c["name"] in args.only]
    with tempfile.TemporaryDirectory(prefix="rsmclip-bench-cloud-") as tmp:
        root = args.archive or Path(tmp) / "archive"
        print(f"building the sample archive in {root} ...", file=sys.stderr)
        archive = build_sample_archive(shared_data_dir(), root)
        results = []
        with RangeServer(archive.root) as server:
            for case in cases:
                entry = dict(case)
                for mode in ("disk", "http"):
                    run_case(case, archive, server, mode)  # warm-up: imports, page cache (disk)
                    entry[mode] = summarise(
                        [run_case(case, archive, server, mode) for _ in range(args.repeats)]
                    )
                entry["http_over_disk_seconds"] = round(
                    entry["http"]["seconds_median"] / entry["disk"]["seconds_median"], 2
                )
                results.append(entry)
                d, h = entry["disk"], entry["http"]
                print(
                    f"{case['name']:>20}: {d['tiles']} tiles | disk {d['tiles_per_second']:8.1f} tiles/s "
                    f"{d['bytes_per_tile'] / 1024:7.1f} KiB/tile | http {h['tiles_per_second']:8.1f} tiles/s "
                    f"{h['bytes_per_tile'] / 1024:7.1f} KiB/tile, {h['requests']} requests, "
                    f"{100 * h['fraction_of_scene_bytes']:.1f}% of the scene's bytes",
                    flush=True,
                )
    record = {
        "benchmark": "bench_cloud",
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs",
        "python": platform.python_version(),
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "repeats": args.repeats,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, record)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
