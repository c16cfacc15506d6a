"""Band presets: which bands of a sensor make the RGB picture RS-M-CLIP sees, and how they are stretched to 8 bits.

A preset is data (`BandPreset`): the band layouts the sensor is distributed in, the three bands shown as red, green
and blue, and a stretch. `resolve_preset` matches a preset (or explicit `bands=[...]`) against a raster's band
descriptions and returns a `BandSelection`, which turns the selected bands of any window into `HxWx3` uint8 RGB.
Every 8-bit conversion ends in `processing_rsmclip.array_to_rgb` (the one array-to-RGB path of the package): this
module only picks bands and maps their values to [0, 1].

Presets (see `docs/maps.md` for the reasoning behind each number):

- ``sentinel2``: L1C (13 bands B1..B12 with B8A and B10) or L2A (12 bands, no B10), digital numbers =
  reflectance x 10000. True colour B4/B3/B2, fixed stretch 0..3000 (reflectance 0..0.3). Products of processing
  baseline 04.00 and later (from 25 January 2022) add +1000 to every digital number; when the file's metadata says so
  (``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET`` = -1000 in the dataset or band tags) the stretch becomes 1000..4000.
  A file without that metadata can be given ``stretch=(1000, 4000)``.
- ``landsat8`` / ``landsat9``: Collection 2 bands B1..B7 (Level-2) or B1..B11 (Level-1); true colour B4/B3/B2,
  fixed stretch 7273..18182, which is surface reflectance 0..0.3 under the Level-2 scale (x 0.0000275 - 0.2).
- ``naip``: 4 bands red, green, blue, near-infrared (uint8); RGB = bands 1-3 unchanged.
- ``sentinel1``: 2 bands VV, VH in dB (GRD backscatter). False colour R = VV over -25..0 dB, G = VH over -30..-5 dB,
  B = VV - VH (the VV/VH ratio in dB) over 0..15 dB, each clipped.
- ``rgb``: the first three bands (one band is shown as grey; an alpha band is a mask, not a colour). uint8 data is
  used as is; other types get a 2-98 percentile stretch over the whole scene.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..processing_rsmclip import array_to_rgb

# ----------------------------------------------------------------------------------------------------- stretch


@dataclass(frozen=True)
class Stretch:
    """How band values become [0, 1] before the 8-bit conversion.

    ``kind="fixed"``: ``(x - low) / (high - low)`` clipped, with ``low``/``high`` one value or one per RGB channel.
    ``kind="percentile"``: ``low``/``high`` are percentiles (e.g. 2 and 98); the raster reader turns them into fixed
    limits once per scene (from a decimated read of the whole raster), so every tile of a scene is stretched alike.
    """

    kind: str
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "percentile"):
            raise ValueError(f"stretch kind must be 'fixed' or 'percentile', got {self.kind!r}")
        if len(self.low) not in (1, 3) or len(self.high) not in (1, 3):
            raise ValueError(f"stretch limits must be 1 or 3 values, got low={self.low} high={self.high}")
        low, high = np.broadcast_arrays(np.asarray(self.low, float), np.asarray(self.high, float))
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(low).all() and np.isfinite(high).all() and np.isfinite(high - low).all()
        if not finite:
            raise ValueError(f"stretch limits must be finite numbers, got low={self.low} high={self.high}")
        if not np.all(high > low):
            raise ValueError(f"stretch needs high > low, got low={self.low} high={self.high}")
        if self.kind == "percentile" and not (np.all(low >= 0) and np.all(high <= 100)):
            raise ValueError(f"percentiles must lie in 0..100, got {self.low}..{self.high}")

    @classmethod
    def fixed(cls, low: float | Sequence[float], high: float | Sequence[float]) -> Stretch:
        return cls("fixed", _as_tuple(low), _as_tuple(high))

    @classmethod
    def percentile(cls, low: float = 2.0, high: float = 98.0) -> Stretch:
        return cls("percentile", (float(low),), (float(high),))

    @classmethod
    def parse(cls, spec: Any) -> Stretch | None:
        """`None`, a `Stretch`, ``"percentile"``, ``"p2,98"`` / ``("percentile", 2, 98)``, or fixed limits
        ``"0,3000"`` / ``(0, 3000)`` / ``((r0, g0, b0), (r1, g1, b1))``."""
        if spec is None or isinstance(spec, Stretch):
            return spec
        if isinstance(spec, str):
            text = spec.strip().lower()
            if text in ("percentile", "p"):
                return cls.percentile()
            if text.startswith("p"):
                parts = _floats(text[1:], spec)
                if len(parts) != 2:
                    raise ValueError(f"percentile stretch {spec!r}: give two percentiles, e.g. 'p2,98'")
                return cls.percentile(*parts)
            parts = _floats(text, spec)
            if len(parts) == 2:
                return cls.fixed(parts[0], parts[1])
            if len(parts) == 6:
                return cls.fixed(parts[0::2], parts[1::2])
            raise ValueError(
                f"stretch {spec!r}: give 'percentile', 'pLOW,HIGH', 'LOW,HIGH' or 'R0,R1,G0,G1,B0,B1'"
            )
        if isinstance(spec, Sequence) and len(spec) == 3 and spec[0] == "percentile":
            return cls.percentile(float(spec[1]), float(spec[2]))
        if isinstance(spec, Sequence) and len(spec) == 2:
            return cls.fixed(spec[0], spec[1])
        raise ValueError(f"cannot read stretch {spec!r}")

    def apply(self, channels: np.ndarray) -> np.ndarray:
        """``channels`` (3, H, W) float -> (H, W, 3) float64 in [0, 1] (fixed stretch only)."""
        if self.kind != "fixed":
            raise ValueError(
                "a percentile stretch must be resolved to fixed limits first (RasterReader does this)"
            )
        low = np.asarray(self.low, np.float64).reshape(-1, 1, 1)
        high = np.asarray(self.high, np.float64).reshape(-1, 1, 1)
        scaled = (channels.astype(np.float64) - low) / (high - low)
        return np.clip(np.moveaxis(scaled, 0, -1), 0.0, 1.0)

    def describe(self) -> str:
        def fmt(values: tuple[float, ...]) -> str:
            return ",".join(f"{v:g}" for v in values)

        if self.kind == "percentile":
            return f"percentile {fmt(self.low)}..{fmt(self.high)} (whole scene)"
        return f"fixed {fmt(self.low)}..{fmt(self.high)}"


def _as_tuple(value: float | Sequence[float]) -> tuple[float, ...]:
    if isinstance(value, int | float | np.integer | np.floating):
        return (float(value),)
    return tuple(float(v) for v in value)


def _floats(text: str, spec: str) -> list[float]:
    try:
        return [float(p) for p in text.replace(":", ",").split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"cannot read stretch {spec!r}: not numbers") from None


# ----------------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class BandPreset:
    """A sensor's band layouts, its RGB bands and its default stretch.

    ``layouts``: the band orders the sensor is distributed in (normalised names; a raster without band descriptions
    matches a layout by band count). ``rgb``: the band names shown as red, green, blue (for ``composite="sentinel1"``:
    the VV and VH bands). ``stretch=None``: uint8 as is, other types a 2-98 percentile stretch.
    ``common_names``: the same bands by their STAC (eo extension) common names, how catalogs label them whatever
    their asset keys; ``band_common_names`` the common name of each of the sensor's bands (for bands chosen by id,
    e.g. ``B8`` = ``nir``, in a catalog that names them by common name). ``scaling``: ``(scale, offset)`` from the digital numbers ``stretch`` is written for to
    physical values (reflectance), so that a catalog declaring other ones gets the same picture (`rescale_stretch`).
    """

    name: str
    description: str
    layouts: tuple[tuple[str, ...], ...]
    rgb: tuple[str, ...]
    stretch: Stretch | None
    composite: str = "rgb"
    aliases: dict[str, str] = field(default_factory=dict)
    common_names: tuple[str, ...] = ("red", "green", "blue")
    scaling: tuple[float, float] | None = None
    band_common_names: dict[str, str] = field(default_factory=dict)


_S2_L1C = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
_S2_L2A = tuple(b for b in _S2_L1C if b != "B10")
_LANDSAT_L2 = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
_LANDSAT_L1 = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11")
_COLOUR_ALIASES = {"R": "RED", "G": "GREEN", "B": "BLUE", "N": "NIR", "NEARINFRARED": "NIR", "NIR1": "NIR"}

# Sentinel-2 processing baseline 04.00 (from 25 January 2022) adds this to every digital number.
SENTINEL2_OFFSET = 1000.0
SENTINEL2_STRETCH = Stretch.fixed(0.0, 3000.0)
_LANDSAT_STRETCH = Stretch.fixed(7273.0, 18182.0)
_LANDSAT_SCALING = (2.75e-5, -0.2)  # Collection 2 Level-2 surface reflectance
# STAC eo common names of the bands (B5, B6, B7 of Sentinel-2 share "rededge": chosen by name only).
_S2_COMMON = {
    "B1": "coastal",
    "B2": "blue",
    "B3": "green",
    "B4": "red",
    "B8": "nir",
    "B8A": "nir08",
    "B9": "nir09",
    "B10": "cirrus",
    "B11": "swir16",
    "B12": "swir22",
}
_LANDSAT_COMMON = {
    "B1": "coastal",
    "B2": "blue",
    "B3": "green",
    "B4": "red",
    "B5": "nir08",
    "B6": "swir16",
    "B7": "swir22",
    "B8": "pan",
    "B9": "cirrus",
    "B10": "lwir11",
    "B11": "lwir12",
}

BAND_PRESETS: dict[str, BandPreset] = {
    "sentinel2": BandPreset(
        "sentinel2",
        "Sentinel-2 L1C/L2A, reflectance x 10000: B4/B3/B2, 0..3000 (+1000 offset from metadata)",
        (_S2_L1C, _S2_L2A),
        ("B4", "B3", "B2"),
        SENTINEL2_STRETCH,
        scaling=(1e-4, 0.0),
        band_common_names=_S2_COMMON,
    ),
    "landsat8": BandPreset(
        "landsat8",
        "Landsat 8 OLI Collection 2: B4/B3/B2, 7273..18182 (Level-2 reflectance 0..0.3)",
        (_LANDSAT_L2, _LANDSAT_L1),
        ("B4", "B3", "B2"),
        _LANDSAT_STRETCH,
        scaling=_LANDSAT_SCALING,
        band_common_names=_LANDSAT_COMMON,
    ),
    "landsat9": BandPreset(
        "landsat9",
        "Landsat 9 OLI-2 Collection 2: B4/B3/B2, 7273..18182 (Level-2 reflectance 0..0.3)",
        (_LANDSAT_L2, _LANDSAT_L1),
        ("B4", "B3", "B2"),
        _LANDSAT_STRETCH,
        scaling=_LANDSAT_SCALING,
        band_common_names=_LANDSAT_COMMON,
    ),
    "naip": BandPreset(
        "naip",
        "NAIP 4-band red, green, blue, near-infrared: bands 1-3 as they are",
        (("RED", "GREEN", "BLUE", "NIR"),),
        ("RED", "GREEN", "BLUE"),
        Stretch.fixed(0.0, 255.0),
        aliases=_COLOUR_ALIASES,
    ),
    "sentinel1": BandPreset(
        "sentinel1",
        "Sentinel-1 VV/VH in dB: R=VV -25..0, G=VH -30..-5, B=VV-VH 0..15 dB",
        (("VV", "VH"),),
        ("VV", "VH"),
        Stretch.fixed((-25.0, -30.0, 0.0), (0.0, -5.0, 15.0)),
        composite="sentinel1",
        common_names=(),
    ),
    "rgb": BandPreset(
        "rgb",
        "first three bands as red, green, blue (one band: grey); uint8 as is, else 2-98 percentile",
        (),
        (),
        None,
        aliases=_COLOUR_ALIASES,
    ),
}


def list_band_presets() -> list[str]:
    """Names of the band presets, sorted."""
    return sorted(BAND_PRESETS)


def get_band_preset(name: str) -> BandPreset:
    key = name.strip().lower().replace("-", "").replace("_", "")
    key = {"s2": "sentinel2", "s1": "sentinel1", "l8": "landsat8", "l9": "landsat9"}.get(key, key)
    if key not in BAND_PRESETS:
        raise ValueError(f"unknown band preset {name!r}; presets: {', '.join(list_band_presets())}")
    return BAND_PRESETS[key]


def normalise_band_name(name: str | None) -> str | None:
    """``"B02"`` -> ``"B2"``, ``"SR_B4"`` -> ``"B4"``, ``"Band 4"`` -> ``"B4"``, ``"red"`` -> ``"RED"``."""
    if name is None or not str(name).strip():
        return None
    text = re.sub(r"[\s\-]+", "_", str(name).strip().upper())
    text = re.sub(r"^(SR|TOA|ST)_", "", text)
    text = re.sub(r"^BAND_?(\d+)$", r"B\1", text)
    text = re.sub(r"^B0+(\d)", r"B\1", text)
    return text


# ---------------------------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class BandSelection:
    """The bands to read (0-based indices into the raster's bands) and how they become RGB."""

    preset: str | None
    indices: tuple[int, ...]
    names: tuple[str, ...]
    stretch: Stretch
    composite: str = "rgb"
    offset: float = 0.0

    def channels(self, data: np.ndarray) -> np.ndarray:
        """Selected bands ``(len(indices), H, W)`` -> the three display channels ``(3, H, W)`` float64."""
        data = np.abs(data) if np.iscomplexobj(data) else data
        data = data.astype(np.float64)
        if self.composite == "sentinel1":
            vv, vh = data[0], data[1]
            return np.stack([vv, vh, vv - vh])
        if data.shape[0] == 1:
            return np.repeat(data, 3, axis=0)
        return data

    def to_rgb(self, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Selected bands ``(len(indices), H, W)`` (any dtype) -> ``(H, W, 3)`` uint8; invalid pixels are black."""
        unit = self.stretch.apply(self.channels(data))
        if valid is not None:
            unit[~valid] = 0.0
        return array_to_rgb(unit, input_data_format="channels_last")

    def with_stretch(self, stretch: Stretch) -> BandSelection:
        return replace(self, stretch=stretch)

    def describe(self) -> str:
        what = f"preset {self.preset}" if self.preset else "explicit bands"
        bands = ", ".join(
            n if n == f"band {i + 1}" else f"{n} (band {i + 1})" for n, i in zip(self.names, self.indices)
        )
        composite = " as VV, VH, VV-VH" if self.composite == "sentinel1" else ""
        return f"{what}: {bands}{composite}; stretch {self.stretch.describe()}"


def _describe_bands(descriptions: Sequence[str | None], dtypes: Sequence[str] | None = None) -> str:
    parts = []
    for i, desc in enumerate(descriptions):
        dtype = f", {dtypes[i]}" if dtypes else ""
        parts.append(f"{i + 1}: {desc or '(no description)'}{dtype}")
    return "; ".join(parts)


def _raster_facts(
    src_or_descriptions: Any,
) -> tuple[list[str | None], list[str] | None, list[str] | None, dict]:
    """(descriptions, dtypes, colour interpretations, tags incl. band tags) of a rasterio dataset or a name list."""
    if hasattr(src_or_descriptions, "descriptions") and hasattr(src_or_descriptions, "count"):
        src = src_or_descriptions
        tags = dict(src.tags())
        for band in range(1, src.count + 1):
            for key, value in src.tags(band).items():
                tags.setdefault(key, value)
        interps = [ci.name for ci in src.colorinterp]
        return list(src.descriptions), list(src.dtypes), interps, tags
    return [None if d is None else str(d) for d in src_or_descriptions], None, None, {}


def sentinel2_offset(tags: dict) -> float:
    """The +1000 digital-number offset of Sentinel-2 processing baseline >= 04.00, when the metadata declares it."""
    for key in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"):
        for tag, value in tags.items():
            if tag.upper().endswith(key):
                try:
                    return -float(str(value).split()[0])
                except ValueError:
                    continue
    return 0.0


def rescale_stretch(
    preset: BandPreset,
    stretch: Stretch,
    scales: Sequence[float | None],
    offsets: Sequence[float | None],
) -> Stretch:
    """A preset's fixed ``stretch`` for bands whose digital numbers become physical values as ``x * scale +
    offset`` (one scale and offset per selected band, None = 1 and 0), instead of the preset's own `scaling`.

    The limits keep their physical meaning: Sentinel-2's 0..3000 (reflectance 0..0.3 at scale 1e-4) becomes
    1000..4000 for a catalog declaring offset -0.1 (processing baseline 04.00's +1000). A preset without a
    `scaling` (uint8 NAIP, Sentinel-1 in dB), a percentile stretch, or a composite of other channels is returned
    unchanged.
    """
    if preset.scaling is None or stretch.kind != "fixed" or preset.composite != "rgb":
        return stretch
    nominal_scale, nominal_offset = preset.scaling
    n = len(scales)
    channels = 3 if n in (1, 3) else n
    if n == 1:
        scales, offsets = list(scales) * 3, list(offsets) * 3
    low = np.broadcast_to(np.asarray(stretch.low, np.float64), (channels,))
    high = np.broadcast_to(np.asarray(stretch.high, np.float64), (channels,))
    scale = np.array([1.0 if s is None else float(s) for s in scales])
    offset = np.array([0.0 if o is None else float(o) for o in offsets])
    if np.any(scale == 0):
        raise ValueError(f"a band declares scale 0; scales: {list(scales)}")
    new_low = (low * nominal_scale + nominal_offset - offset) / scale
    new_high = (high * nominal_scale + nominal_offset - offset) / scale
    # Rounded: a catalog declaring the preset's own scaling gets the preset's limits exactly (1e-4 / 1e-4 != 1).
    lo = np.round(np.minimum(new_low, new_high), 6)
    hi = np.round(np.maximum(new_low, new_high), 6)
    return Stretch.fixed(tuple(float(v) for v in lo), tuple(float(v) for v in hi))


def _default_stretch(dtypes: Sequence[str] | None, indices: Sequence[int]) -> Stretch:
    if dtypes is not None and all(dtypes[i] == "uint8" for i in indices):
        return Stretch.fixed(0.0, 255.0)
    return Stretch.percentile()


def _match_layout(preset: BandPreset, names: list[str | None]) -> tuple[int, ...] | None:
    """Indices of the preset's RGB bands in a raster with band names ``names`` (None when they do not match)."""
    normalised = [preset.aliases.get(n, n) if n else None for n in map(normalise_band_name, names)]
    if all(normalised):
        if all(n in normalised for n in preset.rgb):
            return tuple(normalised.index(n) for n in preset.rgb)
        return None
    for layout in preset.layouts:
        if len(layout) == len(names):
            return tuple(layout.index(n) for n in preset.rgb)
    return None


def _colour_bands(count: int, interps: Sequence[str] | None) -> list[int]:
    """Band indices that are not alpha."""
    if interps is None:
        return list(range(count))
    return [i for i in range(count) if interps[i] != "alpha"]


def _auto_candidates(descriptions: list[str | None]) -> list[str]:
    """Presets whose band names cover every described band (and include the RGB bands)."""
    normalised = [normalise_band_name(d) for d in descriptions]
    if not normalised or not all(normalised):
        return []
    found = []
    seen: set[tuple] = set()
    for name, preset in BAND_PRESETS.items():
        if not preset.layouts:
            continue
        names = [preset.aliases.get(n, n) for n in normalised]
        known = {b for layout in preset.layouts for b in layout}
        if set(names) <= known and all(b in names for b in preset.rgb):
            key = (preset.layouts, preset.rgb, preset.stretch, preset.composite)
            if key not in seen:  # landsat8 and landsat9 are the same rendering: one candidate
                seen.add(key)
                found.append(name)
    return found


def resolve_preset(
    src_or_descriptions: Any,
    preset: str | None = None,
    bands: Sequence[int | str] | None = None,
    stretch: Any = None,
) -> BandSelection:
    """Choose the bands and stretch for a raster.

    Args:
        src_or_descriptions: an open rasterio dataset, or the list of band descriptions (``None`` for a band
            without one).
        preset: a name from `list_band_presets()`; ``None`` chooses one from the band descriptions when exactly
            one preset fits, else from the colour interpretation (RGB/RGBA) or band count (1 or 3 bands = ``rgb``).
        bands: explicit bands: 1 or 3 band indices counted from 0 (as the processor's ``bands=[3, 2, 1]``) or band
            descriptions (``["B4", "B3", "B2"]``). Overrides the preset's RGB bands, keeps its stretch.
        stretch: overrides the stretch (see `Stretch.parse`).

    Raises:
        ValueError: naming the raster's bands and the presets when no unambiguous choice exists.
    """
    descriptions, dtypes, interps, tags = _raster_facts(src_or_descriptions)
    count = len(descriptions)
    listing = _describe_bands(descriptions, dtypes)
    presets_text = ", ".join(list_band_presets())
    user_stretch = Stretch.parse(stretch)

    if bands is not None:
        bands = list(bands)
        if len(bands) not in (1, 3):
            raise ValueError(f"bands must name 1 or 3 bands (red, green, blue), got {bands}")
        normalised = [normalise_band_name(d) for d in descriptions]
        indices = []
        for band in bands:
            if isinstance(band, int | np.integer) and not isinstance(band, bool):
                if not 0 <= int(band) < count:
                    raise ValueError(
                        f"band index {band} is out of range: the raster has {count} band(s), counted from 0 "
                        f"({listing})"
                    )
                indices.append(int(band))
            elif isinstance(band, str) and band.strip().lstrip("-").isdigit():
                return resolve_preset(src_or_descriptions, preset, [int(b) for b in bands], stretch)
            else:
                key = normalise_band_name(str(band))
                if key not in normalised:
                    raise ValueError(f"no band named {band!r}; the raster's bands: {listing}")
                indices.append(normalised.index(key))
        chosen = get_band_preset(preset) if preset else None
        base = (chosen.stretch if chosen else None) or _default_stretch(dtypes, indices)
        names = tuple(descriptions[i] or f"band {i + 1}" for i in indices)
        return BandSelection(chosen.name if chosen else None, tuple(indices), names, user_stretch or base)

    if preset is None:
        candidates = _auto_candidates(descriptions)
        if len(candidates) > 1 and all(re.match(r"(?i)^(SR|ST)_B\d+$", d or "") for d in descriptions):
            # Collection 2 Level-2 names (SR_B4 ...) are Landsat's own.
            candidates = [c for c in candidates if c.startswith("landsat")]
        colour = _colour_bands(count, interps)
        if len(candidates) == 1:
            preset = candidates[0]
        elif len(candidates) > 1:
            raise ValueError(
                f"the band descriptions fit several presets ({', '.join(candidates)}): choose one with "
                f"preset=... / --preset, or give bands=[r, g, b]. Bands: {listing}"
            )
        elif interps is not None and interps[:3] == ["red", "green", "blue"]:
            preset = "rgb"
        elif len(colour) in (1, 3):
            preset = "rgb"
        else:
            raise ValueError(
                f"cannot tell which of the {count} bands are red, green and blue: give a preset "
                f"({presets_text}) or bands=[r, g, b] (0-based indices or band names). Bands: {listing}"
            )

    chosen = get_band_preset(preset)
    if chosen.name == "rgb":
        colour = _colour_bands(count, interps)
        if len(colour) == 1:
            indices = (colour[0],)
        elif len(colour) >= 3:
            indices = tuple(colour[:3])
        else:
            raise ValueError(f"preset rgb needs 1 or at least 3 colour bands; bands: {listing}")
        base = _default_stretch(dtypes, indices)
        names = tuple(descriptions[i] or f"band {i + 1}" for i in indices)
        return BandSelection("rgb", indices, names, user_stretch or base)

    indices = _match_layout(chosen, descriptions)
    if indices is None:
        wanted = "/".join(chosen.rgb)
        raise ValueError(
            f"preset {chosen.name} needs bands {wanted}, found neither those descriptions nor a layout of "
            f"{', '.join(str(len(layout)) for layout in chosen.layouts)} bands: give bands=[...] instead. "
            f"Bands: {listing}"
        )
    base = chosen.stretch
    offset = 0.0
    if chosen.name == "sentinel2":
        offset = sentinel2_offset(tags)
        if offset:
            base = Stretch.fixed(base.low[0] + offset, base.high[0] + offset)
    if base is None:
        base = _default_stretch(dtypes, indices)
    return BandSelection(
        chosen.name,
        indices,
        tuple(chosen.rgb),
        user_stretch or base,
        composite=chosen.composite,
        offset=offset,
    )


__all__ = [
    "BAND_PRESETS",
    "BandPreset",
    "BandSelection",
    "SENTINEL2_OFFSET",
    "Stretch",
    "get_band_preset",
    "list_band_presets",
    "normalise_band_name",
    "rescale_stretch",
    "resolve_preset",
    "sentinel2_offset",
]
