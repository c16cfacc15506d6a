"""Property-based tests of every parser of user input (Hypothesis): whatever text, file or array comes in, the
answer is a value that satisfies the parser's contract or a `ValueError` naming the problem, never another
exception, never a NaN. Examples are bounded and deadlines set, so the file runs in seconds."""

from __future__ import annotations

import json
import math
import string
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip(
    "hypothesis", reason='property tests need hypothesis: pip install "rsmclip[dev]"'
)
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from modeling_rsmclip.data.builder import parse_languages  # noqa: E402
from modeling_rsmclip.evaluation.zero_shot import load_class_names_file  # noqa: E402
from modeling_rsmclip.geo.bands import Stretch  # noqa: E402
from modeling_rsmclip.geo.options import parse_bands, parse_bbox  # noqa: E402
from modeling_rsmclip.geo.tiling import length_to_pixels  # noqa: E402
from modeling_rsmclip.geo.zero_shot import parse_labels  # noqa: E402
from modeling_rsmclip.processing_rsmclip import array_to_rgb, to_rgb  # noqa: E402
from modeling_rsmclip.templates import LANGUAGES, parse_language_list  # noqa: E402

# Bounded: at most 150 examples per property, 2 s per example (the machine may be shared).
FAST = settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Texts that look like what people type, and anything else: numbers, signs, separators, spaces of every kind,
# letters of other scripts, surrogate-free Unicode.
NUMBERISH = st.text(alphabet=string.digits + "+-.,eE:_ %pmxinfaINFAN\t ", max_size=40)
ANY_TEXT = st.one_of(NUMBERISH, st.text(max_size=40))
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)


# ---------------------------------------------------------------------------------------------------- --bbox
@FAST
@given(ANY_TEXT)
def test_bbox_is_a_valid_box_or_a_value_error(text):
    try:
        west, south, east, north = parse_bbox(text)
    except ValueError as error:
        assert str(error)
        return
    assert all(math.isfinite(v) for v in (west, south, east, north))
    assert -180 <= west <= east <= 180 and -90 <= south <= north <= 90


@FAST
@given(FLOATS, FLOATS, FLOATS, FLOATS, st.sampled_from([",", ", ", " ,", "\t,"]))
def test_bbox_of_four_numbers_round_trips_or_names_the_problem(w, s, e, n, sep):
    text = sep.join(repr(v) for v in (w, s, e, n))
    valid = all(map(math.isfinite, (w, s, e, n))) and -180 <= w <= e <= 180 and -90 <= s <= n <= 90
    if valid:
        assert parse_bbox(text) == (w, s, e, n)
    else:
        with pytest.raises(ValueError, match="bbox|four numbers"):
            parse_bbox(text)


# --------------------------------------------------------------------------------------------------- --bands
@FAST
@given(ANY_TEXT)
@example("²,1,0")
@example("-1")
def test_bands_are_one_or_three_indices_or_names(text):
    try:
        bands = parse_bands(text)
    except ValueError as error:
        assert str(error)
        return
    assert len(bands) in (1, 3)
    for band in bands:
        assert (isinstance(band, int) and band >= 0) or (
            isinstance(band, str) and band == band.strip() and band
        )


@FAST
@given(st.lists(st.integers(0, 10_000), min_size=3, max_size=3))
def test_band_indices_round_trip(indices):
    assert parse_bands(",".join(map(str, indices))) == indices


# ------------------------------------------------------------------------------------------------- --stretch
@FAST
@given(ANY_TEXT, hnp.arrays(np.float64, (3, 2, 2), elements=st.floats(-1e6, 1e6)))
def test_stretch_is_finite_limits_or_a_value_error_and_maps_into_0_1(text, channels):
    try:
        stretch = Stretch.parse(text)
    except ValueError as error:
        assert str(error)
        return
    assert stretch is not None
    limits = np.array([*stretch.low, *stretch.high], dtype=np.float64)
    assert np.isfinite(limits).all()
    if stretch.kind == "fixed":
        out = stretch.apply(channels)
        assert out.shape == (2, 2, 3) and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    else:
        assert 0 <= min(stretch.low) and max(stretch.high) <= 100


