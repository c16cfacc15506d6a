"""The page: `build_demo(service) -> gr.Blocks`. Layout and wiring only; the work is done by `AppService`."""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any

from .service import AppService, InputError, band_preset_choices, language_choices
from .ui_defaults import DEFAULT_CONCURRENCY, DEFAULT_QUEUE_SIZE

logger = logging.getLogger(__name__)

try:
    import gradio as gr
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError('the web app needs Gradio: pip install "rsmclip[app]"') from error

# Only system fonts: the page must not fetch anything (offline machines, Spaces without outbound network).
_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"]
_MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]

CSS = """
.rsmclip-map { max-width: 100%; height: auto; border: 1px solid #d0d5db; border-radius: 6px; }
.rsmclip-legend span.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin: 0 0.3em 0 0.8em;
  vertical-align: middle; border: 1px solid #555; }
"""


def theme() -> Any:
    return gr.themes.Default(font=_FONTS, font_mono=_MONO)


def _text(message: object) -> str:
    """gr.Error renders HTML: escape what the user typed (quotes are harmless in text, and kept readable)."""
    return html.escape(str(message), quote=False)


def _page_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the service's `InputError` into a message in the page (gr.Error); other failures say so briefly."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as error:
            raise gr.Error(_text(error), title="Cannot do that", print_exception=False) from None
        except gr.Error:
            raise
        except Exception as error:
            logger.exception("request failed")
            raise gr.Error(
                _text(f"internal error ({error.__class__.__name__}): {error}"),
                title="Internal error",
                print_exception=False,
            ) from None

    return wrapper


def _caption(row: dict[str, Any]) -> str:
    """A gallery caption: rank, score, label, and the hit's id (relative to its source; a tile's names its window)."""
    bits = [f"#{row.get('rank')}", f"{float(row.get('score', 0.0)):.3f}"]
    if row.get("label"):
        bits.append(str(row["label"]))
    bits.append(str(row.get("id", "")))
    return "  ·  ".join(bits)


TABLE_HEADERS = ["rank", "score", "label", "id", "tile"]


