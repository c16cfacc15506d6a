"""One decoding path for image files, and one rule per array value range / band layout (issue 13, items 2 and 3)."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from modeling_rsmclip import (
    RSMCLIPImageProcessor,
    RSMCLIPZeroShotImageClassificationPipeline,
    array_to_rgb,
    to_rgb,
)
from modeling_rsmclip.evaluation.embed import ImageFiles
from modeling_rsmclip.processing_rsmclip import load_image_file

RNG = np.random.default_rng(13)
RGB = RNG.integers(0, 256, size=(40, 36, 3), dtype=np.uint8)
REPO = Path(__file__).resolve().parents[1]


def _png_with_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR claiming width x height, with almost no pixel data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _processor() -> RSMCLIPImageProcessor:
    return RSMCLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


# ----------------------------------------------------------------------------------------------- item 2: files
def test_decompression_bomb_is_a_clear_error_not_a_crash(tmp_path):
    bomb = _png_with_header_only(tmp_path / "bomb.png", 40000, 40000)
    # In a child process: before the fix, the processor's path input reached torchvision's decoder and segfaulted.
    code = (
        "import sys, modeling_rsmclip\n"
        "from transformers import AutoProcessor\n"
        f"p = AutoProcessor.from_pretrained({str(REPO / 'modeling_rsmclip' / 'demo_model')!r})\n"
        "try:\n"
        f"    p(images={str(bomb)!r}, return_tensors='pt')\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e); sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert str(bomb) in done.stdout and "decompression bomb" in done.stdout
    with pytest.raises(ValueError, match=r"bomb\.png.*decompression bomb"):
        load_image_file(bomb)
    with pytest.raises(ValueError, match=r"bomb\.png"):
        ImageFiles([bomb])[0]


def test_the_pixel_limit_is_one_documented_number_the_user_can_raise(tmp_path, monkeypatch):
    """A 100-megapixel image (a legitimate aerial photo) loads under the default limit (178,956,970 pixels, as
    documented); a larger one is refused naming the file, its size and the variable that raises the limit, which
    then lets it through; PIL's own global setting is left as it was."""
    import PIL.Image

    from modeling_rsmclip.processing_rsmclip import DEFAULT_MAX_IMAGE_PIXELS, max_image_pixels

    monkeypatch.delenv("RSMCLIP_MAX_IMAGE_PIXELS", raising=False)
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS == 178_956_970
    big = tmp_path / "aerial_100mp.png"
    Image.new("1", (10_000, 10_000), 1).save(big)  # 1-bit: 12 MB decoded, a few kB on disk
    pil_limit = PIL.Image.MAX_IMAGE_PIXELS
    assert load_image_file(big).size == (10_000, 10_000)
    bigger = _png_with_header_only(tmp_path / "huge.png", 15_000, 12_000)  # 180 M pixels
    with pytest.raises(ValueError) as refused:
        load_image_file(bigger)
    message = str(refused.value)
    assert "huge.png" in message and "15000 x 12000 = 180,000,000 pixels" in message
    assert "RSMCLIP_MAX_IMAGE_PIXELS=180000000" in message and "178,956,970" in message
    monkeypatch.setenv("RSMCLIP_MAX_IMAGE_PIXELS", "180000000")
    with pytest.raises(ValueError, match="huge.png") as past_the_limit:  # only a header: decoding then fails
        load_image_file(bigger)
    assert "pixels, more than the limit" not in str(past_the_limit.value)
    monkeypatch.setenv("RSMCLIP_MAX_IMAGE_PIXELS", "50_000_000")
    with pytest.raises(ValueError, match="more than the limit of 50,000,000"):
        load_image_file(big)
    assert load_image_file(big, max_pixels=100_000_000).size == (10_000, 10_000)  # the argument wins
    monkeypatch.setenv("RSMCLIP_MAX_IMAGE_PIXELS", "none")
    assert max_image_pixels() is None
    monkeypatch.setenv("RSMCLIP_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match=r"\$RSMCLIP_MAX_IMAGE_PIXELS must be a number"):
        load_image_file(big)
    assert PIL.Image.MAX_IMAGE_PIXELS == pil_limit


def test_16_bit_tiff_path_through_the_processor_is_not_clipped(tiny, tmp_path):
    _, processor = tiny
    grey = RGB[:, :, 1]
    path = tmp_path / "band16.tif"
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode.startswith("I;16")
    expected = processor(images=Image.fromarray(np.stack([grey] * 3, -1)), return_tensors="pt")[
        "pixel_values"
    ]
    for given in (str(path), path, [str(path)]):
        got = processor(images=given, return_tensors="pt")["pixel_values"]
        assert torch.equal(got, expected), given
    assert np.array_equal(np.asarray(ImageFiles([path])[0]), np.stack([grey] * 3, -1))


def test_zero_shot_pipeline_reads_16_bit_tiff_like_its_rgb(tiny, tiny_saved, tmp_path):
    grey = RGB[:, :, 2]
    path = tmp_path / "scene.tif"
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    classifier = pipeline(
        "zero-shot-image-classification",
        model=str(tiny_saved),
        pipeline_class=RSMCLIPZeroShotImageClassificationPipeline,
    )
    labels = ["a forest", "a beach", "a harbor"]
    from_path = classifier(str(path), candidate_labels=labels)
    from_rgb = classifier(Image.fromarray(np.stack([grey] * 3, -1)), candidate_labels=labels)
    assert [r["label"] for r in from_path] == [r["label"] for r in from_rgb]
    assert [r["score"] for r in from_path] == pytest.approx([r["score"] for r in from_rgb], abs=1e-6)
    # PIL's own 8-bit conversion (the stock pipeline's) clips every 16-bit value above 255 to white.
    clipped = np.asarray(Image.open(path).convert("RGB"))
    assert not np.array_equal(clipped, np.stack([grey] * 3, -1))
    assert np.array_equal(clipped[:, :, 0], np.where(grey > 0, 255, 0))
    with pytest.raises(FileNotFoundError, match="nowhere.tif"):
        classifier(str(tmp_path / "nowhere.tif"), candidate_labels=labels)


def test_missing_and_broken_files_name_the_file(tiny, tmp_path):
    _, processor = tiny
    with pytest.raises(FileNotFoundError, match="missing.png"):
        processor(images=str(tmp_path / "missing.png"), return_tensors="pt")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        to_rgb(tmp_path / "missing.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ValueError, match="broken.png"):
        processor(images=str(broken), return_tensors="pt")
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(RGB).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.jpg"):
        to_rgb(str(truncated))
    with pytest.raises(ValueError, match="is a directory"):
        to_rgb(tmp_path)
    negative = tmp_path / "signed.tif"
    Image.fromarray(np.full((8, 8), -5, np.int32)).save(negative)
    with pytest.raises(ValueError, match="signed.tif"):
        to_rgb(negative)


# ---------------------------------------------------------------------------------------------- item 3: arrays
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint32, np.int8])
def test_wide_integer_arrays_holding_8_bit_values_convert_exactly(dtype):
    values = RGB if np.iinfo(dtype).max >= 255 else RGB // 2
    assert np.array_equal(array_to_rgb(values.astype(dtype)), values)