@FAST
@given(st.floats(-1e9, 1e9), st.floats(-1e9, 1e9))
def test_fixed_stretch_of_two_numbers_round_trips(low, high):
    text = f"{low!r},{high!r}"
    if high > low and math.isfinite(high - low):
        stretch = Stretch.parse(text)
        assert (stretch.kind, stretch.low, stretch.high) == ("fixed", (low,), (high,))
    else:
        with pytest.raises(ValueError):
            Stretch.parse(text)


# ------------------------------------------------------------------------------------- --tile-size, lengths
@FAST
@given(st.one_of(ANY_TEXT, st.integers(-(10**12), 10**12), FLOATS), st.sampled_from([0, 1]))
def test_a_length_in_pixels_is_a_whole_number_of_at_least_the_minimum_or_a_value_error(value, minimum):
    """Tile and window sizes are at least 1 pixel, overlaps at least 0."""
    try:
        pixels = length_to_pixels(value, minimum=minimum)
    except ValueError as error:
        assert str(error)
        return
    assert isinstance(pixels, int) and pixels >= minimum


@pytest.fixture(scope="module")
def utm_reader(tmp_path_factory):
    """A 0.5 m/pixel UTM GeoTIFF and one in degrees, to turn metres into pixels."""
    rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')
    from rasterio.transform import from_origin

    from modeling_rsmclip.geo.raster import RasterReader

    readers = []
    for crs, size in (("EPSG:32611", 0.5), ("EPSG:4326", 1e-5)):
        path = tmp_path_factory.mktemp("length") / "scene.tif"
        profile = dict(driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs=crs,
                       transform=from_origin(500000.0 if size == 0.5 else 10.0, 4e6 if size == 0.5 else 40.0,
                                             size, size))  # fmt: skip
        with rasterio.open(path, "w", **profile) as out:
            out.write(np.zeros((1, 8, 8), np.uint8))
        readers.append(RasterReader(path))
    yield readers
    for reader in readers:
        reader.close()


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.floats(0, 1e7), st.sampled_from(["m", " m", "m "]))
def test_a_length_in_metres_becomes_pixels_at_the_raster_resolution(utm_reader, metres, unit):
    projected, geographic = utm_reader
    text = f"{metres!r}{unit}"
    if "e" in text.lower():  # the length grammar takes plain decimals
        with pytest.raises(ValueError):
            length_to_pixels(text, projected)
        return
    try:
        pixels = length_to_pixels(text, projected)
    except ValueError as error:
        assert "pixel" in str(error)
        return
    assert pixels == max(1, round(metres / 0.5))
    with pytest.raises(ValueError, match="projected CRS"):
        length_to_pixels(text, geographic)


# -------------------------------------------------------------------------------------------------- --labels
@FAST
@given(st.one_of(ANY_TEXT, st.lists(st.text(max_size=8), max_size=6).map(",".join)))
def test_labels_are_two_or_more_distinct_clean_names_or_a_value_error(text):
    try:
        labels = parse_labels(text)
    except ValueError as error:
        assert str(error)
        return
    assert len(labels) >= 2 and len(set(labels)) == len(labels)
    assert all(label and label == label.strip() and "," not in label for label in labels)
    assert parse_labels(",".join(labels)) == labels  # round trip


# ---------------------------------------------------------------------------------------------- --languages
@FAST
@given(
    st.one_of(ANY_TEXT, st.lists(st.sampled_from([*LANGUAGES, "EN", " pt", "xx", "", "all"])).map(",".join))
)
def test_languages_are_known_codes_without_repeats_or_a_value_error(text):
    try:
        languages = parse_language_list(text)
    except ValueError as error:
        assert str(error)
        with pytest.raises(ValueError):
            parse_languages(text)
        return
    assert languages and set(languages) <= set(LANGUAGES) and len(set(languages)) == len(languages)
    built = parse_languages(text)
    assert built[0] == "en" and set(built) == set(languages) | {"en"}


# ------------------------------------------------------------------------------------------ class-name files
# Names of any script; control characters and the characters YAML reads as line breaks (NEL, U+2028/9) aside.
NAMES = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85"),
    min_size=1,
    max_size=12,
).filter(lambda t: t.strip())
CLASS_TABLES = st.dictionaries(
    st.text(alphabet=string.ascii_letters + "_- ", min_size=1, max_size=10),
    st.one_of(NAMES, st.dictionaries(st.sampled_from(LANGUAGES), NAMES, min_size=1, max_size=3)),
    min_size=1,
    max_size=5,
)


