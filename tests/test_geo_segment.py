"""Dense patch features, NACLIP attention against a hand computation, and per-pixel segmentation of scenes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _shared_data import need_shared_data

from modeling_rsmclip import RSMCLIPConfig, RSMCLIPModel
from modeling_rsmclip.modeling_rsmclip import naclip_attention, naclip_neighbourhood_bias


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
    return need_shared_data("geo", "sentinel", "spain_7370579_s1_vv_vh_db.tif").parents[1]


@pytest.fixture(scope="module")
def demo():
    from modeling_rsmclip.geo.zero_shot import load_model

    return load_model("demo")


LABELS = ["water", "farmland", "town", "forest"]


def _raised_cosine(size: int) -> np.ndarray:
    """The blending weight by hand: sin^2(pi (x + 0.5) / size) per axis, floored at 1e-3, outer product."""
    ramp = np.maximum(np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2, 1e-3)
    return np.outer(ramp, ramp)


def _offsets(extent: int, size: int, stride: int) -> list[int]:
    """Window offsets along one axis: every stride, the last one ending at the scene's edge."""
    offsets = list(range(0, max(extent - size, 0) + stride, stride))
    return sorted({min(o, extent - size) for o in offsets})


def _class_embeddings_by_hand(model, processor, labels) -> torch.Tensor:
    """Class embeddings by the CLIP recipe, written out: every English template, normalised, averaged, normalised."""
    import torch.nn.functional as F

    from modeling_rsmclip.templates import PROMPT_TEMPLATES

    classes = []
    with torch.no_grad():
        for label in labels:
            prompts = [t.format(label) for t in PROMPT_TEMPLATES["en"]]
            tokens = processor(text=prompts, padding=True, return_tensors="pt")
            embeds = model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            classes.append(F.normalize(F.normalize(embeds, dim=-1).mean(0), dim=0))
    return torch.stack(classes)


