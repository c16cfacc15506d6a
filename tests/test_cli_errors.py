"""One error style across the command lines: a user error prints one `error: ...` line and exits 2, without a
traceback (issue 13, item 10)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_rsmclip.cli import main as cli_main
from modeling_rsmclip.data.cli import main as data_main
from modeling_rsmclip.errors import UserError, one_line, run_command
from modeling_rsmclip.testing import sample_dir
from modeling_rsmclip.training.cli import main as train_main

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(capsys, *fragments: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"eval_{name}_script", REPO / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (
            ["eval-zero-shot", "--model", "m", "--image-folder", "{tmp}/nowhere"],
            ["image folder not found", "nowhere"],
        ),
        (
            ["eval-zero-shot", "--model", "m", "--labels-csv", "{tmp}/labels.csv"],
            ["--labels-csv needs --images"],
        ),
        (
            ["eval-zero-shot", "--model", "m", "--image-folder", "{sample}", "--class-names", "nope"],
            ["'nope'"],
        ),
        (
            ["eval-zero-shot", "--model", "{tmp}/no-model", "--image-folder", "{sample}"],
            ["model folder not found"],
        ),
        (
            ["eval-retrieval", "--model", "m", "--karpathy-json", "{tmp}/d.json", "--images", "{tmp}"],
            ["d.json"],
        ),
        (
            ["eval-retrieval", "--model", "m", "--dataset", "{tmp}/ds", "--translations", "{tmp}"],
            ["--translations"],
        ),
        (["build-dataset", "--layout", "imagefolder", "--source", "x", "--images", "{tmp}"], ["--output"]),
        (
            [
                "build-dataset",
                "--layout",
                "imagefolder",
                "--source",
                "x",
                "--images",
                "{tmp}/no",
                "--output",
                "{tmp}/o",
            ],
            ["image folder not found"],
        ),
        (
            ["train", "--preset", "tiny", "--dataset", "{tmp}/ds", "--output-dir", "{tmp}/o"],
            ["--tokenizer-name-or-path"],
        ),
        (["convert", "{sample}", "{tmp}/out", "--offline"], ["open_clip_config.json"]),
        (["export", "{tmp}", "{tmp}/out"], ["--to-open-clip"]),
        (["model-index", "{tmp}/missing.json", "--card", "{tmp}/README.md"], ["missing.json"]),
        (
            ["eval-zero-shot", "--model", "m", "--image-folder", "x", "--bogus"],
            ["unrecognized arguments: --bogus"],
        ),
        (
            ["eval-zero-shot", "--model", "m", "--image-folder", "x", "--ks", "0"],
            ["--ks", "every K must be >= 1"],
        ),
    ],
)
def test_rsmclip_user_errors_are_one_line_exit_2(argv, fragments, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, sample=sample_dir() / "rsscn7") for a in argv]
    try:
        status = cli_main(argv)
    except SystemExit as exit_:  # argparse errors exit from parse_args
        status = exit_.code
    assert status == 2
    _one_error_line(capsys, *fragments)


def test_stand_alone_entry_points_share_the_style(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert _script("zero_shot").main(["--model", "m", "--image-folder", missing]) == 2
    _one_error_line(capsys, "image folder not found")
    assert _script("retrieval").main(["--model", "m", "--karpathy-json", missing]) == 2
    _one_error_line(capsys, "--karpathy-json needs --images")
    assert data_main(["build-dataset", "--layout", "imagefolder", "--source", "x", "--images", missing]) == 2
    _one_error_line(capsys, "--output")
    assert train_main(["--dataset", missing, "--output-dir", str(tmp_path / "o")]) == 2
    _one_error_line(capsys, "invalid training configuration")
    with pytest.raises(SystemExit) as exit_:
        train_main(["--no-such-flag"])
    assert exit_.value.code == 2
    _one_error_line(capsys, "unrecognized arguments: --no-such-flag", "train.py --help")


def test_real_process_prints_no_traceback(tmp_path):
    argv = [sys.executable, "-m", "modeling_rsmclip.cli", "eval-zero-shot", "--model", "m"]
    argv += ["--image-folder", str(tmp_path / "nowhere")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RSMCLIP_DEBUG", None)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: image folder not found: {tmp_path / 'nowhere'}"]


def test_run_command_contract(capsys, monkeypatch):
    def user_error(_):
        raise UserError("bad value 'x'\nline two:\n- first\n- second")

    def bug(_):
        raise KeyError("internal")

    assert run_command(user_error, None) == 2
    assert capsys.readouterr().err == "error: bad value 'x'; line two: first; second\n"
    with pytest.raises(KeyError):  # programming errors keep their traceback
        run_command(bug, None)
    assert run_command(lambda _: None, None) == 0
    assert one_line(FileNotFoundError("image file not found: a.tif")) == "image file not found: a.tif"
    monkeypatch.setenv("RSMCLIP_DEBUG", "1")  # the traceback, for debugging
    with pytest.raises(UserError, match="bad value"):
        run_command(user_error, None)
