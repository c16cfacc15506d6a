"""STAC: find scenes in a catalog and read each one's bands from its own metadata (needs ``pip install
"rsmclip[stac]"``: pystac, pystac-client, cql2).

`search_items(StacQuery(url, collections=, bbox=, datetime=, filter=, max_items=))` takes either a STAC API (searched
with pystac-client, POST ``/search``) or a static catalog, collection, item collection or single item JSON (walked
with pystac and filtered here by the same rules), and returns the items in a fixed order: acquisition time
(``datetime``, else ``start_datetime``) ascending, then collection id, then item id. The order is what makes a work
list reproducible. ``max_items`` keeps the first items in that order; an API that supports sorting (the sort
extension) is asked for that order, otherwise it is the API's own first ``max_items`` that get sorted. ``filter`` is
CQL2 text (``"eo:cloud_cover < 20"``) or CQL2 JSON; a catalog that cannot filter is filtered here, with the ``cql2``
library.

`select_bands(item, preset)` chooses the assets to read from the item's own metadata, never from fixed asset keys:
eo extension common names (``eo:bands[].common_name``; STAC 1.1 ``bands[].eo:common_name``) and band names, the
raster extension's ``scale``, ``offset`` and ``nodata`` (``raster:bands``; STAC 1.1 ``bands[].raster:scale``...).
So ``preset="sentinel2"`` reads red, green and blue whether a catalog calls them ``B04``/``B03``/``B02`` or
``red``/``green``/``blue``, from single-band COGs (one per band) or from one multi-band COG. The result is a list of
`raster.BandSource` that `raster.RasterReader` reads on one grid (`open_item`). An item without the wanted bands
raises `MissingBandsError`, which lists the asset keys it has.

A catalog that is down or answers errors is retried with back-off (`cloud.RetryPolicy`), then reported as a
`StacError` naming the URL.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import re
import urllib.parse
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .bands import get_band_preset, list_band_presets, normalise_band_name
from .cloud import RetryPolicy, error_reason
from .options import parse_bbox as _parse_bbox_text
from .options import parse_datetime, parse_instant
from .raster import BandSource, RasterReader

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "rsmclip[stac]"'
DEFAULT_STAC_RETRY = RetryPolicy(attempts=4, delay=0.5, backoff=2.0)
RETRY_STATUS = (429, 500, 502, 503, 504)
# Assets that are not the measurement itself.
SKIPPED_ROLES = {"thumbnail", "overview", "metadata", "snow-ice", "cloud", "water-mask", "data-mask"}
RASTER_MEDIA = ("image/tiff", "image/jp2", "image/vnd.stac.geotiff", "application/x-geotiff")
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def require_stac() -> tuple[Any, Any]:
    """Import pystac and pystac-client, or say which extra to install."""
    try:
        import pystac
        import pystac_client
    except ImportError as err:
        raise ImportError(
            f"STAC catalogs need pystac and pystac-client ({err.name} is missing): {INSTALL_HINT}"
        ) from err
    return pystac, pystac_client


def _require_cql2() -> Any:
    try:
        import cql2
    except ImportError as err:
        raise ImportError(f"CQL2 filters need the cql2 package: {INSTALL_HINT}") from err
    return cql2


class StacError(OSError):
    """A catalog that cannot be read or searched (after retries), or does not hold STAC."""


class MissingBandsError(ValueError):
    """An item without the bands a preset (or ``bands=``) asks for. ``item_id``, ``wanted``, ``assets``."""

    def __init__(self, item_id: str, wanted: Sequence[str], assets: Sequence[str], detail: str = "") -> None:
        self.item_id, self.wanted, self.assets = item_id, list(wanted), list(assets)
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"STAC item {item_id!r} has no asset with the bands {', '.join(wanted)}{extra}; its assets: "
            f"{', '.join(assets) or '(none)'}"
        )


# ------------------------------------------------------------------------------------------------------ query
def parse_bbox(value: str | Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """``"west,south,east,north"`` (degrees) or 4 numbers -> a checked tuple (`options.parse_bbox`'s rules)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    return _parse_bbox_text(text)


def parse_filter(value: str | dict | None) -> dict | None:
    """CQL2 text (``"eo:cloud_cover < 20"``) or CQL2 JSON (a dict or its JSON text) -> CQL2 JSON, validated."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    cql2 = _require_cql2()
    try:
        if isinstance(value, dict):
            expr = cql2.parse_json(json.dumps(value))
        elif value.lstrip().startswith("{"):
            expr = cql2.parse_json(value)
        else:
            expr = cql2.parse_text(value)
        return expr.to_json()
    except Exception as err:  # cql2 raises its own ParseError / ValidationError / ValueError
        raise ValueError(f"cannot read the CQL2 filter {value!r}: {err}") from None


@dataclass(frozen=True)
class StacQuery:
    """What to search: ``url`` of a STAC API or of a static catalog / collection / item collection / item JSON, and
    ``collections``, ``bbox`` (lon/lat), ``datetime`` (RFC 3339 instant or interval), ``filter`` (CQL2 text or
    JSON), ``max_items``. Recorded as is (`to_dict`) in an index's manifest."""

    url: str
    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    filter: str | dict | None = None
    max_items: int | None = None

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("a STAC query needs the URL (or path) of a catalog")
        if isinstance(self.collections, str):
            object.__setattr__(self, "collections", tuple(c for c in self.collections.split(",") if c))
        else:
            object.__setattr__(self, "collections", tuple(self.collections or ()))
        object.__setattr__(self, "bbox", parse_bbox(self.bbox))
        parse_datetime(self.datetime)
        parse_filter(self.filter)
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {self.max_items}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["collections"] = list(self.collections)
        data["bbox"] = list(self.bbox) if self.bbox else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StacQuery:
        return cls(
            **{k: data.get(k) for k in ("url", "collections", "bbox", "datetime", "filter", "max_items")}
        )


# ----------------------------------------------------------------------------------------------------- search
def item_time(item: Any) -> _dt.datetime | None:
    """An item's acquisition time: ``datetime``, else ``start_datetime`` (UTC)."""
    props = item.properties
    value = item.datetime or props.get("start_datetime")
    if isinstance(value, str):
        value = parse_instant(value, False)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value


def _item_interval(item: Any) -> tuple[_dt.datetime | None, _dt.datetime | None]:
    props = item.properties
    start = props.get("start_datetime") or props.get("datetime")
    end = props.get("end_datetime") or props.get("datetime")
    return (
        parse_instant(start, False) if start else None,
        parse_instant(end, False) if end else None,
    )


def order_key(item: Any) -> tuple[str, str, str]:
    """The fixed item order: acquisition time, collection id, item id."""
    when = item_time(item)
    stamp = when.astimezone(_dt.timezone.utc).isoformat() if when else ""
    return stamp, item.collection_id or "", item.id


def _stac_io(retry: RetryPolicy, timeout: float) -> Any:
    """pystac-client's HTTP reader with retries on refused connections and HTTP 429 / 5xx (GET and POST)."""
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retries = Retry(
        total=retry.attempts - 1,
        connect=retry.attempts - 1,
        read=retry.attempts - 1,
        status=retry.attempts - 1,
        # urllib3 waits backoff_factor * 2 ** (n - 1) before retry n: delay, 2 delay, 4 delay, ...
        backoff_factor=retry.delay / 2,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,  # searches are POSTs: retry them too (they change nothing)
        raise_on_status=False,
    )
    return StacApiIO(max_retries=retries, timeout=timeout)


def _conforms(root: dict, suffix: str) -> bool:
    """Whether a STAC API root declares a conformance class ending in ``suffix`` (any version of the spec)."""
    return any(str(c).rstrip("/").endswith(suffix) for c in root.get("conformsTo") or [])


def _is_api(root: dict) -> bool:
    has_search = any(link.get("rel") == "search" for link in root.get("links") or [])
    return has_search and _conforms(root, "/item-search")


def _absolute(href: str, base: str) -> str:
    if _SCHEME.match(href) or href.startswith("/"):
        return href
    if _SCHEME.match(base):
        return urllib.parse.urljoin(base, href)
    return str((Path(base).parent / href).resolve())


def _absolute_assets(item: Any, base: str | None) -> Any:
    base = item.get_self_href() or base
    for asset in item.assets.values():
        if base:
            asset.href = _absolute(asset.href, base)
    return item


def search_items(
    query: StacQuery, *, retry: RetryPolicy = DEFAULT_STAC_RETRY, timeout: float = 30.0
) -> list[Any]:
    """The items of ``query`` (pystac `Item`s with absolute asset hrefs) in the fixed order (see module doc)."""
    pystac, pystac_client = require_stac()
    stac_io = _stac_io(retry, timeout)
    url = query.url
    if not _SCHEME.match(url):
        path = Path(url)
        if path.is_dir():
            path = next((path / n for n in ("catalog.json", "collection.json") if (path / n).is_file()), path)
        if not path.is_file():
            raise FileNotFoundError(f"STAC catalog not found: {url}")
        url = str(path.resolve())
    try:
        root = stac_io.read_json(url)
    except Exception as err:
        raise StacError(f"cannot read the STAC catalog at {query.url}: {error_reason(err)}") from err
    if not isinstance(root, dict):
        raise StacError(f"{query.url} is not STAC JSON (a catalog, collection, item collection or item)")
    kind = root.get("type")
    server_filtered = False
    if kind in ("Catalog", "Collection") and _is_api(root):
        items, server_filtered = _search_api(query, url, root, stac_io, pystac_client)
    elif kind == "FeatureCollection":
        items = [_absolute_assets(pystac.Item.from_dict(f), url) for f in root.get("features") or []]
    elif kind == "Feature":
        items = [_absolute_assets(pystac.Item.from_dict(root, href=url), url)]
    elif kind in ("Catalog", "Collection"):
        try:
            # pystac-client warns that it "falls back to pystac" for a static catalog: walking it is the point.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pystac_client.warnings.FallbackToPystac)
                catalog = pystac.read_dict(root, href=url, stac_io=stac_io)
                items = [_absolute_assets(item, None) for item in catalog.get_items(recursive=True)]
        except Exception as err:
            raise StacError(
                f"cannot walk the static STAC catalog at {query.url}: {error_reason(err)}"
            ) from err
    else:
        raise StacError(f"{query.url} is not STAC JSON: its type is {kind!r}")
    if not server_filtered:
        items = filter_items(items, query)
    unique: dict[tuple[str, str], Any] = {}
    for item in items:
        unique.setdefault((item.collection_id or "", item.id), item)
    ordered = sorted(unique.values(), key=order_key)
    return ordered[: query.max_items] if query.max_items else ordered


def _search_api(
    query: StacQuery, url: str, root: dict, stac_io: Any, pystac_client: Any
) -> tuple[list[Any], bool]:
    """Items from a STAC API; the bool says whether the API applied every criterion (else `filter_items` does)."""
    try:
        client = pystac_client.Client.open(url, stac_io=stac_io)
    except Exception as err:
        raise StacError(f"cannot open the STAC API at {query.url}: {error_reason(err)}") from err
    # pystac-client knows the v1.0 conformance classes only; an API may declare v1.1 ones (pgstac's sort).
    cql = parse_filter(query.filter)
    can_filter = cql is None or _conforms(root, "/item-search#filter")
    sortby = None
    if _conforms(root, "/item-search#sort"):
        client.add_conforms_to("SORT")
        sortby = [{"field": "properties.datetime", "direction": "asc"}, {"field": "id", "direction": "asc"}]
    if cql is not None and can_filter:
        client.add_conforms_to("FILTER")
    if not can_filter:
        logger.warning("%s does not support CQL2 filters: filtering the items here", query.url)
    kwargs: dict[str, Any] = {
        "collections": list(query.collections) or None,
        "bbox": list(query.bbox) if query.bbox else None,
        "datetime": query.datetime or None,
        "sortby": sortby,
        # Without server-side filtering the first max_items would not be the first matching ones.
        "max_items": query.max_items if can_filter else None,
    }
    if cql is not None and can_filter:
        kwargs.update(filter=cql, filter_lang="cql2-json")
    try:
        search = client.search(method="POST", **kwargs)
        items = [_absolute_assets(item, None) for item in search.items()]
    except Exception as err:
        raise StacError(f"cannot search the STAC API at {query.url}: {error_reason(err)}") from err
    return items, can_filter


def filter_items(items: Iterable[Any], query: StacQuery) -> list[Any]:
    """The items that meet ``query``'s collections, bbox, datetime and filter (what a STAC API does server-side)."""
    window = parse_datetime(query.datetime)
    cql = parse_filter(query.filter)
    expr = _require_cql2().parse_json(json.dumps(cql)) if cql is not None else None
    kept = []
    for item in items:
        if query.collections and item.collection_id not in query.collections:
            continue
        if query.bbox is not None:
            box = item.bbox
            if box is None:
                continue
            west, south, east, north = query.bbox
            if box[0] > east or box[2] < west or box[1] > north or box[3] < south:
                continue
        if window is not None:
            start, end = _item_interval(item)
            if start is None or end is None:
                continue
            if (window[1] is not None and start > window[1]) or (window[0] is not None and end < window[0]):
                continue
        if expr is not None and not expr.matches(
            item.to_dict(include_self_link=False, transform_hrefs=False)
        ):
            continue
        kept.append(item)
    return kept


# ------------------------------------------------------------------------------------------------ band choice
@dataclass(frozen=True)
class AssetBand:
    """One band of one asset, as the item describes it."""

    key: str  # asset key
    href: str
    band: int  # counted from 1 in the asset's file
    bands_in_asset: int | None  # None: the asset does not say
    name: str | None
    common_name: str | None
    scale: float | None
    offset: float | None
    nodata: float | None
    roles: tuple[str, ...] = field(default_factory=tuple)

    def source(self) -> BandSource:
        return BandSource(
            self.href, self.band, self.name or self.key, self.scale, self.offset, self.nodata, key=self.key
        )


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "nan":
            return math.nan
        if text in ("inf", "+inf"):
            return math.inf
        if text == "-inf":
            return -math.inf
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _is_raster_asset(asset: dict) -> bool:
    roles = {str(r).lower() for r in asset.get("roles") or []}
    if roles & SKIPPED_ROLES and "data" not in roles:
        return False
    media = str(asset.get("type") or "").lower()
    if media:
        return media.startswith(RASTER_MEDIA)
    path = urllib.parse.urlsplit(str(asset.get("href", ""))).path.lower()
    return path.endswith(RASTER_SUFFIXES)


def asset_bands(item: Any) -> list[AssetBand]:
    """Every band of every raster data asset of ``item`` with its names, scale, offset and nodata (STAC 1.0 eo /
    raster extensions and STAC 1.1 ``bands``), in the item's asset order. An asset that describes no bands counts as
    one band named by its key."""
    out = []
    for key, asset_obj in item.assets.items():
        asset = asset_obj.to_dict()
        asset["href"] = asset_obj.href
        if not _is_raster_asset(asset):
            continue
        eo = asset.get("eo:bands") or []
        raster = asset.get("raster:bands") or []
        common = asset.get("bands") or []  # STAC 1.1
        count = max(len(eo), len(raster), len(common))
        described = count > 0
        for i in range(max(count, 1)):
            info: dict[str, Any] = {
                k: v for k, v in asset.items() if k not in ("bands", "eo:bands", "raster:bands")
            }
            for listing in (common, eo, raster):
                if i < len(listing) and isinstance(listing[i], dict):
                    info.update(listing[i])
            out.append(
                AssetBand(
                    key=key,
                    href=asset_obj.href,
                    band=i + 1,
                    bands_in_asset=count if described else None,
                    name=info.get("name") if described else None,
                    common_name=info.get("common_name") or info.get("eo:common_name"),
                    scale=_number(info.get("scale", info.get("raster:scale"))),
                    offset=_number(info.get("offset", info.get("raster:offset"))),
                    nodata=_number(info.get("nodata", info.get("raster:nodata"))),
                    roles=tuple(str(r).lower() for r in asset.get("roles") or []),
                )
            )
    return out


def guess_preset(item: Any) -> str:
    """The band preset of an item from its ``constellation`` / ``platform`` / collection id, else from its bands
    (red, green and blue: ``rgb``; VV and VH: ``sentinel1``)."""
    props = item.properties
    text = (
        " ".join(str(props.get(k) or "") for k in ("constellation", "platform"))
        + " "
        + (item.collection_id or "")
    )
    text = text.lower().replace("_", "-")
    for pattern, preset in (
        (r"sentinel-?2", "sentinel2"),
        (r"landsat-?9", "landsat9"),
        (r"landsat-?8|landsat", "landsat8"),
        (r"naip", "naip"),
        (r"sentinel-?1", "sentinel1"),
    ):
        if re.search(pattern, text):
            return preset
    bands = asset_bands(item)
    commons = {(b.common_name or "").lower() for b in bands}
    if {"red", "green", "blue"} <= commons:
        return "rgb"
    names = {normalise_band_name(b.name or b.key) for b in bands}
    if {"VV", "VH"} <= names:
        return "sentinel1"
    raise MissingBandsError(
        item.id,
        ["red", "green", "blue"],
        list(item.assets),
        f"and no preset fits it: give one of {', '.join(list_band_presets())} or bands=[...]",
    )


def _wanted(preset: str, bands: Sequence[str] | None) -> list[tuple[str | None, str | None]]:
    """(band id, common name) of each band to show."""
    chosen = get_band_preset(preset)
    if bands is not None:
        wanted = []
        for band in bands:
            band_id = normalise_band_name(str(band))
            wanted.append((band_id, chosen.band_common_names.get(band_id, str(band).strip().lower())))
        return wanted
    if chosen.rgb:
        names = [chosen.aliases.get(n, n) for n in chosen.rgb]
        commons = list(chosen.common_names) or [None] * len(names)
        return list(zip(names, commons))
    return [(None, c) for c in chosen.common_names]


def select_bands(
    item: Any, preset: str | None = None, bands: Sequence[str] | None = None
) -> tuple[str, list[BandSource]]:
    """``(preset, sources)``: the item's bands to show for ``preset`` (None: `guess_preset`), or for ``bands`` (asset
    keys, band names or common names, e.g. ``["nir", "red", "green"]``), as `BandSource`s in display order.

    A band matches by its common name, its band name, or (for an asset of one band) its asset key. Among several
    matches one not meant for display only wins (role or key ``visual``: an 8-bit rendering; for the ``rgb`` preset
    the display asset wins instead), then the one whose name is the preset's own band id (``B4`` of Sentinel-2),
    then the first in the item's asset order.
    """
    if bands is not None:
        bands = [str(b) for b in bands]
        if len(bands) not in (1, 2, 3):
            raise ValueError(f"bands must name 1 or 3 bands (red, green, blue) or VV, VH, got {bands}")
    preset = preset or guess_preset(item)
    chosen = get_band_preset(preset)
    candidates = asset_bands(item)
    wanted = _wanted(chosen.name, bands)
    picked: list[AssetBand] = []
    for band_id, common in wanted:
        best, best_score = None, None
        for order, band in enumerate(candidates):
            if band in picked:
                continue
            name = normalise_band_name(band.name) if band.name else None
            name = chosen.aliases.get(name, name) if name else None
            key = normalise_band_name(band.key)
            key = chosen.aliases.get(key, key) if key else None
            by_id = band_id is not None and (
                name == band_id or (band.bands_in_asset in (None, 1) and key == band_id)
            )
            by_common = common is not None and (
                (band.common_name or "").lower() == common
                or (band.bands_in_asset in (None, 1) and band.key.lower() == common)
            )
            if not (by_id or by_common):
                continue
            display = "visual" in band.roles or band.key.lower() in ("visual", "tci")
            display_penalty = (0 if display else 1) if chosen.name == "rgb" else (1 if display else 0)
            score = (display_penalty, 0 if by_id else 1, order)
            if best_score is None or score < best_score:
                best, best_score = band, score
        if best is None:
            names = [band_id or common for band_id, common in wanted]
            labels = [f"{c} ({i})" if i and c and i.lower() != c else (c or i) for i, c in wanted]
            raise MissingBandsError(item.id, labels if bands is None else names, list(item.assets))
        picked.append(best)
    return chosen.name, [band.source() for band in picked]


def open_item(
    item: Any,
    preset: str | None = None,
    bands: Sequence[str] | None = None,
    stretch: Any = None,
    **reader_options: Any,
) -> RasterReader:
    """A `RasterReader` over the bands of ``item`` chosen by `select_bands` (``reader_options``: ``signer``,
    ``retry``, ``resampling``, ``gdal_options``, ``sample_size``)."""
    preset, sources = select_bands(item, preset, bands)
    return RasterReader(
        sources, preset=preset, stretch=stretch, name=f"STAC item {item.id}", **reader_options
    )


def item_record(item: Any, sources: Sequence[BandSource] | None = None) -> dict[str, Any]:
    """What an index keeps of an item: ``stac_item`` (id), ``stac_collection``, ``datetime`` (ISO, UTC),
    ``cloud_cover``, ``stac_item_href`` (its link, when known), ``asset_hrefs`` (JSON list of the files read) and the
    item's ``item_geometry`` (GeoJSON, lon/lat) and ``item_bbox``."""
    when = item_time(item)
    href = item.get_self_href()
    if href is None:
        link = next((link for link in item.links if link.rel == "self"), None)
        href = link.href if link is not None else None
    return {
        "stac_item": item.id,
        "stac_collection": item.collection_id,
        "datetime": when.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z") if when else None,
        "cloud_cover": _number(item.properties.get("eo:cloud_cover")),
        "stac_item_href": href,
        "asset_hrefs": json.dumps([s.href for s in sources]) if sources is not None else None,
        "item_geometry": json.dumps(item.geometry) if item.geometry is not None else None,
        "item_bbox": list(item.bbox) if item.bbox is not None else None,
    }


__all__ = [
    "AssetBand",
    "DEFAULT_STAC_RETRY",
    "MissingBandsError",
    "StacError",
    "StacQuery",
    "asset_bands",
    "filter_items",
    "guess_preset",
    "item_record",
    "item_time",
    "open_item",
    "order_key",
    "parse_bbox",
    "parse_datetime",
    "parse_filter",
    "require_stac",
    "search_items",
    "select_bands",
]
