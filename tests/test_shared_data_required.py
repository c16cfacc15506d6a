"""A run without the real data may not pass silently in CI: the tests that need `../shared/data` skip without it,
except where `$RSMCLIP_REQUIRE_SHARED_DATA` is set (`.ci/run` sets it), where they fail."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _shared_data import REQUIRE_ENV, need_shared_data

REPO = Path(__file__).resolve().parents[1]


def test_missing_real_data_skips_or_fails_when_required(tmp_path, monkeypatch):
    monkeypatch.setenv("RSMCLIP_SHARED_DATA", str(tmp_path / "absent"))
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="real data not found"):
        need_shared_data("ucm-captions", "dataset.json")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_ENV} is set"):
        need_shared_data("ucm-captions", "dataset.json")
    (tmp_path / "absent" / "ucm-captions").mkdir(parents=True)
    (tmp_path / "absent" / "ucm-captions" / "dataset.json").write_text("{}", encoding="utf-8")
    assert (
        need_shared_data("ucm-captions", "dataset.json")
        == tmp_path / "absent" / "ucm-captions" / "dataset.json"
    )


def test_ci_requires_the_real_data():
    """`.ci/run` exports the variable before it runs the suite (checked by bash itself, not by reading the text)."""
    script = REPO / ".ci" / "run"
    done = subprocess.run(
        ["bash", "-c", f"grep -E '^export {REQUIRE_ENV}=' {script} | head -1 > /dev/null && "
         f"eval \"$(grep -E '^export {REQUIRE_ENV}=' {script})\" && echo \"${REQUIRE_ENV}\""],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "1", (done.stdout, done.stderr)
