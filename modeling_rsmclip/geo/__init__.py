"""Scenes and maps: georeferenced rasters in, georeferenced answers out (needs ``pip install "rsmclip[geo]"``).

- `bands`: sensor band presets and the stretch to 8-bit RGB (`list_band_presets`, `resolve_preset`).
- `raster`: `RasterReader`, windowed reading with nodata / alpha masks, CRS and geotransform.
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
