"""PNG plots of evaluation results (matplotlib, Agg backend).

Texts in scripts that the installed fonts cannot draw (e.g. Chinese or Korean on a machine with only DejaVu fonts)
do not break a plot: the fonts that have the glyphs are used as fallbacks when they exist (`fonts.check_glyphs`),
and characters that no installed font has are drawn as a placeholder box, with a warning naming the texts affected.
"""

from __future__ import annotations

import logging
import os
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..safe_io import atomic_output  # noqa: E402
from .embed import ImageSource  # noqa: E402
from .fonts import (  # noqa: E402, F401  (font_plan, displayable, PLACEHOLDER, _font_coverage: re-exported)
    PLACEHOLDER,
    _font_coverage,
    check_glyphs,
    displayable,
    font_plan,
)

logger = logging.getLogger(__name__)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------- plots
def plot_language_bars(
    per_language: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    path: str | os.PathLike,
    title: str,
    ylabel: str = "%",
) -> Path:
    """Grouped bars: one group per language, one bar per metric."""
    languages = list(per_language)
    x = np.arange(len(languages))
    width = 0.8 / max(len(metrics), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(languages) * len(metrics) + 2), 4.5))
    annotate = len(languages) * len(metrics) <= 30
    for i, metric in enumerate(metrics):
        values = [float(per_language[lang][metric]) for lang in languages]
        bars = ax.bar(x + (i - (len(metrics) - 1) / 2) * width, values, width, label=metric)
        if annotate:
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, languages)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=min(len(metrics), 7), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_benchmark(
    panels: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: str | os.PathLike,
    hatched: Sequence[str] = (),
    ylabel: str = "%",
) -> Path:
    """Grouped bars of a comparison: one panel per ``{title: {model: {language: value}}}`` entry, one group per
    language, one bar per model (the same colour for a model in every panel); models in ``hatched`` (trained on
    English only) are hatched."""
    titles = list(panels)
    models = list(dict.fromkeys(m for panel in panels.values() for m in panel))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    glyphs = check_glyphs([*titles, *models], what="benchmark labels", where=path)
    width_per = max(
        4.5, 0.35 * max(len({lang for v in p.values() for lang in v}) for p in panels.values()) * len(models)
    )
    with plt.rc_context({"font.family": glyphs.families}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig, axes = plt.subplots(1, len(titles), figsize=(width_per * len(titles) + 1, 4.5), squeeze=False)
        for ax, title in zip(axes[0], titles):
            panel = panels[title]
            languages = list(dict.fromkeys(lang for values in panel.values() for lang in values))
            x = np.arange(len(languages))
            width = 0.8 / max(len(panel), 1)
            for i, model in enumerate(m for m in models if m in panel):
                values = [panel[model].get(lang, np.nan) for lang in languages]
                bars = ax.bar(
                    x + (i - (len(panel) - 1) / 2) * width,
                    values,
                    width,
                    color=colours[model],
                    hatch="//" if model in hatched else None,
                    edgecolor="white" if model in hatched else None,
                    label=displayable(model, glyphs.missing),
                )
                if len(languages) * len(panel) <= 24:
                    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
            ax.set_xticks(x, languages)
            ax.set_ylim(0, 105)
            ax.set_ylabel(ylabel)
            ax.set_title(displayable(title, glyphs.missing), fontsize=10)
            ax.grid(axis="y", alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        for ax in axes[0][1:]:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(label, handle)
        fig.legend(list(seen.values()), list(seen), loc="lower center", ncols=min(len(seen), 5), fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        return _save(fig, path)


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str,
) -> Path:
    """Confusion matrix (rows: true class, columns: predicted), coloured by row share, annotated with counts."""
    counts = np.asarray(confusion, dtype=np.int64)
    support = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, support, out=np.zeros(counts.shape, dtype=np.float64), where=support > 0)
    n = len(class_names)
    glyphs = check_glyphs([*class_names, title], what="class names", where=path)
    families, missing = glyphs.families, glyphs.missing
    size = max(4.5, 0.42 * n + 2.5)
    with plt.rc_context({"font.family": families}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig, ax = plt.subplots(figsize=(size + 1, size))
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        names = [displayable(c, missing) for c in class_names]
        ax.set_xticks(np.arange(n), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(np.arange(n), names, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(displayable(title, missing))
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    if counts[i, j]:
                        colour = "white" if shares[i, j] > 0.5 else "black"
                        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        return _save(fig, path)


def plot_retrieval_grid(
    queries: Sequence[Mapping[str, Any]],
    images: ImageSource,
    path: str | os.PathLike,
    title: str,
    thumbnail: int = 160,
) -> Path:
    """One row per text query: the query (with its language), then its top-K images with their scores.

    Each query is a mapping with ``language``, ``text``, ``target`` (the correct image index, framed in green),
    ``top_indices`` and ``top_scores`` (as made by `retrieval.grid_queries`).
    """
    if not queries:
        raise ValueError("no queries to plot")
    top_k = max(len(q["top_indices"]) for q in queries)
    glyphs = check_glyphs([q["text"] for q in queries] + [title], what="queries", where=path)
    families, missing = glyphs.families, glyphs.missing
    thumbs: dict[int, Any] = {}
    with plt.rc_context({"font.family": families}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig, axes = plt.subplots(
            len(queries), top_k + 1, figsize=(2.0 * (top_k + 1) + 1.0, 2.1 * len(queries)), squeeze=False
        )
        for row, query in enumerate(queries):
            text_ax = axes[row, 0]
            text_ax.axis("off")
            wrapped = textwrap.fill(displayable(query["text"], missing), width=26)
            text_ax.text(
                0.0, 0.5, f"[{query['language']}]\n{wrapped}", va="center", ha="left", fontsize=8, wrap=True
            )
            for col in range(top_k):
                ax = axes[row, col + 1]
                ax.set_xticks([])
                ax.set_yticks([])
                if col >= len(query["top_indices"]):
                    ax.axis("off")
                    continue
                index = int(query["top_indices"][col])
                if index not in thumbs:
                    image = images[index].copy()
                    image.thumbnail((thumbnail, thumbnail))
                    thumbs[index] = np.asarray(image)
                ax.imshow(thumbs[index])
                hit = index == int(query["target"])
                for spine in ax.spines.values():
                    spine.set_color("tab:green" if hit else "lightgray")
                    spine.set_linewidth(4 if hit else 1)
                ax.set_title(f"#{col + 1}  {float(query['top_scores'][col]):.3f}", fontsize=8)
        fig.suptitle(displayable(title, missing))
        fig.tight_layout()
        return _save(fig, path)