def test_integer_arrays_above_8_bit_warn_negative_or_huge_are_refused():
    data = RGB.astype(np.int32) * 16  # 12-bit data in an int32 container
    with pytest.warns(UserWarning, match=r"int32 image with values up to 4080 is read as 16-bit"):
        out = array_to_rgb(data)
    assert np.array_equal(out, np.rint(data / 65535 * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"negative values \(minimum -3\)"):
        array_to_rgb(np.full((20, 20), -3, np.int64))
    with pytest.raises(ValueError, match="beyond 16 bits"):
        array_to_rgb(np.full((20, 20), 70000, np.int64))
    stretched = array_to_rgb(np.arange(400, dtype=np.int64).reshape(20, 20) - 200, intensity_scaling="minmax")
    assert stretched[0, 0, 0] == 0 and stretched[-1, -1, 0] == 255


def test_float_rules_nan_negative_0_to_2_and_above_255():
    data = RGB.astype(np.float32) / 255
    data[0, 0, :] = np.nan
    data[0, 1, 0] = np.inf
    with pytest.warns(UserWarning, match=r"4 NaN/infinite value\(s\)"):
        out = array_to_rgb(data)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1, 0] == 0
    assert np.abs(out[1:].astype(int) - RGB[1:]).max() <= 1
    with pytest.raises(ValueError, match="no finite values"):
        array_to_rgb(np.full((20, 20), np.nan))
    with pytest.raises(ValueError, match=r"negative values \(minimum -0.25\)"):
        array_to_rgb(np.full((20, 20), -0.25))
    reflectance = np.full((20, 20), 0.5)
    reflectance[0, :5] = 1.5
    with pytest.warns(
        UserWarning, match=r"maximum 1.5 is read as \[0, 1\].*5 value\(s\) above 1 are clipped"
    ):
        out = array_to_rgb(reflectance)
    assert out[0, 0, 0] == 255 and out[5, 5, 0] == 128
    assert np.array_equal(array_to_rgb(RGB.astype(np.float64)), RGB)  # (2, 255]: 0..255 data
    with pytest.raises(ValueError, match="values up to 3000"):
        array_to_rgb(np.full((20, 20), 3000.0))


