"""Query an index folder: `RSMCLIPIndex.load(path).search(query)` for the CLI, Python, the pipeline and the app.

A query (text in any of the model's languages, or an image) is embedded with the index's model, checked against
the manifest's fingerprint, and searched in the FAISS index, optionally restricted by a metadata filter
(``where``, see `parse_where`) and a lon/lat bounding box (``bbox``). Scores are cosine similarities.
"""

from __future__ import annotations

import ast
import io
import json
import os
import tokenize
from pathlib import Path
from typing import Any

import numpy as np

from ..inference import autocast_precision, check_backend, load_encoder, load_model, model_name
from .common import apply_search_params, index_fingerprint, require_index_dependencies
from .geoparquet import GEOMETRY_COLUMN
from .geoparquet import counter_clockwise as _counter_clockwise


class IndexModelMismatchError(ValueError):
    """The model (or processor) given to query an index is not the one that built it."""


# ----------------------------------------------------------------------------------------------------- where
_COMPARE = {
    ast.Eq: "__eq__",
    ast.NotEq: "__ne__",
    ast.Lt: "__lt__",
    ast.LtE: "__le__",
    ast.Gt: "__gt__",
    ast.GtE: "__ge__",
}
_STRING_METHODS = {"contains": "match_substring", "startswith": "starts_with", "endswith": "ends_with"}


def _pandas_precedence(text: str) -> str:
    """``&``, ``|``, ``~`` as ``and``, ``or``, ``not``: as in `pandas.DataFrame.query`, they bind more loosely than
    comparisons, so ``a == 1 | b == 2`` means ``(a == 1) or (b == 2)``."""
    words = {"&": "and", "|": "or", "~": "not"}
    return " ".join(
        words.get(tok.string, tok.string) if tok.type == tokenize.OP else tok.string
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.string.strip()
    )


MAX_WHERE_DEPTH = 50
MAX_WHERE_CONDITIONS = 1000
MAX_WHERE_LENGTH = 100_000


