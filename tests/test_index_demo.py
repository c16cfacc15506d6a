"""`rsmclip demo` shows archive search over the cached index of the bundled samples, offline; the same index is what
`bundled_sample_index()` gives the app."""

from __future__ import annotations

import pytest

pytest.importorskip("faiss")
pytest.importorskip("pyarrow")


def test_demo_archive_search_in_several_languages(tmp_path, monkeypatch, capsys) -> None:
    from modeling_rsmclip.demo import ARCHIVE_QUERIES, archive_search_demo
    from modeling_rsmclip.index import bundled_sample_index

    monkeypatch.setenv("RSMCLIP_INDEX_CACHE", str(tmp_path))
    found = archive_search_demo()
    out = capsys.readouterr().out
    assert "Archive search: a persistent index of 49 images" in out
    assert set(ARCHIVE_QUERIES.values()) < set(found)
    # The bundled demo model finds the right scene class first for these queries.
    assert found[ARCHIVE_QUERIES["zh"]][0] == "airplane"
    assert found[ARCHIVE_QUERIES["fr"]][0] == "beach"
    assert found[ARCHIVE_QUERIES["ru"]][0] == "forest"
    filtered = [v for k, v in found.items() if "source == 'rsscn7'" in k][0]
    assert filtered[0] == "parking"
    # Built once, then loaded from the user cache.
    cached = list(tmp_path.glob("sample-*/manifest.json"))
    assert len(cached) == 1
    index = bundled_sample_index()
    assert index.path == cached[0].parent and len(index) == 49