@FAST
@given(CLASS_TABLES, st.sampled_from([".json", ".yaml"]))
def test_class_name_files_round_trip(tmp_path_factory, table, suffix):
    yaml = pytest.importorskip("yaml")
    path = tmp_path_factory.mktemp("names") / f"names{suffix}"
    text = (
        json.dumps(table, ensure_ascii=False)
        if suffix == ".json"
        else yaml.safe_dump(table, allow_unicode=True)
    )
    path.write_text(text, encoding="utf-8")
    loaded = load_class_names_file(path)
    expected = {
        k: v.strip() if isinstance(v, str) else {lang: name.strip() for lang, name in v.items()}
        for k, v in table.items()
    }
    assert loaded == expected


@FAST
@given(
    st.one_of(st.binary(max_size=200), ANY_TEXT.map(lambda t: t.encode("utf-8"))),
    st.sampled_from([".json", ".yaml"]),
)
def test_any_class_name_file_is_a_table_or_an_error_naming_it(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("names") / f"any{suffix}"
    path.write_bytes(content)
    try:
        loaded = load_class_names_file(path)
    except ValueError as error:
        assert str(path) in str(error)
        return
    assert loaded and all(isinstance(k, str) for k in loaded)
    for value in loaded.values():
        assert (isinstance(value, str) and value.strip()) or (
            isinstance(value, dict)
            and set(value) <= set(LANGUAGES)
            and all(n.strip() for n in value.values())
        )


# --------------------------------------------------------------------------------- arrays given to the processor
DTYPES = st.one_of(
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness="="),
    hnp.floating_dtypes(endianness="="),
    st.just(np.dtype(bool)),
    hnp.complex_number_dtypes(endianness="="),
    hnp.datetime64_dtypes(endianness="="),
)
SHAPES = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    st.tuples(st.integers(1, 6), st.integers(1, 6), st.sampled_from([1, 2, 3, 4, 5, 13])),
    st.tuples(st.sampled_from([1, 2, 3, 4, 13]), st.integers(1, 6), st.integers(1, 6)),
)


@settings(max_examples=300, deadline=2000)
@given(
    hnp.arrays(DTYPES, SHAPES), st.sampled_from(["dtype", "minmax"]), st.sampled_from([None, [2, 1, 0], [0]])
)
def test_any_array_becomes_8_bit_rgb_or_a_value_error(array, scaling, bands):
    for convert in (array_to_rgb, to_rgb):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rgb = convert(array, bands=bands, intensity_scaling=scaling)
            except ValueError as error:
                assert str(error)
                continue
        assert (
            rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] * rgb.shape[1] > 0
        )
        assert rgb.flags["C_CONTIGUOUS"]


@settings(max_examples=100, deadline=2000)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.integers(1, 5), st.sampled_from([1, 3])),
        elements=st.one_of(st.floats(0, 1, width=32), st.sampled_from([np.nan, np.inf, -np.inf])),
    )
)
def test_nan_and_inf_pixels_become_black_never_nan(array):
    """Non-finite values are shown black (0) with a warning, under both scalings; the other values keep theirs; an
    image with no finite value at all is refused."""
    bad = np.broadcast_to(~np.isfinite(array), (*array.shape[:2], 3))
    for scaling in ("dtype", "minmax"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rgb = array_to_rgb(array, intensity_scaling=scaling, input_data_format="channels_last")
            except ValueError as error:
                assert bad.all() and "no finite values" in str(error)
                continue
        assert (rgb[bad] == 0).all()
        if scaling == "dtype":
            values = np.broadcast_to(array, (*array.shape[:2], 3))[~bad]
            assert np.abs(rgb[~bad].astype(int) - np.round(values * 255)).max(initial=0) <= 1


@FAST
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8), st.just(3))))
def test_uint8_rgb_is_returned_unchanged_in_either_layout(array):
    assert np.array_equal(array_to_rgb(array, input_data_format="channels_last"), array)
    assert np.array_equal(array_to_rgb(np.moveaxis(array, -1, 0), input_data_format="channels_first"), array)
