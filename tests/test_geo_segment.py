"""Dense patch features, NACLIP attention against a hand computation, and per-pixel segmentation of scenes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from modeling_rsmclip import RSMCLIPConfig, RSMCLIPModel
from modeling_rsmclip.modeling_rsmclip import naclip_attention, naclip_neighbourhood_bias
from modeling_rsmclip.testing import shared_data_dir


@pytest.fixture(scope="module")
def tiny_model() -> RSMCLIPModel:
    torch.manual_seed(0)
    return RSMCLIPModel(RSMCLIPConfig.from_preset("tiny")).eval()


def _pixels(seed: int = 0, shape=(2, 3, 32, 48)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ model-level features
def test_patch_features_equal_the_vision_tower_tokens_through_post_layernorm_and_projection(tiny_model):
    pixels = _pixels()  # 32 x 48 px, patch 8: a 4 x 6 grid (positions interpolated)
    with torch.no_grad():
        dense = tiny_model.get_patch_features(pixels, interpolate_pos_encoding=True)
        tokens = tiny_model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        direct = tiny_model.visual_projection(tiny_model.vision_model.post_layernorm(tokens[:, 1:]))
        pooled = tiny_model.get_image_features(pixels, interpolate_pos_encoding=True).pooler_output
    assert dense.shape == (2, 4, 6, tiny_model.config.projection_dim)
    assert torch.allclose(dense.reshape(2, 24, -1), direct, atol=1e-6)
    # Patch (i, j) is token 1 + i * 6 + j; the CLS token through the same head is get_image_features.
    assert torch.allclose(dense[1, 2, 5], direct[1, 2 * 6 + 5], atol=1e-6)
    cls = tiny_model.visual_projection(tiny_model.vision_model.post_layernorm(tokens[:, 0]))
    assert torch.allclose(cls, pooled, atol=1e-6)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def test_naclip_attention_equals_a_hand_computation(tiny_model):
    model = tiny_model.double()
    try:
        pixels = _pixels(1).double()
        grid, std = (4, 6), 1.5
        vision = model.vision_model
        layer = vision.encoder.layers[-1]
        with torch.no_grad():
            hidden = vision(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True)
            before_last = hidden.hidden_states[-2]
            output, weights = naclip_attention(layer, before_last, grid, std, return_weights=True)
            dense = model.get_patch_features(
                pixels, naclip=True, naclip_gaussian_std=std, interpolate_pos_encoding=True
            )
        p = {k: v.detach().numpy() for k, v in layer.named_parameters()}
        x = _layer_norm(before_last.numpy(), p["layer_norm1.weight"], p["layer_norm1.bias"], 1e-5)
        keys = x @ p["self_attn.k_proj.weight"].T + p["self_attn.k_proj.bias"]
        values = x @ p["self_attn.v_proj.weight"].T + p["self_attn.v_proj.bias"]
        heads, head_dim = layer.self_attn.num_heads, layer.self_attn.head_dim
        tokens = 1 + grid[0] * grid[1]
        expected_w = np.zeros((2, heads, tokens, tokens))
        mixed = np.zeros((2, tokens, heads * head_dim))
        for b in range(2):
            for h in range(heads):
                k = keys[b, :, h * head_dim : (h + 1) * head_dim]
                v = values[b, :, h * head_dim : (h + 1) * head_dim]
                for t in range(tokens):
                    row = np.empty(tokens)
                    for u in range(tokens):
                        gauss = 0.0
                        if t and u:  # patch tokens: Gaussian of their grid distance; CLS row/column: none
                            (i, j), (m, n) = divmod(t - 1, grid[1]), divmod(u - 1, grid[1])
                            gauss = math.exp(-((i - m) ** 2 + (j - n) ** 2) / (2 * std**2))
                        row[u] = float(k[t] @ k[u]) / math.sqrt(head_dim) + gauss  # key-key similarity
                    row = np.exp(row - row.max())
                    expected_w[b, h, t] = row / row.sum()
                    mixed[b, t, h * head_dim : (h + 1) * head_dim] = expected_w[b, h, t] @ v
        expected_out = (
            mixed @ p["self_attn.out_proj.weight"].T + p["self_attn.out_proj.bias"]
        )  # no residual, no MLP
        assert np.allclose(weights.numpy(), expected_w, atol=1e-10)
        assert np.allclose(output.numpy(), expected_out, atol=1e-10)
        post = vision.post_layernorm
        patches = _layer_norm(
            expected_out[:, 1:], post.weight.detach().numpy(), post.bias.detach().numpy(), 1e-5
        )
        projected = patches @ model.visual_projection.weight.detach().numpy().T
        assert np.allclose(dense.numpy(), projected.reshape(2, 4, 6, -1), atol=1e-10)
        plain = model.get_patch_features(pixels, interpolate_pos_encoding=True)
        assert not torch.allclose(plain, dense)
    finally:
        model.float()


def test_neighbourhood_bias_shape_and_errors():
    bias = naclip_neighbourhood_bias((2, 3), std=1.0, dtype=torch.float64)
    assert bias.shape == (7, 7) and (bias[0] == 0).all() and (bias[:, 0] == 0).all()
    assert bias[1, 1] == 1.0 and bias[1, 6] == pytest.approx(math.exp(-(1 + 4) / 2))  # (0,0) vs (1,2)
    with pytest.raises(ValueError, match="positive"):
        naclip_neighbourhood_bias((2, 2), std=0.0)


# ------------------------------------------------------------------------------------------------- scene maps
rasterio = pytest.importorskip("rasterio", reason='needs rasterio: pip install "rsmclip[geo]"')


@pytest.fixture(scope="module")
def geo():
    path = shared_data_dir() / "geo"
    if not (path / "sentinel" / "spain_7370579_s1_vv_vh_db.tif").exists():
        pytest.skip(f"real rasters not found at {path}: set RSMCLIP_SHARED_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="module")
def demo():
    from modeling_rsmclip.geo.zero_shot import load_model

    return load_model("demo")


LABELS = ["water", "farmland", "town", "forest"]


def _reference_segmentation(path, model, processor, window, stride, labels=LABELS, **reader_kwargs):
    """Whole-scene accumulation in memory (no strips): the straightforward version of the sliding window."""
    import torch.nn.functional as F

    from modeling_rsmclip.geo.naclip import dense_logits
    from modeling_rsmclip.geo.raster import RasterReader
    from modeling_rsmclip.geo.tiling import TileGrid
    from modeling_rsmclip.geo.zero_shot import pixel_values
    from modeling_rsmclip.inference import class_embeddings

    text = torch.from_numpy(class_embeddings(model, processor, labels, "en")).float()
    with RasterReader(path, **reader_kwargs) as reader:
        grid = TileGrid(reader.width, reader.height, window, overlap=window - stride)
        height = (grid.n_rows - 1) * stride + window
        width = (grid.n_cols - 1) * stride + window
        total = torch.zeros(len(labels), height, width)
        count = torch.zeros(height, width)
        valid = np.zeros((height, width), dtype=bool)
        for col, row, w, h in grid.windows():
            rgb, ok = reader.read_rgb((col, row, w, h))
            valid[row : row + h, col : col + w] |= ok
            if not ok.any():
                continue
            with torch.no_grad():
                logits = dense_logits(model, pixel_values(processor, [rgb]), text)
            total[:, row : row + h, col : col + w] += F.interpolate(logits, size=(h, w), mode="bilinear")[0]
            count[row : row + h, col : col + w] += 1
        best = total.argmax(0).numpy()[: reader.height, : reader.width]
        ok = valid[: reader.height, : reader.width] & (count.numpy()[: reader.height, : reader.width] > 0)
        return np.where(ok, best, 255).astype(np.uint8)


def _crop(src_path, dst, col, row, width, height):
    from affine import Affine

    with rasterio.open(src_path) as src:
        data = src.read(window=rasterio.windows.Window(col, row, width, height))
        profile = src.profile.copy()
        profile.update(width=width, height=height, transform=src.transform @ Affine.translation(col, row))
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
    return dst


def test_segmentation_with_overlap_equals_whole_scene_blending_and_keeps_georeferencing(geo, demo, tmp_path):
    from modeling_rsmclip.geo import segment_scene

    model, processor = demo
    # A corner of the drone orthomosaic: its alpha band marks the area outside the flight as nodata.
    path = _crop(geo / "aerial" / "drone_orthomosaic_rgba.tif", tmp_path / "drone.tif", 0, 0, 448, 320)
    out = tmp_path / "seg"
    result = segment_scene(
        path, LABELS, model=model, processor=processor, window=192, stride=128, batch_size=8, output_dir=out,
        progress=False,
    )  # fmt: skip
    expected = _reference_segmentation(path, model, processor, 192, 128)
    assert result.class_map.shape == (320, 448) and result.windows == 3 * 2
    assert np.array_equal(result.class_map, expected)
    with rasterio.open(path) as src:
        alpha = src.read(4)
        crs, transform = src.crs, src.transform
    assert 0 < (alpha == 0).sum() < alpha.size
    assert (result.class_map[alpha == 0] == 255).all() and (result.class_map[alpha > 0] < 4).all()
    with rasterio.open(out / "segmentation.tif") as seg:
        assert (
            seg.crs == crs and seg.transform == transform and seg.nodata == 255 and seg.dtypes[0] == "uint8"
        )
        assert np.array_equal(seg.read(1), result.class_map)
        assert seg.colormap(1)[0][:3] == (31, 119, 180)
    assert sum(result.pixels_per_class.values()) == int((alpha > 0).sum())
    assert (out / "overlay.png").stat().st_size > 10_000


def test_rotated_geotransform_is_kept_by_segmentation(geo, demo, tmp_path):
    from modeling_rsmclip.geo import segment_scene

    model, processor = demo
    path = geo / "spacenet" / "sar_hh.tif"
    result = segment_scene(
        path, LABELS, model=model, processor=processor, window=100, output_dir=tmp_path, progress=False
    )
    with rasterio.open(path) as src, rasterio.open(tmp_path / "segmentation.tif") as seg:
        assert not src.transform.is_rectilinear
        assert seg.transform == src.transform and seg.crs == src.crs
    assert result.class_map.shape == (200, 200) and (result.class_map < 4).all()


def test_custom_wkt_classification_keeps_the_crs_and_a_hand_computed_transform(geo, demo, tmp_path):
    from affine import Affine

    from modeling_rsmclip.geo import classify_scene

    model, processor = demo
    path = geo / "spacenet" / "landsat_albers_custom_crs.tif"
    result = classify_scene(
        path, LABELS, model=model, processor=processor, tile_size=256, overlap=128, output_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    with rasterio.open(path) as src, rasterio.open(tmp_path / "classes.tif") as out:
        assert src.crs.to_epsg() is None and out.crs == src.crs
        t = src.transform  # 30 m pixels; cells of 128 px (the stride) centred on the tiles: start 64 px in
        assert out.transform.almost_equals(
            Affine(128 * t.a, 0.0, t.c + 64 * t.a, 0.0, 128 * t.e, t.f + 64 * t.e)
        )
        assert (out.width, out.height) == (result.grid.n_cols, result.grid.n_rows) == (3, 3)


def test_cli_map_segment_matches_python(geo, demo, tmp_path, capsys):
    from modeling_rsmclip.cli import main
    from modeling_rsmclip.geo import segment_scene

    model, processor = demo
    path = geo / "sentinel" / "spain_7370579_s1_vv_vh_db.tif"
    args = ["map", "segment", str(path), "--labels", ",".join(LABELS), "--output", str(tmp_path / "cli")]
    assert main([*args, "--window", "512", "--stride", "512", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "naclip" and summary["windows"] == 1
    result = segment_scene(
        path, LABELS, model=model, processor=processor, window=512, stride=512, progress=False
    )
    with rasterio.open(tmp_path / "cli" / "segmentation.tif") as seg, rasterio.open(path) as src:
        assert seg.crs == src.crs and seg.transform == src.transform
        assert np.array_equal(seg.read(1), result.class_map)
    assert main([*args, "--window", "256", "--stride", "300", "--no-progress"]) == 2
    assert "stride must be between" in capsys.readouterr().err
