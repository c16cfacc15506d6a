"""Scenes and maps: georeferenced rasters in, georeferenced answers out (needs ``pip install "rsmclip[geo]"``).

- `bands`: sensor band presets and the stretch to 8-bit RGB (`list_band_presets`, `resolve_preset`).
- `raster`: `RasterReader`, windowed reading with nodata / alpha masks, CRS and geotransform, of local or remote
  (COG over HTTP / object storage) files, or of a `BandSource` list read on one grid.
- `cloud`: the GDAL settings, URL signing and retries of remote reads (`cloud_env`, `RetryPolicy`).
- `stac`: `search_items(StacQuery(...))` over a STAC API or static catalog, `select_bands` / `open_item` from the
  items' own band metadata (needs ``pip install "rsmclip[stac]"``).
- `scene`: `open_scene`, what a map reads: a raster path or URL or a STAC item, whole or a lon/lat ``bbox`` of it.
- `tiling`: `TileGrid`, `iter_tiles` (tiles with footprints in the raster CRS and lon/lat).
- `zero_shot`: `classify_scene`, a zero-shot class per tile written as GeoTIFF, GeoJSON and an overlay PNG.
- `naclip`: `segment_scene`, open-vocabulary per-pixel classes (NACLIP, Hajimiri et al., WACV 2025).

Names are imported lazily, so ``import modeling_rsmclip.geo`` does not import rasterio.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "BandPreset": ".bands",
    "BandSelection": ".bands",
    "Stretch": ".bands",
    "list_band_presets": ".bands",
    "resolve_preset": ".bands",
    "RasterReader": ".raster",
    "BandSource": ".raster",
    "RemoteReadError": ".cloud",
    "RetryPolicy": ".cloud",
    "cloud_env": ".cloud",
    "StacQuery": ".stac",
    "search_items": ".stac",
    "select_bands": ".stac",
    "open_item": ".stac",
    "open_scene": ".scene",
    "Tile": ".tiling",
    "TileGrid": ".tiling",
    "TileIterator": ".tiling",
    "iter_tiles": ".tiling",
    "SceneClassification": ".zero_shot",
    "classify_scene": ".zero_shot",
    "SceneSegmentation": ".naclip",
    "segment_scene": ".naclip",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