def _naclip_logits_by_hand(model, processor, rgbs, text, std: float = 5.0) -> torch.Tensor:
    """NACLIP's patch-label cosines ``(batch, labels, side, side)`` written out from the model's hidden states: the
    last block's key-key attention plus the Gaussian neighbourhood (``std`` patches, nothing for the CLS token), no
    residual, no feed-forward, then the post-layernorm and the projection."""
    import torch.nn.functional as F

    with torch.no_grad():
        pixels = processor.image_processor(images=list(rgbs), return_tensors="pt")["pixel_values"]
        vision = model.vision_model
        hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        layer = vision.encoder.layers[-1]
        heads = layer.self_attn.num_heads
        x = layer.layer_norm1(hidden)
        batch, tokens, dim = x.shape
        side = math.isqrt(tokens - 1)
        keys = layer.self_attn.k_proj(x).view(batch, tokens, heads, dim // heads).transpose(1, 2)
        values = layer.self_attn.v_proj(x).view(batch, tokens, heads, dim // heads).transpose(1, 2)
        ij = torch.tensor([divmod(p, side) for p in range(side * side)], dtype=torch.float32)
        gauss = torch.zeros(tokens, tokens)
        gauss[1:, 1:] = torch.exp(-((ij[:, None] - ij[None]) ** 2).sum(-1) / (2 * std**2))
        attention = torch.softmax(keys @ keys.transpose(-1, -2) / math.sqrt(dim // heads) + gauss, dim=-1)
        out = layer.self_attn.out_proj((attention @ values).transpose(1, 2).reshape(batch, tokens, dim))
        patches = F.normalize(model.visual_projection(vision.post_layernorm(out[:, 1:])), dim=-1)
        return (patches @ text.T).transpose(1, 2).reshape(batch, len(text), side, side)


def _reference_segmentation(path, model, processor, window, stride, labels=LABELS, **reader_kwargs):
    """Whole-scene accumulation in memory (no strips): the straightforward version of the sliding window, with the
    windows inside the scene and their logits averaged with the raised-cosine weight."""
    import torch.nn.functional as F

    from modeling_rsmclip.geo.raster import RasterReader

    text = _class_embeddings_by_hand(model, processor, labels)
    weight = torch.from_numpy(_raised_cosine(window)).float()
    with RasterReader(path, **reader_kwargs) as reader:
        height, width = reader.height, reader.width
        total = torch.zeros(len(labels), height, width)
        weights = torch.zeros(height, width)
        valid = np.zeros((height, width), dtype=bool)
        for row in _offsets(height, window, stride):
            for col in _offsets(width, window, stride):
                rgb, ok = reader.read_rgb((col, row, window, window))
                valid[row : row + window, col : col + window] |= ok
                if not ok.any():
                    continue
                logits = _naclip_logits_by_hand(model, processor, [rgb], text)
                fine = F.interpolate(logits, size=(window, window), mode="bilinear")[0]
                total[:, row : row + window, col : col + window] += fine * weight
                weights[row : row + window, col : col + window] += weight
        best = (total / weights.clamp_min(1e-12)).argmax(0).numpy()
        return np.where(valid & (weights.numpy() > 0), best, 255).astype(np.uint8)


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
    # A corner of the drone orthomosaic: its alpha band marks the area outside the flight as nodata. 450 x 330 px
    # with 192 px windows every 128 px: the last column and row of windows are moved inside (x 258, y 138).
    path = _crop(geo / "aerial" / "drone_orthomosaic_rgba.tif", tmp_path / "drone.tif", 0, 0, 450, 330)
    out = tmp_path / "seg"
    result = segment_scene(
        path, LABELS, model=model, processor=processor, window=192, stride=128, batch_size=8, output_dir=out,
        progress=False,
    )  # fmt: skip
    expected = _reference_segmentation(path, model, processor, 192, 128)
    assert result.class_map.shape == (330, 450) and result.windows == 4 * 3
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


def _uniform_scene(path, width, height, colour):
    from affine import Affine

    data = np.broadcast_to(np.array(colour, dtype=np.uint8)[:, None, None], (3, height, width))
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:32630",
                   transform=Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4500000.0))  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_uniform_scene_is_one_class_up_to_its_last_row_and_column(demo, tmp_path):
    """Every pixel the same colour: every window sees the same picture, so the whole map is one class, the last
    rows and columns included (windows past the edge used to see black padding there and paint a rim)."""
    from modeling_rsmclip.geo import segment_scene

    model, processor = demo
    colour = (40, 90, 160)
    path = _uniform_scene(tmp_path / "uniform.tif", 500, 420, colour)  # 224 px windows: 4 x 3, 2 clamped
    result = segment_scene(path, LABELS, model=model, processor=processor, window=224, progress=False)
    # The class of one 224 px window of that colour, on its own.
    window = np.broadcast_to(np.array(colour, dtype=np.uint8), (224, 224, 3)).copy()
    alone = _naclip_logits_by_hand(
        model, processor, [window], _class_embeddings_by_hand(model, processor, LABELS)
    )
    expected = int(alone[0].mean(dim=(1, 2)).argmax())
    assert result.windows == 4 * 3 and result.skipped_windows == 0
    assert (result.class_map == expected).all()
    assert (result.class_map[-1] == expected).all() and (result.class_map[:, -1] == expected).all()
    assert result.pixels_per_class[LABELS[expected]] == 500 * 420

    # A scene smaller than the window: the window shrinks to the scene's shorter side (and the stride with it).
    small = _uniform_scene(tmp_path / "small.tif", 150, 100, colour)
    result = segment_scene(small, LABELS, model=model, processor=processor, window=224, progress=False)
    assert (result.window, result.stride, result.windows) == (100, 50, 2)
    assert result.class_map.shape == (100, 150) and (result.class_map == expected).all()


def _seam_metrics(logits, valid, xs, ys):
    """Mean absolute logit step and share of class changes between neighbouring pixels that straddle a window
    border (columns ``xs``, rows ``ys``), each divided by the same figure between the other neighbours: 1 = no
    seam."""
    classes = logits.argmax(0)
    sums = {"logit_step": np.zeros(4), "class_change": np.zeros(4)}  # border sum, count, other sum, count
    for axis, borders in ((1, xs), (0, ys)):
        both = (valid[:, 1:] & valid[:, :-1]) if axis == 1 else (valid[1:] & valid[:-1])
        at = np.zeros(valid.shape[axis] - 1, dtype=bool)
        at[[b - 1 for b in borders if 0 < b < valid.shape[axis]]] = True
        at = at[None, :] if axis == 1 else at[:, None]
        steps = {
            "logit_step": np.abs(np.diff(logits, axis=axis + 1)).mean(0),
            "class_change": (np.diff(classes, axis=axis) != 0).astype(np.float64),
        }
        for name, step in steps.items():
            sums[name] += [
                step[both & at].sum(),
                (both & at).sum(),
                step[both & ~at].sum(),
                (both & ~at).sum(),
            ]
    return {name: (v[0] / v[1]) / (v[2] / v[3]) for name, v in sums.items()}


def test_window_seams_disappear_on_the_drone_scene(geo, demo):
    """The drone orthomosaic (686 x 758 px), 224 px windows every 112 px. Before: a regular grid padded past the
    edge and a plain average of the windows' logits; the logits jump where a window starts or ends (22.7x the
    step elsewhere; class changes 17x as frequent). After: windows inside the scene and raised-cosine blending:
    the steps at window borders are those elsewhere (ratio about 1)."""
    import torch.nn.functional as F

    from modeling_rsmclip.geo.naclip import WindowStitcher
    from modeling_rsmclip.geo.raster import RasterReader
    from modeling_rsmclip.geo.tiling import TileGrid

    model, processor = demo
    labels = ["rice field", "road", "building", "trees", "water"]
    text = _class_embeddings_by_hand(model, processor, labels)
    with RasterReader(geo / "aerial" / "drone_orthomosaic_rgba.tif") as reader:
        height, width = reader.height, reader.width
        stitcher = WindowStitcher(reader, model, processor, text, 224, 112, batch_size=16)
        strips = list(stitcher)
        after = torch.cat([s.logits for s in strips], dim=1).numpy()
        valid = np.concatenate([s.valid for s in strips])
        borders_after = (
            {x for left in stitcher.lefts for x in (left, left + 224)},
            {y for top in stitcher.tops for y in (top, top + 224)},
        )
        # Before, as the scene was stitched: the grid's windows padded past the edge, averaged with equal weight.
        grid = TileGrid(width, height, 224, overlap=112)
        reads = [reader.read_rgb(w) for w in grid.windows()]
        dense = _naclip_logits_by_hand(model, processor, [rgb for rgb, _ in reads], text)
    total = torch.zeros(len(labels), grid.n_rows * 112 + 112, grid.n_cols * 112 + 112)
    count = torch.zeros(total.shape[1:])
    for (col, row, _, _), (_, ok), coarse in zip(grid.windows(), reads, dense):
        if ok.any():
            total[:, row : row + 224, col : col + 224] += F.interpolate(
                coarse[None], size=(224, 224), mode="bilinear"
            )[0]
            count[row : row + 224, col : col + 224] += 1
    before = (total / count.clamp_min(1))[:, :height, :width].numpy()
    borders_before = ({c for c, *_ in grid.windows()} | {c + 224 for c, *_ in grid.windows()},
                      {r for _, r, *_ in grid.windows()} | {r + 224 for _, r, *_ in grid.windows()})  # fmt: skip

    seams_before = _seam_metrics(before, valid, *borders_before)
    seams_after = _seam_metrics(after, valid, *borders_after)
    assert stitcher.skipped == 0 and valid.sum() == int((_alpha(geo) > 0).sum())
    assert seams_before["logit_step"] > 10 and seams_before["class_change"] > 5
    assert seams_after["logit_step"] < 1.2 and seams_after["class_change"] < 1.2


def _alpha(geo):
    with rasterio.open(geo / "aerial" / "drone_orthomosaic_rgba.tif") as src:
        return src.read(4)


def test_logits_of_a_scene_that_fits_one_window_equal_naclip_by_hand(geo, demo, tmp_path):
    """A 224 px crop of the Colorado aerial photo, one 224 px window: the stitched per-pixel logits are NACLIP's
    patch-label cosines upsampled bilinearly, computed here from the model's hidden states and text features."""
    import torch.nn.functional as F

    from modeling_rsmclip.geo.naclip import WindowStitcher
    from modeling_rsmclip.geo.raster import RasterReader

    model, processor = demo
    path = _crop(geo / "aerial" / "colorado_0.15m.tif", tmp_path / "colorado.tif", 100, 4, 224, 224)
    with rasterio.open(path) as src:
        rgb = np.moveaxis(src.read(), 0, -1)  # uint8 RGB, no nodata: the picture as is
    text = _class_embeddings_by_hand(model, processor, LABELS)
    coarse = _naclip_logits_by_hand(model, processor, [rgb], text)
    with torch.no_grad():
        expected = F.interpolate(coarse, size=(224, 224), mode="bilinear", align_corners=False)[0]
        with RasterReader(path) as reader:
            strips = list(WindowStitcher(reader, model, processor, text, 224))
    got = torch.cat([s.logits for s in strips], dim=1)
    assert got.shape == (len(LABELS), 224, 224) and np.concatenate([s.valid for s in strips]).all()
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