def test_channel_order_ambiguity_is_refused_or_resolved_by_input_data_format():
    chw = np.moveaxis(RGB, -1, 0)
    assert np.array_equal(array_to_rgb(chw), RGB)  # 3 x 40 x 36: only the first axis can be bands
    small_hwc = RGB[:10, :12]  # 10 x 12 x 3: both ends <= 16, only the last is a usual band count
    assert np.array_equal(array_to_rgb(small_hwc), small_hwc)
    ambiguous = RNG.integers(0, 256, size=(3, 30, 4)).astype(np.uint8)  # 3 bands of 30x4, or 4 bands of 3x30?
    with pytest.raises(ValueError, match=r"cannot tell which axis .* \(3, 30, 4\).*input_data_format"):
        array_to_rgb(ambiguous)
    with pytest.raises(ValueError, match=r"cannot tell which axis"):
        array_to_rgb(RNG.integers(0, 256, size=(30, 20, 40)).astype(np.uint8))
    first = array_to_rgb(ambiguous, input_data_format="channels_first")
    assert np.array_equal(first, np.moveaxis(ambiguous, 0, -1))
    with pytest.raises(ValueError, match="4 bands"):
        array_to_rgb(ambiguous, input_data_format="channels_last")
    processor = _processor()
    got = processor(images=ambiguous, input_data_format="channels_first", return_tensors="pt")["pixel_values"]
    ref = processor(images=Image.fromarray(first), return_tensors="pt")["pixel_values"]
    assert torch.equal(got, ref)


def test_torch_tensors_follow_the_array_rules():
    processor = _processor()
    chw = torch.from_numpy(np.moveaxis(RGB, -1, 0).copy())
    ref = processor(images=Image.fromarray(RGB), return_tensors="pt")["pixel_values"]
    assert torch.equal(processor(images=chw, return_tensors="pt")["pixel_values"], ref)
    assert torch.equal(processor(images=chw.to(torch.int64), return_tensors="pt")["pixel_values"], ref)
    batch = processor(images=torch.stack([chw, chw]), return_tensors="pt")["pixel_values"]
    assert batch.shape[0] == 2 and torch.equal(batch[1:], ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.abs(to_rgb(chw.float() / 255).astype(int) - RGB).max() <= 1
