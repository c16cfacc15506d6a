"""Labels that the installed fonts cannot draw (Chinese, Korean on a machine without a CJK font): the overlays warn,
name them, and fall back to class ids with a legend file beside the PNG; with a CJK font installed they are drawn."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from modeling_rsmclip.evaluation.fonts import _font_coverage, check_glyphs  # noqa: E402
from modeling_rsmclip.geo.writer import legend_entries, legend_path, render_overlay  # noqa: E402

LABELS = ["森林", "water", "숲"]


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 60 x 90 preview: class 0 on the left half, 1 top right, 2 bottom right (hand-counted shares)."""
    preview = np.full((60, 90, 3), 120, dtype=np.uint8)
    classes = np.zeros((60, 90), dtype=np.int16)
    classes[:30, 45:] = 1
    classes[30:, 45:] = 2
    return preview, np.ones((60, 90), dtype=bool), classes


def _render(path, caplog, fonts=None):
    preview, valid, classes = _scene()
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render_overlay(path, preview, valid, classes, LABELS, "scene.tif: test", fonts=fonts)
    glyph_warnings = [w for w in caught if "missing from" in str(w.message)]  # matplotlib drawing a box
    return glyph_warnings


def test_labels_no_font_can_draw_give_a_warning_class_ids_and_a_legend_file(tmp_path, caplog):
    path = tmp_path / "overlay.png"
    boxes = _render(path, caplog, fonts=["DejaVu Sans"])  # a font without CJK glyphs, forced
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(messages) == 1
        and "'森林'" in messages[0]
        and "'숲'" in messages[0]
        and "'water'" not in messages[0]
    )
    assert "overlay.legend.json" in messages[0] and str(path) in messages[0]
    assert boxes == []  # nothing was drawn as a missing glyph
    assert path.stat().st_size > 5_000
    table = json.loads(legend_path(path).read_text(encoding="utf-8"))
    assert [(row["id"], row["label"], row["colour"]) for row in table] == [
        (0, "森林", "#1f77b4"),
        (1, "water", "#ff7f0e"),
        (2, "숲", "#2ca02c"),
    ]
    assert [row["share"] for row in table] == pytest.approx([0.5, 0.25, 0.25])
    check = check_glyphs(LABELS, fonts=["DejaVu Sans"])
    entries, by_id = legend_entries(LABELS, [2700, 1350, 1350], check.can_draw)
    assert by_id and entries == ["0 (50.0%)", "1 water (25.0%)", "2 (25.0%)"]
    assert all(entry.isascii() for entry in entries)


def test_an_installed_cjk_font_draws_the_labels(tmp_path, caplog):
    coverage = dict(_font_coverage())
    has_cjk = [name for name, points in coverage.items() if {ord(c) for c in "森林숲"} <= points]
    if not has_cjk:
        pytest.skip(
            "no installed font has the glyphs of 森林 and 숲 (Debian: apt-get install fonts-wqy-microhei or "
            "fonts-noto-cjk); the fallback without one is tested above"
        )
    check = check_glyphs(LABELS)
    assert check.ok and check.undrawable == [] and check.families[0] == "DejaVu Sans"
    assert set(check.families[1:]) & set(has_cjk)
    path = tmp_path / "overlay.png"
    legend_path(path).write_text("[]")  # left by an earlier run without the font: removed
    boxes = _render(path, caplog)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING] and boxes == []
    assert not legend_path(path).exists()
    entries, by_id = legend_entries(LABELS, [2700, 1350, 1350], check.can_draw)
    assert not by_id and entries == ["森林 (50.0%)", "water (25.0%)", "숲 (25.0%)"]