def _table(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """The results table: `service.shown_row` rows (no server path); ``tile`` is the window of a scene's tile."""
    return [
        [
            row.get("rank"),
            round(float(row.get("score", 0.0)), 4),
            row.get("label") or "",
            row.get("id", ""),
            row.get("tile", ""),
        ]
        for row in rows
    ]


def _legend_html(legend: list[tuple[str, str]]) -> str:
    items = "".join(
        f'<span class="swatch" style="background:{colour}"></span>{html.escape(label)}'
        for label, colour in legend
    )
    return f'<div class="rsmclip-legend">{items}</div>'


def build_demo(
    service: AppService, *, concurrency: int = DEFAULT_CONCURRENCY, max_queue: int = DEFAULT_QUEUE_SIZE
):
    """The app's `gr.Blocks`, queued: at most `concurrency` requests run at once, `max_queue` wait."""
    languages = language_choices()
    presets = band_preset_choices()
    with gr.Blocks(title="RS-M-CLIP", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# RS-M-CLIP · multilingual search and maps of remote-sensing imagery")
        gr.Markdown(service.describe(), elem_id="model-info")
        with gr.Tab("Search", id="search"):
            _search_tab(service, languages)
        with gr.Tab("Classify", id="classify"):
            _classify_tab(service, languages, presets)
        with gr.Tab("Segment", id="segment"):
            _segment_tab(service, languages, presets)
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    return demo


def _search_outputs(service: AppService, result: Any, query_kind: str) -> tuple[Any, ...]:
    """What the Search tab shows of a `SearchResult`: status, gallery, map, table and the download files."""
    gallery = [
        (gallery_image(service, source), _caption(row))
        for source, row in zip(result.source_rows, result.rows)
    ]
    if query_kind == "text":
        status = f"{len(result.rows)} results · query language: {result.language}"
    else:
        status = f"{len(result.rows)} results for the uploaded image"
    files = [p for p in (result.csv_path, result.geojson_path) if p]
    map_html = result.map_svg or "<p>The index is not georeferenced: no map.</p>"
    return status, gallery, map_html, _table(result.rows), files


def _search_tab(service: AppService, languages: list[tuple[str, str]]) -> None:
    @_page_errors
    def search_text(query: str, language: str, top_k: float):
        return _search_outputs(service, service.search(query, language, int(top_k)), "text")

    @_page_errors
    def search_image(image: str | None, top_k: float):
        return _search_outputs(service, service.search_by_image(image, int(top_k)), "image")

    with gr.Row():
        query = gr.Textbox(
            label="Query (any of the ten languages)",
            placeholder="e.g. muitos aviões estacionados no aeroporto",
            elem_id="search-query",
            scale=4,
        )
        search_language = gr.Dropdown(languages, value="auto", label="Language", scale=1)
        top_k = gr.Slider(1, service.limits.max_top_k, value=8, step=1, label="Results", scale=1)
    search_button = gr.Button("Search", variant="primary", elem_id="search-button")
    with gr.Accordion("Search with an image instead", open=False):
        query_image = gr.File(label="Query image", file_types=["image", ".tif", ".tiff"], type="filepath")
        image_button = gr.Button("Search by image", elem_id="image-search-button")
    search_status = gr.Markdown(elem_id="search-status")
    gallery = gr.Gallery(label="Top results", columns=4, height="auto", elem_id="search-gallery")
    with gr.Row():
        footprints = gr.HTML(label="Footprints", elem_id="search-map")
        results_table = gr.Dataframe(headers=TABLE_HEADERS, label="Results", interactive=False)
    downloads = gr.File(label="Download results (CSV, GeoJSON)", file_count="multiple")
    outputs = [search_status, gallery, footprints, results_table, downloads]
    search_button.click(search_text, [query, search_language, top_k], outputs, api_name="search")
    query.submit(search_text, [query, search_language, top_k], outputs, api_name=False)
    image_button.click(search_image, [query_image, top_k], outputs, api_name="search_image")


def _classify_tab(
    service: AppService, languages: list[tuple[str, str]], presets: list[tuple[str, str]]
) -> None:
    @_page_errors
    def classify(
        upload: str | None, labels: str, language: str, tile_size: float | None = 224, preset: str = "auto"
    ):
        result = service.classify(upload, labels, language, 224 if tile_size is None else tile_size, preset)
        status = f"Prompt language: {result.language}"
        files: list[str] = []
        if result.scene:
            status += (
                f" · scene of {result.scene['tiles']} tiles of {result.scene['tile_size']} px"
                f" ({result.scene['skipped']} mostly nodata, skipped) · bars: share of tiles per class"
            )
            files = result.scene["files"]
        return status, result.as_label_dict(), result.preview, files

    with gr.Row():
        with gr.Column():
            upload = gr.File(
                label="Image or GeoTIFF scene",
                file_types=["image", ".tif", ".tiff"],
                type="filepath",
                elem_id="classify-upload",
            )
            labels = gr.Textbox(
                label="Labels, separated by commas (any language)",
                value="forest, beach, harbor, airplanes, a dense residential area",
                elem_id="classify-labels",
            )
            with gr.Row():
                language = gr.Dropdown(languages, value="auto", label="Label language")
                tile_size = gr.Number(224, label="Tile size (px, GeoTIFF scenes)", precision=0, minimum=16)
                preset = gr.Dropdown(presets, value="auto", label="Bands (GeoTIFF scenes)")
            button = gr.Button("Classify", variant="primary", elem_id="classify-button")
        with gr.Column():
            status = gr.Markdown()
            probabilities = gr.Label(label="Class probabilities", elem_id="classify-probabilities")
            picture = gr.Image(label="Image / tile class map", type="filepath")
            files = gr.File(label="Downloads (GeoTIFF, GeoJSON)", file_count="multiple")
    button.click(
        classify,
        [upload, labels, language, tile_size, preset],
        [status, probabilities, picture, files],
        api_name="classify",
    )


def _segment_tab(
    service: AppService, languages: list[tuple[str, str]], presets: list[tuple[str, str]]
) -> None:
    @_page_errors
    def segment(
        upload: str | None, labels: str, language: str, window: float | None = 224, preset: str = "auto"
    ):
        result = service.segment(upload, labels, language, 224 if window is None else window, preset)
        status = f"Prompt language: {result.language}"
        files = [result.geotiff_path] if result.geotiff_path else []
        return status, result.overlay_path, _legend_html(result.legend), result.class_fractions, files

    with gr.Row():
        with gr.Column():
            upload = gr.File(
                label="Scene (GeoTIFF or image)", file_types=["image", ".tif", ".tiff"], type="filepath"
            )
            labels = gr.Textbox(
                label="Labels, separated by commas (any language)", value="water, forest, buildings, field"
            )
            with gr.Row():
                language = gr.Dropdown(languages, value="auto", label="Label language")
                window = gr.Number(224, label="Window (px)", precision=0, minimum=16)
                preset = gr.Dropdown(presets, value="auto", label="Bands")
            button = gr.Button("Segment", variant="primary", elem_id="segment-button")
        with gr.Column():
            status = gr.Markdown()
            overlay = gr.Image(label="Class map over the scene", type="filepath")
            legend = gr.HTML()
            fractions = gr.Label(label="Share of the scene per class")
            files = gr.File(label="Download the class map (GeoTIFF)", file_count="multiple")
    button.click(
        segment,
        [upload, labels, language, window, preset],
        [status, overlay, legend, fractions, files],
        api_name="segment",
    )


def gallery_image(service: AppService, row: dict[str, Any]) -> Any:
    """What the gallery shows for a result: the file itself, or the tile cut out of a scene."""
    return service.result_thumbnail(row)


def launch_kwargs(service: AppService, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for `demo.launch()`: upload limit, the folders the page may serve, theme and CSS."""
    kwargs = {
        "max_file_size": service.limits.max_upload_bytes,
        "allowed_paths": service.allowed_paths(),
        "theme": theme(),
        "css": CSS,
        "ssr_mode": False,
        "show_error": True,
        "footer_links": ["api"],
    }
    kwargs.update(overrides)
    return kwargs
