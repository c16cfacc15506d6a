"""Shared fixtures: the real data beside the checkout, and a tiny random model with a real tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from _shared_data import need_shared_data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (or `$RSMCLIP_SHARED_DATA`): the real UCM-Captions and RSSCN7-mini data. Missing, the test
    skips, or fails where `$RSMCLIP_REQUIRE_SHARED_DATA` is set (CI: `.ci/run`)."""
    return need_shared_data("ucm-captions", "dataset.json").parents[1]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(model, processor): the `tiny` preset, random weights (seed 0), tokenizer trained on the bundled captions."""
    import modeling_rsmclip  # noqa: F401
    from modeling_rsmclip.testing import make_tiny_model_and_processor

    return make_tiny_model_and_processor(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_saved(tiny, tmp_path_factory) -> Path:
    """The tiny model and processor saved with `save_pretrained` into a folder."""
    model, processor = tiny
    out = tmp_path_factory.mktemp("tiny-saved")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def sample_images():
    """A few of the bundled UCM images as PIL images, with their file names."""
    from PIL import Image

    from modeling_rsmclip.testing import sample_dir

    files = sorted((sample_dir() / "ucm" / "images").glob("*.jpg"), key=lambda p: int(p.stem))[:6]
    return [Image.open(f).convert("RGB") for f in files], files


def pytest_configure(config):
    # Markers used by transformers' common test modules (tests/test_transformers_common.py imports them).
    for marker in (
        "slow",
        "accelerate_tests",
        "flash_attn_test",
        "flash_attn_3_test",
        "flash_attn_4_test",
        "torch_compile_test",
    ):
        config.addinivalue_line("markers", f"{marker}: used by transformers' common model tests")


# Servers and data for the cloud-archive tests (shared by every module that asks for them).
from _cloud_fixtures import (  # noqa: E402, F401
    cloud_archive,
    cloud_server,
    range_server,
    stac_api,
    stac_item_dicts,
    static_catalog,
)
