"""Publishing the app as a Hugging Face Space, and the app's own process hygiene.

`rsmclip app --write-space DIR` writes a Space: its README settings block, requirements, Git LFS rule and app file
are parsed here, the declared Gradio floor is checked against the keywords the app passes, and the written Space
is started as a Space starts it (`python app.py`): it listens on 127.0.0.1 only, and the work folder it leaves when
killed is removed by the next start.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from modeling_rsmclip.app.workdir import PREFIX, make_work_dir, remove_stale_work_dirs
from modeling_rsmclip.cli import main

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md must open with a YAML block between --- lines"
    return yaml.safe_load(match.group(1))


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    pytest.importorskip("gradio", reason='the web app needs Gradio: pip install "rsmclip[app]"')
    folder = tmp_path_factory.mktemp("space") / "rs-m-clip"
    assert main(["app", "--write-space", str(folder)]) == 0
    return folder


def test_space_readme_settings(space):
    import gradio

    settings = _front_matter((space / "README.md").read_text(encoding="utf-8"))
    assert settings["sdk"] == "gradio"
    assert settings["sdk_version"] == gradio.__version__  # the version the tests ran against
    assert (space / settings["app_file"]).is_file() and settings["app_file"] == "app.py"
    assert isinstance(settings["title"], str) and settings["title"]
    assert settings["license"] == PYPROJECT["project"]["license"]["text"].lower()
    assert len(settings["short_description"]) <= 60  # the Hub's limit
    assert str(settings["python_version"]).startswith("3.")


def test_space_requirements_are_the_declared_ones_and_installed_here(space):
    lines = [line for line in (space / "requirements.txt").read_text().splitlines() if line.strip()]
    requirements = [Requirement(line) for line in lines]  # each line parses as a pip requirement
    declared = [Requirement(spec) for spec in PYPROJECT["project"]["dependencies"]]
    declared += [Requirement(spec) for spec in PYPROJECT["project"]["optional-dependencies"]["app"]]
    expected = {r.name.lower() for r in declared} - {"gradio"}  # the sdk_version installs Gradio
    assert {r.name.lower() for r in requirements} == expected
    for requirement in requirements:  # names pip resolves: installed here, in a version the line accepts
        version = metadata.version(requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


def test_space_weights_go_to_git_lfs(space):
    rules = [line.split() for line in (space / ".gitattributes").read_text().splitlines() if line.strip()]
    lfs = [rule[0] for rule in rules if "filter=lfs" in rule and "-text" in rule]
    weights = [p for p in space.rglob("*") if p.is_file() and p.stat().st_size > 10 * 2**20]
    assert weights, "the bundled demo model's weights are over 10 MB"
    for path in weights + list(space.rglob("*.safetensors")):
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in lfs), path
    assert (space / "modeling_rsmclip" / "demo_model" / "model.safetensors").is_file()
    assert (space / "examples" / "sample" / "ucm" / "dataset.json").is_file()
    assert not list(space.rglob("__pycache__"))


def test_write_space_refuses_a_folder_with_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["app", "--write-space", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: the Space folder must be new or empty"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_declared_gradio_floor_takes_every_keyword_the_app_passes():
    gradio = pytest.importorskip("gradio", reason='the web app needs Gradio: pip install "rsmclip[app]"')
    from modeling_rsmclip.app.space import GRADIO_FLOOR
    from modeling_rsmclip.app.ui import launch_kwargs

    (spec,) = [s for s in PYPROJECT["project"]["optional-dependencies"]["app"] if s.startswith("gradio")]
    floor = Requirement(spec).specifier
    assert str(floor) == f">={GRADIO_FLOOR}" and Version(gradio.__version__) in floor

    class _Limits:
        max_upload_bytes = 1

    class _Service:  # launch_kwargs reads only these two
        limits = _Limits()

        def allowed_paths(self):
            return []

    launch = inspect.signature(gradio.Blocks.launch).parameters
    missing = set(launch_kwargs(_Service(), server_name="127.0.0.1", server_port=1)) - set(launch)
    assert not missing
    assert {"analytics_enabled", "delete_cache", "title"} <= set(inspect.signature(gradio.Blocks).parameters)


# ------------------------------------------------------------------------------------------ the work folder
def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_work_folders_of_dead_processes_are_removed_at_start(tmp_path):
    stale = tmp_path / f"{PREFIX}{_dead_pid()}-abc123"
    (stale / "search-1-1").mkdir(parents=True)
    (stale / "search-1-1" / "results.csv").write_text("rank\n")
    alive = tmp_path / f"{PREFIX}{os.getppid()}-def456"  # a running process's folder
    alive.mkdir()
    other = tmp_path / f"{PREFIX}notes"  # not made by the app
    other.mkdir()
    folder = make_work_dir(tmp_path)
    assert not stale.exists() and alive.is_dir() and other.is_dir()
    assert folder.parent == tmp_path and folder.name.startswith(f"{PREFIX}{os.getpid()}-")
    assert remove_stale_work_dirs(tmp_path) == []  # its own folder is never stale


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_addresses(pid: int, port: int) -> set[str]:
    import psutil

    connections = psutil.Process(pid).net_connections(kind="inet")
    return {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


@pytest.mark.slow
def test_the_space_app_listens_on_localhost_and_a_killed_server_leaves_no_folder(space, tmp_path):
    """`python app.py` in the written Space: 127.0.0.1 only; SIGKILL leaves its work folder; the next start
    removes it."""
    pytest.importorskip("faiss", reason='archive search needs faiss: pip install "rsmclip[index]"')
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_SERVER_NAME", "PYTHONPATH")}
    env.update(TMPDIR=str(temp), GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(space))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=space,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not _listening_addresses(server.pid, port):
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the Space app did not start in 240 s"
            time.sleep(0.5)
        assert _listening_addresses(server.pid, port) == {"127.0.0.1"}
        (left,) = [p for p in temp.iterdir() if p.name.startswith(f"{PREFIX}{server.pid}-")]
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        server.stderr.close()
    assert left.is_dir()  # a killed process cannot clean up
    make_work_dir(temp)  # what the next start does first
    assert not left.exists()
