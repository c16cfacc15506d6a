"""The training configuration is checked before anything runs: every option against its declared type and range,
YAML read strictly, every problem listed at once with the key, the value and what is expected; through the two
command lines, one `error:` line and exit status 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modeling_rsmclip.errors import UserError
from modeling_rsmclip.training.cli import main as train_main
from modeling_rsmclip.training.config import ConfigError, TrainingConfig, read_yaml

REPO = Path(__file__).resolve().parents[1]
TORCH_LOG_LINE = re.compile(r"^[DIWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ torch/\S+:\d+\] ")


@pytest.fixture()
def valid(tmp_path):
    """The options of a configuration that passes every check (local folders for the inputs)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "tokenizer").mkdir()
    return {
        "preset": "tiny",
        "tokenizer_name_or_path": str(tmp_path / "tokenizer"),
        "dataset": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "out"),
    }


def _problems(values, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as error:
        TrainingConfig.from_dict(values, validate=True, **kwargs)
    assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)
    return error.value.problems


def test_a_valid_configuration_passes(valid):
    config = TrainingConfig.from_dict(valid, validate=True)
    assert config.problems() == []
    assert config.dataset == valid["dataset"] and config.max_steps is None


def test_every_problem_is_listed_at_once_with_key_value_and_expectation(valid):
    bad = {
        **valid,
        "learning_rate": "fast",
        "max_steps": "100",
        "dataset": ["a", "b"],
        "seed": None,
        "teacher_temp": float("nan"),
        "center_momentum": float("inf"),
        "distillation": "false",
        "num_global_crops": 2.0,
        "per_device_train_batch_size": True,
        "global_crop_scale": [0.5],
        "caption_languages": ["en", "xx"],
        "learning_rat": 1,
    }
    problems = _problems(bad)
    expected = [
        "unknown option 'learning_rat' (did you mean learning_rate?)",
        "dataset (--dataset): expected a non-empty string, got ['a', 'b']",
        "caption_languages (--caption-languages): unknown language 'xx' (known: all, en, pt, es, fr, de, nl, it, zh, ko, ru)",
        "num_global_crops (--num-global-crops): expected an integer >= 0, got 2.0",
        "global_crop_scale (--global-crop-scale): expected a list of 2 values, each a number in (0, 1], got [0.5]",
        "distillation (--distillation): expected true or false, got 'false' (a string)",
        "teacher_temp (--teacher-temp): expected a number > 0, got nan",
        "center_momentum (--center-momentum): expected a number in [0, 1], got inf",
        "learning_rate (--learning-rate): expected a number > 0, got 'fast' (a string)",
        "per_device_train_batch_size (--per-device-train-batch-size): expected an integer >= 1, got true",
        "max_steps (--max-steps): expected an integer >= 1 (or null), got '100' (a string)",
        "seed (--seed): expected an integer in [0, 4294967295], got null",
    ]
    assert problems == expected


def test_negative_max_steps_is_refused_before_anything_is_written(valid, tmp_path, capsys):
    """`max_steps: -5` used to train zero steps and save an untrained model."""
    path = tmp_path / "neg.yaml"
    path.write_text(yaml.safe_dump({**valid, "max_steps": -5}))
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: invalid training configuration ({path}): max_steps (--max-steps): expected an integer >= 1 "
        "(or null), got -5"
    ]
    assert not Path(valid["output_dir"]).exists()
    assert "max_steps (--max-steps)" in _problems({**valid, "max_steps": 0})[0]


def test_required_values_and_paths(valid, tmp_path):
    (tmp_path / "a-file").write_text("x")
    problems = _problems(
        {
            **valid,
            "dataset": None,
            "tokenizer_name_or_path": str(tmp_path / "no-such-folder"),
            "model_name_or_path": None,
            "output_dir": str(tmp_path / "a-file"),
            "resume_from_checkpoint": str(tmp_path / "checkpoints" / "checkpoint-9"),
        }
    )
    assert problems == [
        f"tokenizer_name_or_path (--tokenizer-name-or-path): no file or folder '{tmp_path}/no-such-folder', "
        "and it is not a Hub id either",
        "--dataset is required (YAML key: dataset)",
        f"output_dir (--output-dir): '{tmp_path}/a-file' is a file, not a folder",
        f"resume_from_checkpoint (--resume-from-checkpoint): no folder '{tmp_path}/checkpoints/checkpoint-9' "
        "(expected an existing folder or 'latest')",
    ]
    # A Hub id is taken at its word (it is resolved when the run loads it); 'latest' is a keyword.
    config = TrainingConfig.from_dict(
        {**valid, "dataset": "org/ucm-captions", "resume_from_checkpoint": "latest"}, validate=True
    )
    assert config.dataset == "org/ucm-captions"


def test_output_over_an_input_is_refused(valid):
    problems = _problems({**valid, "output_dir": valid["dataset"] + "/."})
    assert len(problems) == 1 and problems[0].startswith("output_dir (--output-dir): the output ")
    assert "is the input" in problems[0] and valid["dataset"] in problems[0]
    inside = _problems({**valid, "output_dir": valid["dataset"] + "/run"})  # inside the dataset folder
    assert len(inside) == 1 and "inside the input folder" in inside[0]


