"""`rsmclip app`: the sub-command is registered, and a user error is one `error:` line with exit status 2."""

from __future__ import annotations

import pytest

from modeling_rsmclip.cli import build_parser, main


def test_app_subcommand_is_registered():
    args = build_parser().parse_args(["app", "--port", "9999", "--concurrency", "3"])
    assert (args.command, args.port, args.concurrency, args.host, args.model, args.index) == (
        "app",
        9999,
        3,
        "127.0.0.1",
        None,
        None,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["app", "--concurrency", "0"], "error: --concurrency must be at least 1, got 0"),
        (["app", "--port", "70000"], "error: --port must be between 1 and 65535, got 70000"),
    ],
)
def test_bad_options_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [message]


def test_missing_index_exits_2(tmp_path, capsys):
    pytest.importorskip("gradio", reason='the web app needs Gradio: pip install "rsmclip[app]"')
    pytest.importorskip("faiss", reason='archive search needs faiss: pip install "rsmclip[index]"')
    assert main(["app", "--index", str(tmp_path / "nowhere")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: index folder not found: {tmp_path / 'nowhere'}"]
