"""`rsmclip serve` as a user starts it: one `error:` line for a bad start, and a server in its own process that binds
to 127.0.0.1 and answers until it is stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the HTTP API needs FastAPI: pip install "rsmclip[serve]"')
pytest.importorskip("faiss", reason='archive search needs faiss: pip install "rsmclip[index]"')
import httpx  # noqa: E402
import psutil  # noqa: E402

from modeling_rsmclip.app.cli import free_port  # noqa: E402
from modeling_rsmclip.cli import main  # noqa: E402
from modeling_rsmclip.index import RSMCLIPIndex, build_index  # noqa: E402
from modeling_rsmclip.serve.cli import default_threads  # noqa: E402
from modeling_rsmclip.testing import sample_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    images = tmp_path_factory.mktemp("images")
    for name in ("191.jpg", "391.jpg", "791.jpg", "1591.jpg", "2091.jpg"):
        (images / name).symlink_to(sample_dir() / "ucm" / "images" / name)
    out = tmp_path_factory.mktemp("index") / "small"
    build_index("demo", out, [images], num_workers=0, progress=False)
    return out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "{missing}"], "no index at"),
        (["serve", "{index}", "--port", "0"], "--port must be between 1 and 65535"),
        (["serve", "{index}", "--max-batch", "0"], "--max-batch must be at least 1"),
        (["serve", "{index}", "--timeout", "0"], "--timeout must be a positive number"),
        (["serve", "{index}", "--threads", "0"], "--threads must be at least 1"),
        (["serve", "{index}", "--backend", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_bad_starts_are_one_error_line(small_index, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "nothing", index=small_index) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_serve_answers_on_loopback_until_stopped(small_index):
    port = free_port()
    command = [sys.executable, "-m", "modeling_rsmclip.cli", "serve", str(small_index), "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.stdout.read()[-3000:]
            try:
                health = httpx.get(url + "/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start within 180 s"
                time.sleep(0.5)
        assert health.status_code == 200 and health.json()["index"]["items"] == 5
        assert health.json()["threads"] == default_threads()  # the cores but one (at least one)
        listening = {
            c.laddr.ip
            for c in psutil.Process(process.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}
        got = httpx.get(url + "/search", params={"query": "uma praia", "top_k": 3}, timeout=60).json()
        expected = RSMCLIPIndex.load(small_index, model="demo").search("uma praia", top_k=3)
        assert [r["id"] for r in got["results"]] == [r["id"] for r in expected]
        assert httpx.get(url + "/docs", timeout=10).status_code == 200
        assert "/search" in httpx.get(url + "/openapi.json", timeout=10).json()["paths"]
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    # uvicorn shuts down gracefully on SIGTERM, then exits by the same signal
    log = process.stdout.read()
    assert process.returncode in (0, -signal.SIGTERM), log[-3000:]
    assert "Finished server process" in log and "Uvicorn running on http://127.0.0.1:" in log
