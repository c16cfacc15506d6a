"""Fault injection on an index folder: every file of it is damaged in turn (truncated, zeroed, its header's bytes
flipped, bytes in its middle flipped, deleted; the metadata's rows reordered) and every command that reads the
folder (`RSMCLIPIndex.load` + search, `rsmclip search`, `rsmclip index add`, `rsmclip index verify`, `rsmclip serve`
loading its index) must answer with one `error:` line naming the damaged file, or the documented recovery, never a
traceback and never a result from damaged data. Also: paths a manifest names stay inside the folder, an index
written before checksums, what `index build` could not list, and bad values (`--where` nesting, `--shard-size`,
IVF lists, non-UTF-8 queries) as one error line.

Commands run in-process through `modeling_rsmclip.cli.main`; a few run as real processes to show that nothing but
the one line reaches the terminal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("pyarrow")

from _index_fixtures import shard_embeddings  # noqa: E402

from modeling_rsmclip.cli import main as cli_main  # noqa: E402
from modeling_rsmclip.testing import sample_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DAMAGES = ("truncate", "zero", "flip", "flip-middle", "delete")
# What reads which file: search (and serve) the manifest, the FAISS file and the metadata; `index add` and
# `index verify` every file but report.json, which they write again from the shards (the documented recovery).
READ_BY_SEARCH = {"manifest.json", "index.faiss", "metadata.parquet"}
REWRITTEN = {"report.json"}


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero":
        path.write_bytes(bytes(len(data)))
    elif how == "flip":  # the header
        path.write_bytes(bytes(b ^ 0xFF for b in data[:16]) + data[16:])
    elif how == "flip-middle":  # an intact header, damaged content (vectors, rows)
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :])
    elif how == "delete":
        path.unlink()
    else:  # pragma: no cover
        raise ValueError(how)


def reorder_rows(path: Path) -> None:
    """A valid Parquet file with the same rows in another order (every hit would carry another image's id)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    pq.write_table(table.take(np.roll(np.arange(table.num_rows), 1)), path)


def one_error_line(capsys, status: int) -> str:
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1, (status, captured.err[-3000:])
    assert "Traceback" not in captured.err + captured.out
    return errors[0]


def run(argv: list) -> int:
    try:
        return cli_main([str(a) for a in argv])
    except SystemExit as exit_:
        return int(exit_.code)


# ------------------------------------------------------------------------------------------------- the index
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """An index of the 42 bundled UC Merced images, built with the demo model in two shards."""
    from modeling_rsmclip.index import build_index

    out = tmp_path_factory.mktemp("faults") / "index"
    build_index("demo", out, [sample_dir() / "ucm" / "images"], shard_size=24, num_workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def extra(tmp_path_factory) -> Path:
    """Two images to add."""
    folder = tmp_path_factory.mktemp("extra") / "extra"
    folder.mkdir()
    for name in ("field/b001.jpg", "forest/e001.jpg"):
        shutil.copy(sample_dir() / "rsscn7" / name, folder / Path(name).name)
    return folder


def index_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_the_matrix_covers_every_file_of_the_index(built):
    files = index_files(built)
    assert {"manifest.json", "index.faiss", "metadata.parquet", "report.json", "runs/run-000.json"} <= set(
        files
    )
    assert sum(f.startswith("shards/") and f.endswith(".parquet") for f in files) == 2
    manifest = json.loads((built / "manifest.json").read_text())
    # Every file an index is read from has its size and checksum on record.
    recorded = set(manifest["files"])
    assert recorded == {
        f for f in files if f not in {"manifest.json", "report.json"} and not f.startswith("runs/")
    }
    for name, entry in manifest["files"].items():
        assert entry["size"] == (built / name).stat().st_size


def exact_ranking(folder: Path, query: np.ndarray, k: int) -> list[str]:
    """The reference: the shards' embeddings (float16, re-normalised) ranked by numpy, and their ids."""
    ids, emb = shard_embeddings(folder)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return [ids[i] for i in np.argsort(-(emb @ query), kind="stable")[:k]]


def damaged_copy(built: Path, tmp_path: Path, name: str, how: str) -> tuple[Path, Path]:
    folder = tmp_path / "index"
    shutil.copytree(built, folder)
    target = folder / name
    if how == "reorder":
        reorder_rows(target)
    else:
        damage(target, how)
    return folder, target


CASES = [
    (name, how)
    for name in (
        "manifest.json",
        "index.faiss",
        "metadata.parquet",
        "report.json",
        "runs/run-000.json",
        "shards/shard-r000-000000.parquet",
        "shards/shard-r000-000001.report.json",
    )
    for how in DAMAGES
] + [("metadata.parquet", "reorder"), ("shards/shard-r000-000001.parquet", "reorder")]


@pytest.mark.parametrize(("name", "how"), CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_a_damaged_index_file_is_named_by_every_command(name, how, built, extra, tmp_path, capsys):
    from modeling_rsmclip.index import RSMCLIPIndex
    from modeling_rsmclip.index.integrity import IndexFileError

    folder, target = damaged_copy(built, tmp_path, name, how)
    ids, emb = shard_embeddings(built)
    query = emb[5] / np.linalg.norm(emb[5])

    # Python: load and search.
    if name in READ_BY_SEARCH:
        with pytest.raises((IndexFileError, FileNotFoundError)) as err:
            RSMCLIPIndex.load(folder).search_embedding(query, top_k=5)
        assert str(target) in str(err.value), err.value
        status = run(["search", folder, "forest", "--top-k", "3"])
        assert str(target) in one_error_line(capsys, status)
    else:  # search does not read it: the results are the exact ranking of the intact vectors
        hits = RSMCLIPIndex.load(folder).search_embedding(query, top_k=5)
        assert [h["id"] for h in hits] == exact_ranking(built, query, 5)

    # `index verify`: the damaged file named (report.json is not checked: every add and repair rewrites it).
    status = run(["index", "verify", folder])
    if name in REWRITTEN:
        assert status == 0
        assert " ok" in capsys.readouterr().out
    else:
        line = one_error_line(capsys, status)
        assert str(target) in line or (
            how == "delete" and name == "manifest.json" and "manifest.json" in line
        )

    # `index add` reads every file but report.json: refused naming it, before embedding anything.
    status = run(["index", "add", folder, extra, "--quiet", "--num-workers", "0"])
    if name in REWRITTEN:
        assert status == 0
        capsys.readouterr()
        assert len(RSMCLIPIndex.load(folder)) == len(ids) + 2
        assert json.loads((folder / "report.json").read_text())["unreadable"] == []
    else:
        line = one_error_line(capsys, status)
        assert str(target) in line or str(folder / "manifest.json") in line, line
        assert not list((folder / "shards").glob("shard-r001-*"))


@pytest.mark.parametrize("name", sorted(READ_BY_SEARCH))
def test_serve_loading_a_damaged_index_names_the_file(name, built, tmp_path, capsys):
    from modeling_rsmclip.serve.service import SearchService

    folder, target = damaged_copy(built, tmp_path, name, "flip-middle")
    with pytest.raises(ValueError) as err:
        SearchService.load(folder)
    assert str(target) in str(err.value)


def real_process(argv: list, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RSMCLIP_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "modeling_rsmclip.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    ("command", "name", "how"),
    [
        ("search", "index.faiss", "flip-middle"),
        ("search", "metadata.parquet", "reorder"),
        ("serve", "index.faiss", "truncate"),
        ("add", "shards/shard-r000-000001.parquet", "reorder"),
    ],
)
def test_a_real_process_prints_only_the_error_line(command, name, how, built, extra, tmp_path):
    folder, target = damaged_copy(built, tmp_path, name, how)
    argv = {
        "search": ["search", folder, "forest"],
        "serve": ["serve", folder, "--port", "8765"],  # refused before it binds
        "add": ["index", "add", folder, extra, "--quiet"],
    }[command]
    proc = real_process(argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(target) in lines[0], proc.stderr[-2000:]
    assert proc.stdout == ""


# ------------------------------------------------------------------------------------------------- recovery
@pytest.mark.parametrize(("name", "how"), [("index.faiss", "flip-middle"), ("metadata.parquet", "reorder"),
                                           ("index.faiss", "delete"), ("metadata.parquet", "truncate")])  # fmt: skip
def test_verify_repair_rebuilds_the_index_from_its_shards(name, how, built, tmp_path, capsys):
    from modeling_rsmclip.index import RSMCLIPIndex

    folder, _ = damaged_copy(built, tmp_path, name, how)
    assert run(["index", "verify", folder, "--repair"]) == 0
    assert "repaired" in capsys.readouterr().out
    ids, emb = shard_embeddings(built)
    index = RSMCLIPIndex.load(folder)
    original = RSMCLIPIndex.load(built)
    assert index.metadata["id"].to_pylist() == original.metadata["id"].to_pylist() == ids
    for row in (0, 17, 41):
        query = emb[row] / np.linalg.norm(emb[row])
        got, want = index.search_embedding(query, 10), original.search_embedding(query, 10)
        assert [h["id"] for h in got] == [h["id"] for h in want] == exact_ranking(built, query, 10)
        np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-6)
    assert (
        json.loads((folder / "manifest.json").read_text())["files"]
        == json.loads((built / "manifest.json").read_text())["files"]
    )


def test_a_damaged_shard_cannot_be_repaired_and_says_so(built, tmp_path, capsys):
    folder, target = damaged_copy(built, tmp_path, "shards/shard-r000-000000.parquet", "flip-middle")
    line = one_error_line(capsys, run(["index", "verify", folder, "--repair"]))
    assert str(target) in line and "rebuild" in line


def test_an_index_without_checksums_loads_with_a_warning_and_verify_records_them(
    built, tmp_path, capsys, caplog
):
    """An index written before checksums: it loads (with a warning saying what to run); `index verify` compares it
    with its shards, which finds damaged vectors and reordered rows that no checksum is there to catch, and
    `--record` writes the checksums once it is intact."""
    from modeling_rsmclip.index import RSMCLIPIndex

    folder = tmp_path / "old"
    shutil.copytree(built, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        assert len(RSMCLIPIndex.load(folder)) == 42
    assert "index verify" in caplog.text and "--record" in caplog.text

    pristine = (folder / "index.faiss").read_bytes(), (folder / "metadata.parquet").read_bytes()
    damage(folder / "index.faiss", "flip-middle")
    line = one_error_line(capsys, run(["index", "verify", folder]))
    assert str(folder / "index.faiss") in line and "differ from the shards" in line
    (folder / "index.faiss").write_bytes(pristine[0])
    reorder_rows(folder / "metadata.parquet")
    line = one_error_line(capsys, run(["index", "verify", folder]))
    assert str(folder / "metadata.parquet") in line and "reordered" in line
    (folder / "metadata.parquet").write_bytes(pristine[1])

    assert run(["index", "verify", folder, "--record"]) == 0
    assert "checksums recorded" in capsys.readouterr().out
    recorded = json.loads((folder / "manifest.json").read_text())["files"]
    assert recorded == json.loads((built / "manifest.json").read_text())["files"]


def test_vectors_damaged_in_an_unchecked_index_are_never_shown_as_cosines(built, tmp_path):
    """Without checksums, a search whose scores no cosine can have (the 7e37 of damaged float bytes) is refused."""
    import faiss

    from modeling_rsmclip.index import RSMCLIPIndex
    from modeling_rsmclip.index.integrity import IndexFileError

    folder = tmp_path / "old"
    shutil.copytree(built, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    index = faiss.read_index(str(folder / "index.faiss"))
    vectors = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    vectors[3, :4] = 7e37
    faiss.write_index(index, str(folder / "index.faiss"))
    _, emb = shard_embeddings(built)
    query = emb[3] / np.linalg.norm(emb[3])
    with pytest.raises(IndexFileError, match="no cosine"):
        RSMCLIPIndex.load(folder).search_embedding(query.astype(np.float32), 5)


# ------------------------------------------------------------------------------------------------ containment
@pytest.mark.parametrize(
    "where", ["../other/index.faiss", "ABSOLUTE", "link-out", "files-entry", "metadata-link"]
)
def test_paths_in_a_manifest_stay_inside_the_index_folder(where, built, tmp_path, capsys):
    folder = tmp_path / "index"
    shutil.copytree(built, folder)
    other = tmp_path / "other"
    shutil.copytree(built, other)
    manifest = json.loads((folder / "manifest.json").read_text())
    if where == "ABSOLUTE":
        manifest["index"]["file"] = str(other / "index.faiss")
    elif where == "link-out":
        (folder / "index.faiss").unlink()
        (folder / "index.faiss").symlink_to(other / "index.faiss")
    elif where == "metadata-link":  # an index without checksums: the metadata file itself must stay inside
        del manifest["files"]
        (folder / "metadata.parquet").unlink()
        (folder / "metadata.parquet").symlink_to(other / "metadata.parquet")
    elif where == "files-entry":
        manifest["files"]["../other/metadata.parquet"] = manifest["files"]["metadata.parquet"]
    else:
        manifest["index"]["file"] = where
    (folder / "manifest.json").write_text(json.dumps(manifest))
    commands = [
        ["search", folder, "forest"],
        ["index", "verify", folder],
        ["index", "add", folder, sample_dir()],
    ]
    for argv in commands:
        line = one_error_line(capsys, run(argv))
        assert "outside the index folder" in line and str(folder / "manifest.json") in line, line


# ---------------------------------------------------------------------------------------- listing is reported
def test_index_build_lists_every_entry_it_did_not_index(tmp_path, capsys):
    source = tmp_path / "images"
    (source / "sub").mkdir(parents=True)
    for i, image in enumerate(sorted((sample_dir() / "ucm" / "images").glob("*.jpg"))[:3]):
        shutil.copy(image, source / ("sub" if i else ".") / image.name)
    (source / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (source / "self.jpg").symlink_to(source / "self.jpg")
    (source / "sub" / "up").symlink_to(source, target_is_directory=True)  # a folder loop
    (source / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (source / "notes.txt").write_text("not an image: not listed, as documented")
    out = tmp_path / "index"
    assert run(["index", "build", source, "-o", out, "--quiet", "--num-workers", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    reasons = {Path(e["path"]).name: e["error"] for e in report["unreadable"]}
    assert set(reasons) == {"broken.jpg", "self.jpg", "up", "corrupt.png"}, reasons
    assert "broken symlink" in reasons["broken.jpg"] and "missing.jpg" in reasons["broken.jpg"]
    assert reasons["self.jpg"] == "symlink loop" and "symlink loop" in reasons["up"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["items"] == 3 and manifest["counts"]["unreadable"] == 4
    assert "unreadable 4" in capsys.readouterr().out


def test_an_unreadable_folder_is_listed_with_its_reason(tmp_path):
    """As another user than root (root reads every folder), through the listing `index build` uses."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="rsmclip-perm-"))
    try:
        os.chmod(base, 0o755)
        source = base / "images"
        (source / "closed").mkdir(parents=True)
        first, second = sorted((sample_dir() / "ucm" / "images").glob("*.jpg"))[:2]
        shutil.copy(first, source / first.name)
        shutil.copy(second, source / "closed" / second.name)
        for p in (source, source / first.name):
            os.chmod(p, 0o755)
        os.chmod(source / "closed", 0o000)
        code = (
            "import json, os, sys\n"
            "from modeling_rsmclip.index.sources import SourceOptions, collect_items\n"
            "if os.geteuid() == 0:\n"
            "    os.setgid(65534); os.setuid(65534)\n"
            "skipped = []\n"
            f"items = collect_items([{str(source)!r}], SourceOptions(), skipped)\n"
            "print(json.dumps([[i.id for i in items], skipped]))\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        ids, skipped = json.loads(proc.stdout)
        assert ids == [f"images/{first.name}"]
        assert [(Path(s["path"]).name, s["error"]) for s in skipped] == [
            ("closed", "unreadable folder (Permission denied)")
        ]
    finally:
        os.chmod(base / "images" / "closed", 0o755)
        shutil.rmtree(base)


# ------------------------------------------------------------------------------------------------ bad values
def test_bad_values_are_one_error_line(built, tmp_path, capsys):
    deep = "not " * 5000 + "label == 'x'"
    parens = "(" * 300 + "label == 'x'" + ")" * 300
    wide = " or ".join(f"label == '{i}'" for i in range(2000))
    for where, expected in ((deep, "nested"), (parens, "nested"), (wide, "conditions")):
        line = one_error_line(capsys, run(["search", built, "forest", "--where", where]))
        assert expected in line and len(line) < 600
    source = sample_dir() / "ucm" / "images"
    for value in ("0", "-3"):
        line = one_error_line(
            capsys, run(["index", "build", source, "-o", tmp_path / f"s{value}", "--shard-size", value])
        )
        assert "shard size" in line and value in line
    line = one_error_line(
        capsys,
        run(["index", "build", source, "-o", tmp_path / "ivf", "--index-type", "IVF1024,Flat", "--quiet"]),
    )
    assert "IVF1024" in line and "42 images" in line
    assert not (tmp_path / "ivf" / "runs").exists()  # refused before anything is planned or embedded
    line = one_error_line(
        capsys, run(["index", "build", source, "-o", tmp_path / "bad", "--index-type", "IVF12,Nope"])
    )
    assert "IVF12,Nope" in line


def test_a_non_utf8_query_is_refused_in_python(built):
    from modeling_rsmclip.index import RSMCLIPIndex

    index = RSMCLIPIndex.load(built)
    for query in ("caf\udce9", b"caf\xe9"):
        with pytest.raises(ValueError, match="not UTF-8"):
            index.search(query)
    with pytest.raises(ValueError, match="query 1 .*not UTF-8"):
        index.embed_queries(["forest", "caf\udce9"])
    assert index.search(b"forest", top_k=1)[0]["rank"] == 1  # UTF-8 bytes are text


def test_a_damaged_cache_of_the_bundled_sample_index_is_rebuilt(tmp_path, monkeypatch, caplog):
    """The bundled samples' index is a cache: damaged (or written before checksums), it is built again."""
    from modeling_rsmclip.index import bundled_sample_index

    monkeypatch.setenv("RSMCLIP_INDEX_CACHE", str(tmp_path))
    first = bundled_sample_index(progress=False)
    recorded = json.loads((first.path / "manifest.json").read_text())["files"]
    damage(first.path / "index.faiss", "flip-middle")
    with caplog.at_level("WARNING"):
        again = bundled_sample_index(progress=False)
    assert "rebuilding the bundled sample index" in caplog.text and "index.faiss" in caplog.text
    assert again.path == first.path and len(again) == 49
    assert (
        json.loads((again.path / "manifest.json").read_text())["files"]["index.faiss"]
        == recorded["index.faiss"]
    )


@pytest.mark.parametrize("how", ["truncate", "zero", "flip", "delete"])
@pytest.mark.parametrize("name", ["index.faiss", "metadata.parquet"])
def test_without_checksums_a_damaged_file_is_still_one_error_naming_it(name, how, built, tmp_path):
    """An index written before checksums: FAISS's and Arrow's own errors on the damaged file, caught where it is
    opened, name it."""
    from modeling_rsmclip.index import RSMCLIPIndex
    from modeling_rsmclip.index.integrity import IndexFileError

    folder, target = damaged_copy(built, tmp_path, name, how)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError) as err:
        RSMCLIPIndex.load(folder)
    assert str(target) in str(err.value)