def test_rules_between_options_run_on_valid_values_only(valid):
    problems = _problems(
        {
            **valid,
            "model_name_or_path": "org/model",
            "num_global_crops": "two",
            "global_crop_scale": [0.9, 0.4],
        }
    )
    assert problems == [
        "num_global_crops (--num-global-crops): expected an integer >= 0, got 'two' (a string)",
        "give exactly one of --model-name-or-path (fine-tune) and --preset (from scratch)",
        "global_crop_scale (--global-crop-scale): expected (min, max), got [0.9, 0.4]",
    ]  # the crop-count rules read num_global_crops: not run on a string


def test_yaml_numbers_and_single_strings(valid, tmp_path):
    """PyYAML (YAML 1.1) reads `1e-5` as a string: it is taken as the number; one language is a list of one."""
    path = tmp_path / "train.yaml"
    text = (
        yaml.safe_dump(valid)
        + "learning_rate: 1e-5\ncolor_jitter: [4e-1, 0.4, 0.2, 1E-1]\neval_languages: pt\n"
    )
    path.write_text(text)
    assert yaml.safe_load(text)["learning_rate"] == "1e-5"
    config = TrainingConfig.from_yaml(path, validate=True)
    assert config.learning_rate == 1e-5 and isinstance(config.learning_rate, float)
    assert config.color_jitter == [0.4, 0.4, 0.2, 0.1] and config.eval_languages == ["pt"]


@pytest.mark.parametrize(
    ("text", "line", "column", "what"),
    [
        ("preset: tiny\n  dataset: x\n", 2, 10, "mapping values are not allowed here"),
        (
            "preset: tiny\nlora_target_modules: [q_proj, v_proj\n",
            3,
            1,
            "expected ',' or ']', but got '<stream end>'",
        ),
        ("preset: tiny\nseed: 1\npreset: small\n", 3, 1, "duplicate key 'preset'"),
        (
            "preset: tiny\ndataset: \x07\n",
            2,
            10,
            "character #x0007 is not allowed (special characters are not allowed)",
        ),
        ("preset: !!python/object:os.system x\n", 1, 9, "could not determine a constructor for the tag"),
    ],
    ids=["indentation", "unclosed-list", "duplicate-key", "control-character", "python-tag"],
)
def test_yaml_errors_name_the_file_line_and_column(tmp_path, text, line, column, what):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        read_yaml(path)
    (problem,) = error.value.problems
    assert problem.startswith(f"{path}:{line}:{column}: invalid YAML: {what}"), problem


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfepreset: tiny\n", "not UTF-8 text (byte 0)"),
        (b"- preset\n- tiny\n", "expected a mapping of option: value at the top level, got list"),
        (b"a: " + b"[" * 3000 + b"]" * 3000 + b"\n", "invalid YAML: nested too deeply"),
    ],
    ids=["not-utf8", "not-a-mapping", "too-deep"],
)
def test_unreadable_yaml_is_one_problem_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        read_yaml(path)
    assert error.value.problems == [f"{path}: {expected}"]


def test_flags_are_checked_too(valid, capsys):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in valid.items()]
    assert train_main([*args, "--learning-rate", "nan", "--max-steps", "-5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: invalid training configuration (command line): learning_rate (--learning-rate): expected a "
        "number > 0, got nan; max_steps (--max-steps): expected an integer >= 1 (or null), got -5"
    ]


BAD_YAML = "preset: tiny\nlearning_rate: fast\nmax_steps: -5\ndataset: [a, b]\n"


def _expected_error(bad: Path) -> str:
    return (
        f"error: invalid training configuration ({bad}): dataset (--dataset): expected a non-empty string, got "
        "['a', 'b']; learning_rate (--learning-rate): expected a number > 0, got 'fast' (a string); max_steps "
        "(--max-steps): expected an integer >= 1 (or null), got -5; --output-dir is required (YAML key: "
        "output_dir); --preset needs --tokenizer-name-or-path (a tokenizer or processor folder)"
    )


def test_bad_yaml_through_rsmclip_train_is_one_error_line_exit_2(tmp_path, capsys):
    from modeling_rsmclip.cli import main as rsmclip_main

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    assert rsmclip_main(["train", "--config", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [_expected_error(bad)] and captured.out == ""


def test_bad_yaml_through_train_py_is_one_error_line_exit_2(tmp_path):
    """A real `python train.py --config bad.yaml` process."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RSMCLIP_DEBUG", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 2, done.stderr
    # torch's own import-time log lines (glog format: torchao's deprecation notices when transformers imports it)
    # are not the command's output.
    lines = [line for line in done.stderr.strip().splitlines() if not TORCH_LOG_LINE.match(line)]
    assert lines == [_expected_error(bad)] and done.stdout == "" and "Traceback" not in done.stderr
