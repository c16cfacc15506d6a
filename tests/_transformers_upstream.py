"""transformers' own common test mixins, taken at test time from the source distribution of the installed release.

`pip download --no-deps --no-binary :all: transformers==<installed>` fetches the sdist from PyPI into a cache
folder (`$RSMCLIP_TRANSFORMERS_TESTS_CACHE`, default `~/.cache/rsmclip/transformers-tests`); its top-level
`tests/*.py` (`test_modeling_common.py`, `test_configuration_common.py`, ...) are extracted into an importable
package `transformers_upstream_tests_<version>`. Nothing of transformers' test code is kept in this repository.

The sdist ships the top-level test modules but not the sub-folders three of them import at module level. Those
three names get minimal stand-ins, written into the cache beside the extracted files, each equivalent to what
the real module contributes to the tests run here:
- `generation.test_utils.GenerationTesterMixin`: only used in an `issubclass` check; RSMCLIPModel does not generate
  (`can_generate()` is False), so its tester must not inherit it: an empty class.
- `utils.test_configuration_utils.config_common_kwargs`: only read by `ConfigTester.check_config_arguments_init`,
  which returns before reading it for composite configs (`sub_configs`), as RSMCLIPConfig is: an empty dict.
- `exporters.test_export.ExportTesterMixin`: the base class of `ModelTesterMixin` that adds the torch.export /
  ONNX export tests. Its source is not in any PyPI artefact; an empty base class leaves those export tests out
  (the package's own ONNX export has its own tests).
"""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

STAND_INS = {
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
}


def cache_root() -> Path:
    default = Path.home() / ".cache" / "rsmclip" / "transformers-tests"
    return Path(os.environ.get("RSMCLIP_TRANSFORMERS_TESTS_CACHE", default))


def _download_sdist(version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(into),
        f"transformers=={version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    found = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download the transformers {version} source distribution from PyPI "
            f"({' '.join(command)}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return found[0]


def _extract_tests(sdist: Path, package_dir: Path) -> None:
    with tarfile.open(sdist) as archive:
        members = [
            m
            for m in archive.getmembers()
            if m.isfile() and len(Path(m.name).parts) == 3 and Path(m.name).parts[1] == "tests"
        ]
        if not any(Path(m.name).name == "test_modeling_common.py" for m in members):
            raise RuntimeError(f"{sdist} has no tests/test_modeling_common.py")
        for member in members:
            source = archive.extractfile(member)
            assert source is not None
            (package_dir / Path(member.name).name).write_bytes(source.read())
    (package_dir / "__init__.py").write_text("", encoding="utf-8")
    for relative, text in STAND_INS.items():
        path = package_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").write_text("", encoding="utf-8")
        path.write_text(text, encoding="utf-8")


def upstream_tests_dir(version: str | None = None) -> Path:
    """The folder holding the importable package of the sdist's test modules (downloaded once, then cached)."""
    version = version or transformers.__version__
    root = cache_root()
    name = "transformers_upstream_tests_" + version.replace(".", "_").replace("-", "_").replace("+", "_")
    holder = root / version
    package_dir = holder / name
    if (package_dir / "test_modeling_common.py").is_file():
        return holder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several test runs may share the cache
        if not (package_dir / "test_modeling_common.py").is_file():
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                sdist = _download_sdist(version, Path(tmp))
                staging = Path(tmp) / name
                staging.mkdir()
                _extract_tests(sdist, staging)
                shutil.rmtree(holder, ignore_errors=True)
                holder.mkdir(parents=True)
                os.replace(staging, package_dir)
    return holder


def import_upstream(module: str):
    """Import `<module>` (e.g. `test_modeling_common`) from the installed release's test modules."""
    holder = upstream_tests_dir()
    if str(holder) not in sys.path:
        sys.path.insert(0, str(holder))
    package = next(p.name for p in holder.iterdir() if p.name.startswith("transformers_upstream_tests_"))
    return importlib.import_module(f"{package}.{module}")
