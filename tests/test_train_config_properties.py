"""Property-based tests (Hypothesis) of the training configuration parser: whatever YAML a user writes, the result
is a configuration or one `ConfigError` whose problems name the key; and a configuration survives YAML (config ->
YAML -> config is equal). Bounded: a fixed number of examples each, with a deadline."""

from __future__ import annotations

import dataclasses
import math
from datetime import timedelta
from importlib import import_module
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_rsmclip.training.config import ConfigError, TrainingConfig, read_yaml
from modeling_rsmclip.training.options import field_kinds

# What the checks import on first use (the presets, the Hub id rule), imported here so that no example's deadline
# counts an import.
import_module("modeling_rsmclip.configuration_rsmclip")
import_module("huggingface_hub.utils")

NAMES = TrainingConfig.field_names()
FLAGS = ["--" + name.replace("_", "-") for name in NAMES]
FIELDS = {f.name: f for f in dataclasses.fields(TrainingConfig)}
SETTINGS = settings(
    max_examples=100,
    deadline=timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Anything YAML can hold: scalars of every type (NaN and infinities included), lists and mappings of them.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["1e-5", "true", "none", "all", "en", "xx", "cosine", "latest", "", "org/name", "../x"])
)
yaml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
keys = st.sampled_from(NAMES) | st.sampled_from([n.replace("_", "-") for n in NAMES]) | st.text(max_size=12)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder for the YAML files, with the input folders of `_base`."""
    work = tmp_path_factory.mktemp("config-properties")
    (work / "data").mkdir()
    (work / "tokenizer").mkdir()
    return work


def _base(work: Path) -> dict[str, str]:
    """A configuration that passes every check."""
    return {
        "preset": "tiny",
        "tokenizer_name_or_path": str(work / "tokenizer"),
        "dataset": str(work / "data"),
        "output_dir": str(work / "out"),
    }


def _load(work: Path, text: str):
    """`read_yaml` + `TrainingConfig.from_dict(validate=True)` on `text`, as `train.py --config` does."""
    path = work / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path, TrainingConfig.from_dict(read_yaml(path), source=str(path), validate=True)


def _names_an_option(problem: str, keys: list[str]) -> bool:
    """The problem names an option or one of the given keys (as it is, or as `repr` shows it)."""
    return any(k in problem for k in [*NAMES, *FLAGS, *keys, *map(repr, keys)])


@SETTINGS
@given(
    st.text(max_size=300)
    | st.lists(st.tuples(keys, st.text(max_size=15)), max_size=6).map(
        lambda pairs: "".join(f"{k}: {v}\n" for k, v in pairs)
    )
)
def test_any_text_gives_a_configuration_or_a_config_error(work, text):
    try:
        _load(work, text)
    except ConfigError as error:  # a ValueError and a UserError: one `error:` line at the command line
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)


@SETTINGS
@given(st.dictionaries(keys, yaml_values, max_size=6))
def test_any_yaml_mapping_gives_a_configuration_or_problems_naming_the_key(work, values):
    text = yaml.safe_dump(values, allow_unicode=True)
    # The keys as YAML reads them back (PyYAML writes a NEL character raw and reads it as a space).
    keys = [str(k) for k in yaml.safe_load(text)]
    try:
        path, config = _load(work, text)
    except ConfigError as error:
        for problem in error.problems:
            assert problem.startswith(str(work)) or _names_an_option(problem, keys), problem
    else:
        assert config.problems() == []


@SETTINGS
@given(st.sampled_from(NAMES), yaml_values)
def test_one_bad_value_is_named_by_its_key(work, name, value):
    """A valid configuration with one option set to anything: valid, or every problem names that option."""
    values = {**_base(work), name: value}
    try:
        _, config = _load(work, yaml.safe_dump(values, allow_unicode=True))
    except ConfigError as error:
        flag = "--" + name.replace("_", "-")
        for problem in error.problems:
            assert name in problem or flag in problem, problem
    else:
        assert getattr(config, name) == getattr(TrainingConfig(**values), name)


def _strategy(name: str) -> st.SearchStrategy:
    """Values that fit the option `name` by its declared type and constraints."""
    kind, meta = field_kinds(TrainingConfig)[name], FIELDS[name].metadata
    if meta["choices"]:
        element = st.sampled_from(meta["choices"])
    elif kind.base is bool:
        element = st.booleans()
    elif kind.base is str:
        element = st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s)
    else:
        low = meta["ge"] if meta["ge"] is not None else meta["gt"]
        high = meta["le"] if meta["le"] is not None else meta["lt"]
        if kind.base is int:
            low = None if low is None else math.floor(low) + (meta["gt"] is not None)
            high = None if high is None else math.ceil(high) - (meta["lt"] is not None)
            element = st.integers(min_value=low, max_value=high)
        else:
            element = st.floats(
                min_value=low,
                max_value=high,
                exclude_min=meta["gt"] is not None,
                exclude_max=meta["lt"] is not None,
                allow_nan=False,
                allow_infinity=False,
            )
    if kind.is_list:
        nargs = meta["nargs"]
        size = {"min_size": nargs, "max_size": nargs} if isinstance(nargs, int) else {"max_size": 4}
        value = st.lists(
            element, min_size=size.get("min_size", 1 if nargs == "+" else 0), max_size=size["max_size"]
        )
    else:
        value = element
    return st.none() | value if kind.optional and not meta["required"] else value


@SETTINGS
@given(st.fixed_dictionaries({}, optional={name: _strategy(name) for name in NAMES}))
def test_configurations_round_trip_through_yaml(work, values):
    config = TrainingConfig(**values)
    assert (
        config.problems(complete=False) == []
    )  # the strategies give values of the declared types and ranges
    path = work / "round-trip.yaml"
    config.to_yaml(path)
    again = TrainingConfig.from_yaml(path)
    assert again == config
    assert again.problems() == config.problems()