def _check_where_size(tree: ast.AST, shown: str) -> None:
    """Bound a filter's nesting and size before it is converted (recursively) and evaluated by Arrow: a filter
    nested thousands deep would exhaust the interpreter's stack. Literal lists (``in [...]``) count as one value."""
    stack, conditions = [(tree, 0)], 0
    while stack:
        node, depth = stack.pop()
        if depth > MAX_WHERE_DEPTH:
            raise ValueError(
                f"--where {shown!r} is nested more than {MAX_WHERE_DEPTH} levels deep; simplify it"
            )
        if isinstance(node, ast.Compare | ast.Call):
            conditions += 1
            if conditions > MAX_WHERE_CONDITIONS:
                raise ValueError(
                    f"--where {shown!r} has more than {MAX_WHERE_CONDITIONS} conditions; simplify it"
                )
        if isinstance(node, ast.List | ast.Tuple | ast.Set | ast.Constant):
            continue
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _balanced(parts: list[Any], conjunction: bool) -> Any:
    """``a & b & c & d`` as ``(a & b) & (c & d)``: the expression's depth grows with the log of its length."""
    while len(parts) > 1:
        pairs = [
            (parts[i] & parts[i + 1]) if conjunction else (parts[i] | parts[i + 1])
            for i in range(0, len(parts) - 1, 2)
        ]
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def parse_where(text: str, columns: list[str]) -> Any:
    """A `pyarrow.compute` expression from a pandas-``query``-style filter over the metadata columns.

    Grammar (Python syntax, nothing is executed): comparisons ``label == "beach"``, ``valid_fraction >= 0.9``,
    chained ``0.5 < valid_fraction <= 1``; membership ``label in ["beach", "river"]`` / ``not in``; missing values
    ``crs is None`` / ``is not None``; string tests ``path.str.contains("2021")``, ``.str.startswith(...)``,
    ``.str.endswith(...)``; combined with ``and``, ``or``, ``not`` (or ``&``, ``|``, ``~``, which
    here, as in `pandas.DataFrame.query`, bind more loosely than comparisons) and parentheses.
    An unknown column or construct is a ValueError naming it; so is a filter nested more than `MAX_WHERE_DEPTH`
    levels deep or with more than `MAX_WHERE_CONDITIONS` conditions.
    """
    import pyarrow.compute as pc

    shown = text if len(text) <= 200 else text[:200] + "..."
    if len(text) > MAX_WHERE_LENGTH:
        raise ValueError(f"--where {shown!r} is {len(text)} characters long; at most {MAX_WHERE_LENGTH}")
    try:
        tree = ast.parse(_pandas_precedence(text.strip()), mode="eval")
    except (SyntaxError, tokenize.TokenError) as err:
        raise ValueError(f"--where {shown!r} is not a valid expression: {getattr(err, 'msg', err)}") from err
    except (RecursionError, MemoryError) as err:
        raise ValueError(
            f"--where {shown!r} is nested too deeply to read; at most {MAX_WHERE_DEPTH} levels"
        ) from err
    _check_where_size(tree, shown)

    def column(node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            if node.id not in columns:
                raise ValueError(f"--where: unknown column {node.id!r} (columns: {', '.join(columns)})")
            return pc.field(node.id)
        raise ValueError(f"--where: expected a column name, got {ast.unparse(node)!r}")

    def literal(node: ast.AST) -> Any:
        try:
            return ast.literal_eval(node)
        except ValueError as err:
            raise ValueError(f"--where: expected a literal value, got {ast.unparse(node)!r}") from err

    def operand(node: ast.AST) -> Any:
        return column(node) if isinstance(node, ast.Name) else pc.scalar(literal(node))

    def convert(node: ast.AST) -> Any:
        if isinstance(node, ast.BoolOp):
            return _balanced([convert(v) for v in node.values], isinstance(node.op, ast.And))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.Invert):
            return ~convert(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd | ast.BitOr):
            left, right = convert(node.left), convert(node.right)
            return (left & right) if isinstance(node.op, ast.BitAnd) else (left | right)
        if isinstance(node, ast.Compare):
            out, left = None, node.left
            for op, right in zip(node.ops, node.comparators):
                if isinstance(op, ast.In | ast.NotIn):
                    values = literal(right)
                    if not isinstance(values, list | tuple | set):
                        raise ValueError(f"--where: `in` needs a list, got {ast.unparse(right)!r}")
                    if values:
                        part = column(left).isin(list(values))
                    else:  # `in []` holds for no row (Arrow cannot type an empty value set)
                        part = column(left).is_null() & ~column(left).is_null()
                    part = ~part if isinstance(op, ast.NotIn) else part
                elif isinstance(op, ast.Is | ast.IsNot):
                    if literal(right) is not None:
                        raise ValueError("--where: `is` only compares with None")
                    part = column(left).is_null()
                    part = ~part if isinstance(op, ast.IsNot) else part
                elif type(op) in _COMPARE:
                    part = getattr(operand(left), _COMPARE[type(op)])(operand(right))
                else:
                    raise ValueError(f"--where: unsupported operator in {ast.unparse(node)!r}")
                out = part if out is None else out & part
                left = right
            return out
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            target = node.func.value
            if (
                method in _STRING_METHODS
                and isinstance(target, ast.Attribute)
                and target.attr == "str"
                and len(node.args) == 1
            ):
                pattern = literal(node.args[0])
                return getattr(pc, _STRING_METHODS[method])(column(target.value), pattern)
        if isinstance(node, ast.Name | ast.Constant):
            raise ValueError(f"--where: {ast.unparse(node)!r} is not a condition (compare it with a value)")
        raise ValueError(f"--where: unsupported expression {ast.unparse(node)!r}")

    return convert(tree.body)


# ------------------------------------------------------------------------------------------------------ index
COSINE_BOUND = 1.5
"""Scores of L2-normalised vectors are cosines in [-1, 1]; product quantisation approximates a vector within a few
percent of its norm, so a score beyond this bound means the index's vectors are not what was written."""


def _query_text(query: Any, what: str = "the query") -> str:
    """A query text checked: non-empty, and valid Unicode (a command-line argument that was not UTF-8 arrives with
    lone surrogates, which no tokenizer takes); UTF-8 bytes are decoded."""
    if isinstance(query, bytes):
        try:
            query = query.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{what} is not UTF-8 text (byte {err.start}: {query[err.start : err.start + 4]!r})"
            ) from err
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"{what} must be a non-empty text or an image, got {query!r}")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as err:
        shown = query.encode("utf-8", "backslashreplace").decode("utf-8")
        raise ValueError(
            f"{what} {shown!r} is not UTF-8 text (position {err.start}): give it in UTF-8"
        ) from err
    return query


