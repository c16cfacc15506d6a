"""Archive search: a persistent, resumable image index (Parquet shards + FAISS) queried in ten languages.

`build_index` / `add_to_index` embed image folders, builder datasets and GeoTIFF scenes (cut into tiles) into an
index folder; `RSMCLIPIndex.load(path).search(query)` answers text or image queries; `to_geojson` turns results into
a FeatureCollection of footprints; `verify_index` checks a folder against its checksums and shards (and repairs it
from them). Needs ``pip install "rsmclip[index]"`` (faiss, pyarrow; rasterio for scenes).
Names are imported lazily, so ``import modeling_rsmclip.index`` works without the extra.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "build_index": ".build",
    "add_to_index": ".build",
    "choose_index": ".build",
    "rebuild_index": ".build",
    "RSMCLIPIndex": ".search",
    "IndexModelMismatchError": ".search",
    "parse_where": ".search",
    "to_geojson": ".search",
    "bundled_sample_index": ".sample",
    "IndexFileError": ".integrity",
    "verify_index": ".verify",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
