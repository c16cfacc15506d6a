"""A cloud archive in miniature, made from the real rasters of ``shared/data``: cloud-optimised GeoTIFFs laid out as
public catalogs store them, and the STAC items that describe them. Tests and benchmarks serve it over HTTP
(`geo.range_server.RangeServer`), through a static catalog or a STAC API.

`build_sample_archive(shared_data, out)` writes (COG: 128 x 128 blocks, DEFLATE, overviews down to one block):

- ``sentinel2/s2-{nw,ne,sw,se}/B01.tif ... B12.tif``: the four 256 x 256 quadrants of the Sentinel-2 L1C chip
  (``geo/sentinel/spain_...13band.tif``), one single-band COG per band as Sentinel-2 archives hold them: B02, B03,
  B04, B08 at the chip's 10 m, B05, B06, B07, B8A, B11, B12 averaged to 20 m (128 x 128), B01, B09, B10 to 40 m
  (64 x 64; Sentinel-2 has them at 60 m, which does not divide 256 pixels), plus ``visual.tif``, a uint8 true-colour rendering (B4, B3,
  B2 over 0..3000) as the catalogs' "visual" assets are. Four items with known dates and cloud covers
  (`SENTINEL2_ITEMS`), so bbox, datetime and cloud-cover filters have known answers.
- ``sentinel1/s1-spain/vv.tif, vh.tif``: the Sentinel-1 chip of the same footprint, float32 dB, nodata NaN.
- ``landsat/ls-{1,2}/scene.tif``: two overlapping three-band uint16 scenes (``geo/landsat/mosaic_cog*.tif``), each
  one multi-band COG.
- ``aerial/ucm-mosaic/image.tif``: an 8 x 8 mosaic of UC Merced images (2048 x 2048, RGB uint8, 256 x 256 blocks,
  1 m pixels near Porto): the class of every 256-pixel tile is known (`SampleScene.tile_labels`).

`stac_items(archive, base_url, naming=...)` describes them as STAC 1.0 items (eo and raster extensions: band names,
common names, scale, offset, nodata; ``eo:cloud_cover``; footprints in lon/lat). ``naming="band"`` keys the
Sentinel-2 assets ``B04``, ``B03``, ... (as Microsoft Planetary Computer does); ``naming="common"`` keys them ``red``,
``green``, ... (as Element 84's Earth Search does), in a collection of its own. `write_static_catalog` saves them
with pystac.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Sentinel-2 band: (common name, ground resolution in metres). The chip's 13 bands are in this order.
SENTINEL2_BANDS: dict[str, tuple[str, int]] = {
    "B01": ("coastal", 60),
    "B02": ("blue", 10),
    "B03": ("green", 10),
    "B04": ("red", 10),
    "B05": ("rededge", 20),
    "B06": ("rededge", 20),
    "B07": ("rededge", 20),
    "B08": ("nir", 10),
    "B8A": ("nir08", 20),
    "B09": ("nir09", 60),
    "B10": ("cirrus", 60),
    "B11": ("swir16", 20),
    "B12": ("swir22", 20),
}
# Earth Search's asset keys for the same bands.
SENTINEL2_COMMON_KEYS = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B10": "cirrus",
    "B11": "swir16",
    "B12": "swir22",
}
# item id -> (quadrant row, col, datetime, eo:cloud_cover)
SENTINEL2_ITEMS: dict[str, tuple[int, int, str, float]] = {
    "s2-nw": (0, 0, "2024-05-10T10:30:00Z", 5.0),
    "s2-ne": (0, 1, "2024-06-15T10:30:00Z", 35.0),
    "s2-sw": (1, 0, "2024-07-20T10:30:00Z", 12.0),
    "s2-se": (1, 1, "2024-08-25T10:30:00Z", 80.0),
}
LANDSAT_ITEMS: dict[str, tuple[str, str, float]] = {
    "ls-1": ("landsat/mosaic_cog1.tif", "2023-09-01T15:40:00Z", 20.0),
    "ls-2": ("landsat/mosaic_cog2.tif", "2023-09-17T15:40:00Z", 50.0),
}
COLLECTIONS = {
    "sentinel-2-l1c-sample": "Sentinel-2 L1C chip (Sen1Floods11, Spain), quadrants, one COG per band (keys B04...)",
    "sentinel-2-l1c-sample-common": "the same items with assets keyed by common name (red, green, ...)",
    "sentinel-1-sample": "Sentinel-1 GRD VV/VH chip in dB (Sen1Floods11, Spain), one COG per polarisation",
    "landsat-rgb-sample": "two overlapping three-band Landsat scenes, one multi-band COG each",
    "aerial-sample": "an 8 x 8 mosaic of UC Merced aerial images, one RGB COG",
}
S2_SCALE, S2_OFFSET = 1e-4, 0.0
MOSAIC_ORIGIN = (530000.0, 4560000.0)  # EPSG:32629, upper-left corner
MOSAIC_GRID = 8
MOSAIC_TILE = 256


@dataclass
class SampleAsset:
    """One file of a scene: ``path`` relative to the archive root and its bands' metadata (name, common name,
    scale, offset, nodata, data type)."""

    path: str
    bands: list[dict[str, Any]]
    roles: tuple[str, ...] = ("data",)
    gsd: float | None = None


@dataclass
class SampleScene:
    """One acquisition: a STAC item to be."""

    id: str
    collection: str
    datetime: str
    cloud_cover: float | None
    assets: dict[str, SampleAsset]
    geometry: dict[str, Any]
    bbox: list[float]
    epsg: int | None
    platform: str | None = None
    tile_labels: dict[tuple[int, int], str] = field(default_factory=dict)


@dataclass
class SampleArchive:
    root: Path
    scenes: list[SampleScene]

    def scene(self, item_id: str) -> SampleScene:
        return next(s for s in self.scenes if s.id == item_id)

    def path(self, item_id: str, key: str) -> Path:
        return self.root / self.scene(item_id).assets[key].path


def write_cog(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    crs: Any,
    transform: Any,
    nodata: float | None = None,
    descriptions: list[str] | None = None,
    blocksize: int = 128,
) -> Path:
    """``data`` (bands, H, W) as a cloud-optimised GeoTIFF (GDAL's COG driver: tiled, DEFLATE, overviews averaged
    until one block holds the whole raster)."""
    import rasterio
    import rasterio.shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.tif")
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    with rasterio.open(tmp, "w", **profile) as out:
        out.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            out.set_band_description(i, text)
    rasterio.shutil.copy(
        tmp,
        path,
        driver="COG",
        BLOCKSIZE=blocksize,
        COMPRESS="DEFLATE",
        PREDICTOR="YES",
        OVERVIEW_RESAMPLING="AVERAGE",
    )
    tmp.unlink()
    return path


def _block_mean(data: np.ndarray, factor: int, nodata: float | None) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks (ignoring nodata), keeping the dtype."""
    h, w = data.shape[-2] // factor, data.shape[-1] // factor
    blocks = (
        data[..., : h * factor, : w * factor]
        .reshape(*data.shape[:-2], h, factor, w, factor)
        .astype(np.float64)
    )
    if nodata is not None:
        blocks = np.where(blocks == nodata, np.nan, blocks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nodata blocks
        mean = np.nanmean(blocks, axis=(-3, -1))
    if nodata is not None:
        mean = np.where(np.isnan(mean), nodata, mean)
    return np.rint(mean).astype(data.dtype) if data.dtype.kind in "iu" else mean.astype(data.dtype)


def _footprint(crs: Any, transform: Any, width: int, height: int) -> tuple[dict[str, Any], list[float]]:
    from rasterio.warp import transform_geom

    corners = [
        transform @ (0, 0),
        transform @ (width, 0),
        transform @ (width, height),
        transform @ (0, height),
    ]
    ring = [[float(x), float(y)] for x, y in corners]
    geom = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    if crs.to_epsg() != 4326:
        geom = transform_geom(crs, "EPSG:4326", geom)
    xs = [p[0] for p in geom["coordinates"][0]]
    ys = [p[1] for p in geom["coordinates"][0]]
    return geom, [min(xs), min(ys), max(xs), max(ys)]


def build_sample_archive(shared_data: str | os.PathLike, out: str | os.PathLike) -> SampleArchive:
    """Write the archive (see module doc) under ``out`` from ``shared_data`` (the ``shared/data`` folder)."""
    from affine import Affine

    from .raster import RasterReader

    shared, root = Path(shared_data), Path(out)
    geo = shared / "geo"
    scenes: list[SampleScene] = []

    # Sentinel-2: quadrants, one COG per band at the band's own resolution.
    with RasterReader(geo / "sentinel" / "spain_7370579_s2_l1c_13band.tif") as reader:
        src = reader.dataset
        chip, crs, transform, nodata = src.read(), src.crs, src.transform, src.nodata
    half = chip.shape[1] // 2
    for item_id, (qrow, qcol, when, cloud) in SENTINEL2_ITEMS.items():
        quad = chip[:, qrow * half : (qrow + 1) * half, qcol * half : (qcol + 1) * half]
        base = transform @ Affine.translation(qcol * half, qrow * half)
        assets: dict[str, SampleAsset] = {}
        for i, (band, (common, metres)) in enumerate(SENTINEL2_BANDS.items()):
            factor = {10: 1, 20: 2, 60: 4}[metres]
            data = quad[i : i + 1] if factor == 1 else _block_mean(quad[i : i + 1], factor, nodata)
            rel = f"sentinel2/{item_id}/{band}.tif"
            write_cog(root / rel, data, crs=crs, transform=base @ Affine.scale(factor), nodata=nodata)
            meta = {"name": band, "common_name": common, "scale": S2_SCALE, "offset": S2_OFFSET}
            meta.update(nodata=nodata, data_type="int16")
            assets[band] = SampleAsset(rel, [meta], gsd=10.0 * factor)
        rgb = np.clip(quad[[3, 2, 1]].astype(np.float64) / 3000.0, 0, 1)
        visual = np.rint(rgb * 255).astype(np.uint8)
        rel = f"sentinel2/{item_id}/visual.tif"
        write_cog(root / rel, visual, crs=crs, transform=base, descriptions=["red", "green", "blue"])
        names = [("red", "red"), ("green", "green"), ("blue", "blue")]
        assets["visual"] = SampleAsset(
            rel, [{"name": n, "common_name": c, "data_type": "uint8"} for n, c in names], roles=("visual",)
        )
        geom, bbox = _footprint(crs, base, half, half)
        scenes.append(
            SampleScene(
                item_id, "sentinel-2-l1c-sample", when, cloud, assets, geom, bbox, 4326, "sentinel-2a"
            )
        )

    # Sentinel-1: the whole chip, one COG per polarisation.
    with RasterReader(geo / "sentinel" / "spain_7370579_s1_vv_vh_db.tif") as reader:
        src = reader.dataset
        sar, crs, transform = src.read(), src.crs, src.transform
    assets = {}
    for i, pol in enumerate(("vv", "vh")):
        rel = f"sentinel1/s1-spain/{pol}.tif"
        write_cog(root / rel, sar[i : i + 1], crs=crs, transform=transform, nodata=float("nan"))
        assets[pol] = SampleAsset(rel, [{"nodata": "nan", "data_type": "float32", "unit": "dB"}])
    geom, bbox = _footprint(crs, transform, sar.shape[2], sar.shape[1])
    scenes.append(
        SampleScene(
            "s1-spain",
            "sentinel-1-sample",
            "2024-06-16T18:00:00Z",
            None,
            assets,
            geom,
            bbox,
            4326,
            "sentinel-1a",
        )
    )

    # Landsat: two overlapping scenes, one three-band COG each.
    for item_id, (name, when, cloud) in LANDSAT_ITEMS.items():
        with RasterReader(geo / name) as reader:
            src = reader.dataset
            data, crs, transform, nodata = src.read(), src.crs, src.transform, src.nodata
        rel = f"landsat/{item_id}/scene.tif"
        write_cog(root / rel, data, crs=crs, transform=transform, nodata=nodata, blocksize=256)
        bands = [
            {"name": n, "common_name": c, "nodata": nodata, "data_type": "uint16"}
            for n, c in (("B4", "red"), ("B3", "green"), ("B2", "blue"))
        ]
        geom, bbox = _footprint(crs, transform, data.shape[2], data.shape[1])
        scenes.append(
            SampleScene(
                item_id,
                "landsat-rgb-sample",
                when,
                cloud,
                {"scene": SampleAsset(rel, bands)},
                geom,
                bbox,
                crs.to_epsg(),
            )
        )

    scenes.append(_ucm_mosaic(shared, root))
    return SampleArchive(root, scenes)


def _ucm_mosaic(shared: Path, root: Path) -> SampleScene:
    from affine import Affine
    from PIL import Image
    from rasterio.crs import CRS

    ucm = shared / "ucm-captions"
    labels = {}
    for line in (ucm / "labels.csv").read_text().splitlines()[1:]:
        name, label, _ = line.split(",")
        labels[name] = label
    classes = sorted(set(labels.values()))
    size = MOSAIC_GRID * MOSAIC_TILE
    mosaic = np.zeros((3, size, size), dtype=np.uint8)
    tile_labels = {}
    for k in range(MOSAIC_GRID * MOSAIC_GRID):
        row, col = divmod(k, MOSAIC_GRID)
        cls = k % len(classes)
        name = f"{cls * 100 + 1 + k // len(classes)}.jpg"
        image = Image.open(ucm / "images" / name).convert("RGB").resize((MOSAIC_TILE, MOSAIC_TILE))
        rows = slice(row * MOSAIC_TILE, (row + 1) * MOSAIC_TILE)
        cols = slice(col * MOSAIC_TILE, (col + 1) * MOSAIC_TILE)
        mosaic[:, rows, cols] = np.asarray(image).transpose(2, 0, 1)
        tile_labels[(row, col)] = labels[name]
    crs = CRS.from_epsg(32629)
    transform = Affine.translation(*MOSAIC_ORIGIN) @ Affine.scale(1.0, -1.0)  # 1 m pixels
    rel = "aerial/ucm-mosaic/image.tif"
    write_cog(root / rel, mosaic, crs=crs, transform=transform, blocksize=MOSAIC_TILE)
    bands = [{"name": c, "common_name": c, "data_type": "uint8"} for c in ("red", "green", "blue")]
    geom, bbox = _footprint(crs, transform, size, size)
    return SampleScene(
        "ucm-mosaic",
        "aerial-sample",
        "2010-06-01T12:00:00Z",
        0.0,
        {"image": SampleAsset(rel, bands, gsd=1.0)},
        geom,
        bbox,
        32629,
        tile_labels=tile_labels,
    )


# ------------------------------------------------------------------------------------------------------- STAC
EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def _asset_dict(asset: SampleAsset, href: str) -> dict[str, Any]:
    eo_bands, raster_bands = [], []
    for band in asset.bands:
        eo = {k: band[k] for k in ("name", "common_name") if band.get(k)}
        if eo:
            eo_bands.append(eo)
        raster = {k: band[k] for k in ("scale", "offset", "data_type", "unit") if k in band}
        if "nodata" in band and band["nodata"] is not None:
            value = band["nodata"]
            raster["nodata"] = "nan" if isinstance(value, float) and np.isnan(value) else value
        raster_bands.append(raster)
    out: dict[str, Any] = {"href": href, "type": COG_TYPE, "roles": list(asset.roles)}
    if eo_bands:
        out["eo:bands"] = eo_bands
    if any(raster_bands):
        out["raster:bands"] = raster_bands
    if asset.gsd is not None:
        out["gsd"] = asset.gsd
    return out


def stac_items(archive: SampleArchive, base_url: str, naming: str = "band") -> list[dict[str, Any]]:
    """STAC item dicts of the archive's scenes with asset hrefs under ``base_url`` (the archive root served over
    HTTP, or a local folder). ``naming="common"`` gives only the Sentinel-2 items, keyed by common name, in the
    ``sentinel-2-l1c-sample-common`` collection."""
    if naming not in ("band", "common"):
        raise ValueError(f"naming is 'band' or 'common', got {naming!r}")
    items = []
    for scene in archive.scenes:
        if naming == "common" and scene.collection != "sentinel-2-l1c-sample":
            continue
        collection = scene.collection + ("-common" if naming == "common" else "")
        assets = {}
        for key, asset in scene.assets.items():
            href = f"{base_url.rstrip('/')}/{asset.path}"
            data = _asset_dict(asset, href)
            if naming == "common" and key in SENTINEL2_COMMON_KEYS:
                key = SENTINEL2_COMMON_KEYS[key]
                data["eo:bands"] = [{**data["eo:bands"][0], "name": key}]
            assets[key] = data
        properties: dict[str, Any] = {"datetime": scene.datetime}
        if scene.cloud_cover is not None:
            properties["eo:cloud_cover"] = scene.cloud_cover
        if scene.platform:
            properties["platform"] = scene.platform
        if scene.epsg:
            properties["proj:epsg"] = scene.epsg
        if scene.collection == "sentinel-1-sample":
            properties["sar:polarizations"] = ["VV", "VH"]
        items.append(
            {
                "type": "Feature",
                "stac_version": "1.0.0",
                "stac_extensions": [EO, RASTER],
                "id": scene.id,
                "collection": collection,
                "geometry": scene.geometry,
                "bbox": scene.bbox,
                "properties": properties,
                "assets": assets,
                "links": [],
            }
        )
    return items


def stac_collections(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A STAC collection dict for each collection the items name (extent from the items)."""
    out = []
    for cid in dict.fromkeys(item["collection"] for item in items):
        members = [i for i in items if i["collection"] == cid]
        boxes = np.array([i["bbox"] for i in members])
        times = sorted(i["properties"]["datetime"] for i in members)
        out.append(
            {
                "type": "Collection",
                "stac_version": "1.0.0",
                "stac_extensions": [],
                "id": cid,
                "description": COLLECTIONS.get(cid, cid),
                "license": "proprietary",
                "extent": {
                    "spatial": {
                        "bbox": [[*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()]]
                    },
                    "temporal": {"interval": [[times[0], times[-1]]]},
                },
                "links": [],
            }
        )
    return out


def write_static_catalog(items: list[dict[str, Any]], out: str | os.PathLike, title: str = "sample") -> Path:
    """A self-contained static STAC catalog (pystac: catalog -> collections -> items) of ``items`` under ``out``,
    and ``items.json``, the same items as one FeatureCollection. Returns the ``catalog.json`` path."""
    import pystac

    out = Path(out)
    catalog = pystac.Catalog(id=title, description=f"{title}: a static catalog of the sample archive")
    for data in stac_collections(items):
        collection = pystac.Collection.from_dict(data)
        for item in items:
            if item["collection"] == collection.id:
                collection.add_item(pystac.Item.from_dict(item))
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(out))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    (out / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}, indent=1))
    return out / "catalog.json"


__all__ = [
    "SENTINEL2_BANDS",
    "SENTINEL2_ITEMS",
    "SampleArchive",
    "SampleScene",
    "build_sample_archive",
    "stac_collections",
    "stac_items",
    "write_cog",
    "write_static_catalog",
]
