"""Image inputs of every PIL mode and array type become correct RGB; bad inputs get clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modeling_rsmclip import RSMCLIPImageProcessor, array_to_rgb, to_rgb

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)


def test_rgb_passthrough_and_grey_modes():
    assert np.array_equal(to_rgb(Image.fromarray(RGB)), RGB)
    grey = RGB[:, :, 0]
    out = to_rgb(Image.fromarray(grey))
    assert np.array_equal(out, np.stack([grey] * 3, -1))
    binary = Image.fromarray(grey > 128).convert("1")
    assert set(np.unique(to_rgb(binary))) <= {0, 255}
    assert np.array_equal(to_rgb(binary)[:, :, 0], np.where(grey > 128, 255, 0))


def test_alpha_is_dropped_colours_kept():
    rgba = np.concatenate([RGB, np.full((20, 24, 1), 7, np.uint8)], -1)
    assert np.array_equal(to_rgb(Image.fromarray(rgba)), RGB)
    la = Image.fromarray(np.stack([RGB[:, :, 0], RGB[:, :, 1]], -1))
    assert np.array_equal(to_rgb(la), np.stack([RGB[:, :, 0]] * 3, -1))


def test_palette_and_cmyk():
    palette = Image.fromarray(RGB).quantize(16)
    assert np.array_equal(to_rgb(palette), np.array(palette.convert("RGB")))
    cmyk = Image.fromarray(RGB).convert("CMYK")
    assert np.abs(to_rgb(cmyk).astype(int) - RGB.astype(int)).max() <= 1


def test_16_bit_and_32_bit_and_float_modes():
    data16 = RGB[:, :, 0].astype(np.uint16) * 257  # 8-bit values spread over the 16-bit range
    image16 = Image.fromarray(data16)
    assert image16.mode == "I;16"
    assert np.array_equal(to_rgb(image16)[:, :, 0], RGB[:, :, 0])  # not clipped to 255
    image32 = Image.fromarray(data16.astype(np.int32))
    assert np.array_equal(to_rgb(image32)[:, :, 1], RGB[:, :, 0])
    imagef = Image.fromarray(RGB[:, :, 0].astype(np.float32) / 255.0)
    assert np.abs(to_rgb(imagef)[:, :, 2].astype(int) - RGB[:, :, 0]).max() <= 1


def test_numpy_arrays_uint8_uint16_float_and_layouts():
    assert np.array_equal(array_to_rgb(RGB), RGB)
    assert np.array_equal(array_to_rgb(RGB.astype(np.uint16) * 257), RGB)
    assert np.abs(array_to_rgb(RGB.astype(np.float32) / 255).astype(int) - RGB).max() <= 1
    assert np.array_equal(array_to_rgb(RGB.astype(np.float64)), RGB)  # floats above 1 are taken as 0..255
    assert np.array_equal(array_to_rgb(np.moveaxis(RGB, -1, 0)), RGB)  # CxHxW
    assert np.array_equal(array_to_rgb(RGB[:, :, 0]), np.stack([RGB[:, :, 0]] * 3, -1))  # HxW
    twelve_bit = RGB.astype(np.uint16) * 16  # 0..4080 in a uint16 container
    assert np.array_equal(
        array_to_rgb(twelve_bit, intensity_scaling="minmax"),
        np.rint((RGB - RGB.min()) / (RGB.max() - RGB.min()) * 255).astype(np.uint8),
    )


def test_multiband_needs_band_choice():
    bands = RNG.integers(0, 4096, size=(20, 24, 5)).astype(np.uint16)
    with pytest.raises(ValueError, match=r"5 bands.*bands=\[r, g, b\]"):
        array_to_rgb(bands)
    out = array_to_rgb(bands, bands=[3, 2, 1])
    assert np.array_equal(out, np.rint(bands[:, :, [3, 2, 1]] / 65535 * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="3 indices"):
        array_to_rgb(bands, bands=[0, 9, 1])
    processor = RSMCLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    with pytest.raises(ValueError, match="5 bands"):
        processor(images=bands, return_tensors="pt")
    pixels = processor(images=bands, bands=[3, 2, 1], return_tensors="pt")["pixel_values"]
    expected = processor(images=Image.fromarray(out), return_tensors="pt")["pixel_values"]
    assert np.allclose(pixels.numpy(), expected.numpy())


def test_processor_on_every_mode_equals_processor_on_its_rgb(tiny):
    _, processor = tiny
    base = Image.fromarray(RGB)
    inputs = {
        "L": base.convert("L"),
        "RGBA": base.convert("RGBA"),
        "P": base.quantize(32),
        "CMYK": base.convert("CMYK"),
        "I;16": Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257),
        "F": Image.fromarray(np.asarray(base.convert("L")).astype(np.float32) / 255),
    }
    for mode, image in inputs.items():
        got = processor(images=image, return_tensors="pt")["pixel_values"]
        ref = processor(images=Image.fromarray(to_rgb(image)), return_tensors="pt")["pixel_values"]
        assert got.shape == (1, 3, 32, 32), mode
        assert np.allclose(got.numpy(), ref.numpy()), mode


def test_tiff_files_keep_bit_depth(tmp_path, shared_data):
    tif = sorted((shared_data / "ucm-captions" / "original-tif").glob("*.tif"))[0]
    jpg_name = tif.stem + ".jpg"
    direct = np.array(Image.open(tif).convert("RGB"))
    assert np.array_equal(to_rgb(tif), direct)
    assert np.array_equal(to_rgb(str(tif)), direct)
    # a 16-bit TIFF written here: read by path without clipping
    data16 = direct[:, :, 1].astype(np.uint16) * 257
    path16 = tmp_path / "band16.tif"
    Image.fromarray(data16).save(path16)
    assert np.array_equal(to_rgb(path16)[:, :, 0], direct[:, :, 1])
    assert (shared_data / "ucm-captions" / "images" / jpg_name).exists()


def test_bad_inputs_have_clear_errors(tiny, tmp_path):
    _, processor = tiny
    with pytest.raises(ValueError, match="no images"):
        processor(images=[], return_tensors="pt")
    with pytest.raises(ValueError, match="no texts"):
        processor(text=[], return_tensors="pt")
    with pytest.raises(ValueError, match="text 1 is empty"):
        processor(text=["a forest", "  "], return_tensors="pt")
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        to_rgb(tmp_path / "missing.tif")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        to_rgb(broken)
    with pytest.raises(TypeError, match="unsupported image input"):
        to_rgb(3.5)
