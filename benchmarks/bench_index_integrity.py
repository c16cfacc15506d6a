"""What checking an index's files costs when it is loaded (`index.integrity`), at 10^6 entries.

An index folder of ``--entries`` random unit vectors (``--dim``, exact ``Flat`` FAISS index, as `build.finalize`
writes it) with a metadata table of the usual columns is written to ``--folder``; then, ``--rounds`` times each and
alternating: `RSMCLIPIndex.load` of it with the checksums recorded (size + SHA-256 tree checksum of ``index.faiss``
and ``metadata.parquet``, checked before they are read) and without (an index written before checksums), and the
checksum of each file alone. The page cache is warm after the first round (the files were just written), so the
figures are the CPU's cost of hashing, the part the check adds to a load that reads the same bytes anyway.

    python benchmarks/bench_index_integrity.py --entries 1000000 --json-out results/index_integrity.json

About 4 GiB of disk and 5 GiB of memory at 10^6 x 512; a minute to write, seconds per round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import provenance  # noqa: E402


def write_index(folder: Path, entries: int, dim: int) -> None:
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modeling_rsmclip.index.integrity import describe_files

    folder.mkdir(parents=True, exist_ok=True)
    index = faiss.IndexFlatIP(dim)
    rng = np.random.default_rng(0)
    for start in range(0, entries, 1 << 16):
        block = rng.standard_normal((min(1 << 16, entries - start), dim), dtype=np.float32)
        index.add(block / np.linalg.norm(block, axis=1, keepdims=True))
    faiss.write_index(index, str(folder / "index.faiss"))
    ids = [f"archive/tile-{i:07d}.jpg" for i in range(entries)]
    table = pa.table(
        {
            "id": ids,
            "path": [f"/data/{i}" for i in ids],
            "content_hash": [f"{i:064x}" for i in range(entries)],
            "label": pa.array(["label"] * entries).dictionary_encode(),
            "source": ["archive"] * entries,
        }
    )
    pq.write_table(table, folder / "metadata.parquet")
    manifest = {
        "format": "rsmclip-index",
        "format_version": 1,
        "model": {"name_or_path": "demo", "fingerprint": "0" * 64},
        "embedding": {"dim": dim},
        "index": {"type": "flat", "factory": "Flat", "search_params": {}, "file": "index.faiss"},
        "counts": {"items": entries},
        "files": describe_files(folder, ["index.faiss", "metadata.parquet"]),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/rsmclip-bench/integrity-index"))
    parser.add_argument("--keep", action="store_true", help="keep the index folder")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    from modeling_rsmclip.index import RSMCLIPIndex
    from modeling_rsmclip.index.integrity import file_checksum

    t = time.perf_counter()
    write_index(args.folder, args.entries, args.dim)
    written = time.perf_counter() - t
    manifest_path = args.folder / "manifest.json"
    checked = manifest_path.read_text()
    legacy = json.dumps({k: v for k, v in json.loads(checked).items() if k != "files"})
    times: dict[str, list[float]] = {"load_checked_s": [], "load_unchecked_s": [], "checksum_faiss_s": [],
                                     "checksum_metadata_s": []}  # fmt: skip
    for _ in range(args.rounds):
        for key, text in (("load_checked_s", checked), ("load_unchecked_s", legacy)):
            manifest_path.write_text(text)
            t = time.perf_counter()
            RSMCLIPIndex.load(args.folder)
            times[key].append(time.perf_counter() - t)
        for key, name in (("checksum_faiss_s", "index.faiss"), ("checksum_metadata_s", "metadata.parquet")):
            t = time.perf_counter()
            file_checksum(args.folder / name)
            times[key].append(time.perf_counter() - t)
    sizes = {name: (args.folder / name).stat().st_size for name in ("index.faiss", "metadata.parquet")}
    median = {key: float(np.median(values)) for key, values in times.items()}
    result = {
        "entries": args.entries,
        "dim": args.dim,
        "file_bytes": sizes,
        "write_s": written,
        **times,
        "median": median,
        "check_overhead_s": median["load_checked_s"] - median["load_unchecked_s"],
        "checksum_gb_per_s": sum(sizes.values())
        / 1e9
        / (median["checksum_faiss_s"] + median["checksum_metadata_s"]),
        "provenance": provenance(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(args.folder)


if __name__ == "__main__":
    main()
