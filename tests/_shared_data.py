"""The real data beside the checkout (`../shared/data`, or `$RSMCLIP_SHARED_DATA`), for the tests that need it.

Without it those tests skip and say why, except where `$RSMCLIP_REQUIRE_SHARED_DATA` is set (`.ci/run` sets it, CI
always has the data): there a missing folder fails the test, so a run in which every one of them skipped cannot
pass. Tests that need only a few images use the bundled sample (`examples/sample`) and never skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modeling_rsmclip.testing import shared_data_dir

REQUIRE_ENV = "RSMCLIP_REQUIRE_SHARED_DATA"


def need_shared_data(*parts: str) -> Path:
    """``shared_data_dir() / parts``: skip the test when it is missing, or fail it when `REQUIRE_ENV` is set."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        message = f"real data not found at {path}: set RSMCLIP_SHARED_DATA to the shared/data folder"
        if os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0"):
            pytest.fail(f"{message} (${REQUIRE_ENV} is set: the real data is required here)", pytrace=False)
        pytest.skip(message)
    return path