def _stamp(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _open_files(path: Path) -> tuple[dict[str, Any], Any, Any]:
    """The manifest, FAISS index and metadata of an index folder, each checked (`index.integrity`): the manifest's
    keys and paths, the files' sizes and checksums, FAISS's and Arrow's errors named with the file, the counts."""
    from .integrity import IndexFileError, check_index_files, inside, read_faiss, read_parquet

    manifest_path = path / "manifest.json"
    manifest = check_index_files(path)
    faiss_path = inside(path, manifest["index"]["file"], "FAISS index")
    if manifest["index"].get("type") == "ivfpq-disk":  # lists on disk, exact re-ranking (`index.ondisk`)
        from .ondisk import open_checked

        index = open_checked(path, manifest["index"])
    else:
        index = read_faiss(faiss_path)
        try:
            apply_search_params(index, manifest["index"].get("search_params", {}))
        except (RuntimeError, AttributeError, TypeError) as err:
            raise IndexFileError(f"{manifest_path}: damaged search parameters ({err})") from err
    metadata = read_parquet(inside(path, "metadata.parquet", "metadata"))
    missing = {"id", "path"} - set(metadata.column_names)
    if missing:
        raise IndexFileError(f"{path / 'metadata.parquet'}: damaged, no {', '.join(sorted(missing))} column")
    if not (index.ntotal == metadata.num_rows == manifest["counts"]["items"]):
        raise IndexFileError(
            f"{path}: index ({index.ntotal}), metadata ({metadata.num_rows}) and manifest "
            f"({manifest['counts']['items']}) disagree: an interrupted update? Rerun the last `rsmclip index` "
            "command, or `rsmclip index verify INDEX --repair`"
        )
    return manifest, index, metadata


class RSMCLIPIndex:
    """An index folder loaded for search (see `build` for the layout)."""

    def __init__(self, path: Path, manifest: dict[str, Any], index: Any, metadata: Any) -> None:
        self.path = path
        self.manifest = manifest
        self.index = index
        self.metadata = metadata
        self._rows: list[dict[str, Any]] | None = None
        self._bboxes: np.ndarray | None = None
        self._model = None
        self._processor = None
        self._embedder = None
        self._backend = "torch"
        self._precision = "fp32"

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: Any = None,
        processor: Any = None,
        *,
        backend: str = "torch",
        precision: str = "fp32",
    ) -> RSMCLIPIndex:
        """Open an index folder. The model that embeds queries is ``model`` (path, Hub id or loaded model with its
        ``processor``) or, when None, the manifest's, loaded at the first query. A model whose fingerprint differs
        from the manifest's is refused (`IndexModelMismatchError`). The FAISS file and the metadata are checked
        against the sizes and checksums the manifest records (`index.integrity`); a damaged, missing or outside
        file is an `IndexFileError` naming it.

        ``backend`` ("torch" or "onnx") and ``precision`` ("fp32", "bf16"/"fp16" autocast, "int8") say how queries
        are embedded, whatever the index was built with: the fingerprint is the source weights', so int8 or ONNX
        queries against an fp32 index are allowed (int8 query embeddings have cosine > 0.995 to fp32 ones, which
        can swap near-tied results)."""
        check_backend(backend, precision)
        require_index_dependencies()
        from .integrity import IndexFileError

        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            hint = (
                " (an unfinished build: rerun the same `rsmclip index build` to finish it)"
                if (path / "runs").is_dir()
                else ""
            )
            raise FileNotFoundError(f"no index at {path}: {manifest_path} not found{hint}")
        stamp = _stamp(manifest_path)
        try:
            manifest, index, metadata = _open_files(path)
        except IndexFileError:
            # An `index add` finishing meanwhile replaces the files, then the manifest: read them again once.
            if _stamp(manifest_path) == stamp:
                raise
            manifest, index, metadata = _open_files(path)
        out = cls(path, manifest, index, metadata)
        out._backend, out._precision = backend, precision
        if model is not None:
            out.set_model(model, processor, backend=backend, precision=precision)
        return out

    def set_model(
        self,
        model: Any,
        processor: Any = None,
        *,
        backend: str | None = None,
        precision: str | None = None,
    ) -> None:
        """Use ``model`` for queries, after checking its fingerprint against the manifest; ``backend`` and
        ``precision`` as in `load` (default: those given to `load`)."""
        backend = backend or self._backend
        precision = precision or self._precision
        wrapped = check_backend(backend, precision)
        name = model_name(model) if not isinstance(model, str | os.PathLike) else str(model)
        model, processor = load_model(model, processor, device="cpu" if wrapped else None)
        fingerprint = index_fingerprint(model, processor, self.manifest)
        expected = self.manifest["model"]["fingerprint"]
        if fingerprint != expected:
            raise IndexModelMismatchError(
                f"the index {self.path} was built with model {self.manifest['model']['name_or_path']!r} "
                f"(fingerprint {expected[:12]}); the query model {name!r} has fingerprint {fingerprint[:12]}: "
                "query it with the same model and processor, or rebuild the index with this one"
            )
        encoder = load_encoder(model, backend, precision, processor)
        self._model, self._processor = model, processor
        self._backend, self._precision = backend, precision
        self._use(encoder, fingerprint, "cpu" if wrapped else None, autocast_precision(backend, precision))

    def adopt(self, model: Any, processor: Any, encoder: Any, fingerprint: str) -> None:
        """Query with ``encoder`` (an `inference.load_encoder` encoder of ``model``), given the model's
        ``fingerprint`` computed on its fp32 weights before they were quantised in place (as `index build` does
        for a model it loaded). The fingerprint must be the manifest's."""
        expected = self.manifest["model"]["fingerprint"]
        if fingerprint != expected:
            raise IndexModelMismatchError(
                f"the index {self.path} was built with fingerprint {expected[:12]}, not {fingerprint[:12]}"
            )
        self._model, self._processor = model, processor
        self._use_encoder(encoder, fingerprint)

    def set_encoder(self, encoder: Any) -> None:
        """Embed queries with ``encoder``: an `inference.load_encoder` encoder of the model already given to `load`
        / `set_model` (its fingerprint was checked then). For a caller that quantises that model in place after
        opening the index (the web app), so no second copy of the weights is kept. The encoder's origin is not
        checked again: hashing every weight would take seconds at full size."""
        if self._embedder is None:
            raise ValueError(
                "give the index its model first: RSMCLIPIndex.load(..., model=...) or set_model(...)"
            )
        self._use_encoder(encoder, self._embedder.model_key)

    def _use_encoder(self, encoder: Any, fingerprint: str) -> None:
        backend, precision = getattr(encoder, "backend", None), getattr(encoder, "precision", None)
        if backend is None or precision is None:
            raise TypeError(
                f"{type(encoder).__name__} is not an inference.load_encoder encoder (no backend / precision)"
            )
        check_backend(backend, precision)
        self._backend, self._precision = backend, precision
        self._use(encoder, fingerprint, "cpu", "fp32")

    def _use(self, encoder: Any, fingerprint: str, device: str | None, precision: str) -> None:
        """Embed queries with ``encoder`` (the model, or a CPU backend's encoder of it) one at a time."""
        from ..evaluation.embed import Embedder

        self._embedder = Embedder(
            encoder,
            self._processor,
            device=device,
            precision=precision,
            batch_size=1,
            num_workers=0,
            cache_dir=None,
            show_progress=False,
            model_key=fingerprint,
        )

    def _ensure_model(self) -> Any:
        if self._embedder is None:
            self.set_model(self.manifest["model"]["name_or_path"])
        return self._embedder

    # --------------------------------------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_georeferenced(self) -> bool:
        return bool(self.manifest.get("georeferenced"))

    @property
    def columns(self) -> list[str]:
        return list(self.metadata.column_names)

    # ------------------------------------------------------------------------------------------------ queries
    def embed_query(self, query: Any, image: bool = False) -> np.ndarray:
        """The L2-normalised embedding (1 x dim float32) of a text, or of an image (PIL image, array, or a path
        with ``image=True``)."""
        from PIL import Image

        embedder = self._ensure_model()
        if isinstance(query, Image.Image | np.ndarray) or image:
            from ..processing_rsmclip import load_image_file, to_rgb

            if isinstance(query, str | os.PathLike):
                query = load_image_file(query)
            from ..inference.families import image_inputs

            return embedder.embed_pixels(image_inputs(embedder.image_processor, [to_rgb(query)])).numpy()
        return embedder.embed_texts([_query_text(query)]).numpy()

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """The L2-normalised embeddings (n x dim float32) of several text queries in one forward pass, padded to the
        longest (for a server that batches concurrent queries). Each row equals `embed_query` of its text within
        float tolerance (padding is masked out of the mean pooling)."""
        import copy

        texts = list(texts)
        texts = [_query_text(text, f"query {i}") for i, text in enumerate(texts)]
        embedder = copy.copy(self._ensure_model())  # a batch size of its own: the shared one stays 1
        embedder.batch_size = max(1, len(texts))
        return embedder.embed_texts(texts).numpy()

    def search(
        self,
        query: Any,
        top_k: int = 10,
        *,
        image: bool = False,
        where: str | None = None,
        bbox: tuple[float, float, float, float] | list[float] | None = None,
    ) -> list[dict[str, Any]]:
        """The ``top_k`` best matches of ``query`` as dicts: ``rank`` (1-based), ``score`` (cosine), ``id``,
        ``path``, ``window``, ``bbox`` (lon/lat or None) and the other metadata columns (``label``, ``source``,
        ...). ``where`` filters on metadata columns (`parse_where`), ``bbox`` keeps items whose lon/lat bounding
        box intersects ``(west, south, east, north)``."""
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        allowed = self.selection(where, bbox)  # filter errors before the model is loaded
        return self._search(self.embed_query(query, image=image), top_k, allowed)

    def selection(self, where: str | None = None, bbox: Any = None) -> np.ndarray | None:
        """Row ids allowed by the filters (None: no filter)."""
        import pyarrow as pa

        mask = None
        if where:
            expr = parse_where(where, self.columns)
            numbered = self.metadata.append_column("__row", pa.array(np.arange(self.metadata.num_rows)))
            try:
                rows = numbered.filter(expr)["__row"].to_numpy()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
                raise ValueError(f"--where {where!r}: {err}") from err
            mask = np.zeros(self.metadata.num_rows, dtype=bool)
            mask[rows] = True
        if bbox is not None:
            west, south, east, north = (float(v) for v in bbox)
            if west > east or south > north:
                raise ValueError(
                    f"bbox must be west,south,east,north with west <= east, south <= north, got {bbox}"
                )
            boxes = self._bbox_array()
            inside = (
                (boxes[:, 0] <= east)
                & (boxes[:, 2] >= west)
                & (boxes[:, 1] <= north)
                & (boxes[:, 3] >= south)
            )
            mask = inside if mask is None else mask & inside
        return None if mask is None else np.flatnonzero(mask)

    def _bbox_array(self) -> np.ndarray:
        if self._bboxes is None:
            boxes = np.full((self.metadata.num_rows, 4), np.nan)
            if "bbox" in self.columns:
                for i, value in enumerate(self.metadata["bbox"].to_pylist()):
                    if value is not None:
                        boxes[i] = value
            self._bboxes = boxes
        return self._bboxes

    def search_embedding(
        self, embedding: np.ndarray, top_k: int = 10, *, where: str | None = None, bbox: Any = None
    ) -> list[dict[str, Any]]:
        """`search` with an already computed query embedding (1 x dim or dim)."""

        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        return self._search(embedding, top_k, self.selection(where, bbox))

    def _search(self, embedding: np.ndarray, top_k: int, allowed: np.ndarray | None) -> list[dict[str, Any]]:
        import faiss

        query = np.ascontiguousarray(np.asarray(embedding, dtype=np.float32).reshape(1, -1))
        if query.shape[1] != self.index.d:
            raise ValueError(f"query embedding has {query.shape[1]} dimensions, the index {self.index.d}")
        limit = len(self) if allowed is None else len(allowed)
        k = min(int(top_k), limit)
        if k == 0:
            return []
        params = None
        if allowed is not None:
            params = self._search_parameters(faiss.IDSelectorBatch(allowed.astype(np.int64)))
        scores, ids = self.index.search(query, k, params=params)
        if allowed is not None and (ids[0] < 0).any():
            ivf = self._ivf()
            if ivf is not None:  # a selective filter may miss the probed lists: probe them all
                params = self._search_parameters(
                    faiss.IDSelectorBatch(allowed.astype(np.int64)), nprobe=ivf.nlist
                )
                scores, ids = self.index.search(query, k, params=params)
        self._check_hits(scores[0], ids[0])
        return [
            self._result(rank, float(s), int(i))
            for rank, (s, i) in enumerate(zip(scores[0], ids[0]), 1)
            if i >= 0
        ]

    def _check_hits(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Scores of unit vectors are cosines and ids are rows: anything else comes from a damaged FAISS file (one
        written before checksums were recorded, or changed in memory), never shown as a result."""
        found = ids >= 0
        bad = ~np.isfinite(scores[found]) | (np.abs(scores[found]) > COSINE_BOUND)
        if bad.any() or (ids[found] >= self.metadata.num_rows).any():
            from .integrity import IndexFileError

            what = (
                f"the score {scores[found][bad][0]:.4g}, which no cosine can be"
                if bad.any()
                else f"the row {int(ids[found].max())} of {self.metadata.num_rows}"
            )
            raise IndexFileError(
                f"{self.path / self.manifest['index']['file']}: damaged: a search returned {what}; "
                f"`rsmclip index verify {self.path} --repair` rebuilds it from the shards"
            )

    def _ivf(self) -> Any:
        import faiss

        if hasattr(self.index, "ivf"):  # `ondisk.OnDiskIndex`
            return self.index.ivf
        try:
            return faiss.extract_index_ivf(self.index)
        except RuntimeError:
            return None

    def _search_parameters(self, selector: Any, nprobe: int | None = None) -> Any:
        import faiss

        ivf = self._ivf()
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(nprobe or ivf.nprobe))
        if isinstance(self.index, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=selector, efSearch=int(self.index.hnsw.efSearch))
        return faiss.SearchParameters(sel=selector)

    def row(self, i: int) -> dict[str, Any]:
        if self._rows is None:
            self._rows = self.metadata.to_pylist()
        return self._rows[i]

    def _result(self, rank: int, score: float, i: int) -> dict[str, Any]:
        row = dict(self.row(i))
        row.pop(GEOMETRY_COLUMN, None)  # the GeoParquet WKB of footprint_lonlat
        footprint = row.pop("footprint_lonlat", None)
        ring = row.pop("footprint", None)
        out = {
            "rank": rank,
            "score": score,
            "id": row.pop("id"),
            "path": row.pop("path"),
            "window": row.pop("window", None),
            "bbox": row.pop("bbox", None),
        }
        out.update(row)
        out["footprint"] = json.loads(ring) if ring else None
        out["footprint_lonlat"] = json.loads(footprint) if footprint else None
        return out


# ---------------------------------------------------------------------------------------------------- GeoJSON
def to_geojson(results: list[dict[str, Any]]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (RFC 7946, lon/lat) of the results' footprints, with the score, rank, id, path,
    label and the other scalar metadata as properties; a result without a footprint gets a null geometry. A hit
    from a STAC item links to it (``links``: rel ``via``, the item's own href)."""
    features = []
    for result in results:
        polygon = result.get("footprint_lonlat")
        if polygon is None and result.get("bbox") is not None:
            west, south, east, north = result["bbox"]
            polygon = [[[west, south], [east, south], [east, north], [west, north], [west, south]]]
        if polygon is not None:
            polygon = [_counter_clockwise(ring) for ring in polygon]
        geometry = {"type": "Polygon", "coordinates": polygon} if polygon is not None else None
        properties = {k: v for k, v in result.items() if _json_scalar(v)}
        if result.get("window") is not None:
            properties["window"] = ",".join(str(v) for v in result["window"])
        feature: dict[str, Any] = {"type": "Feature", "geometry": geometry, "properties": properties}
        if result.get("bbox") is not None:
            feature["bbox"] = list(result["bbox"])
        if result.get("stac_item_href"):
            feature["links"] = [
                {
                    "rel": "via",
                    "href": result["stac_item_href"],
                    "type": "application/geo+json",
                    "title": f"STAC item {result.get('stac_item')}",
                }
            ]
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def _json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
