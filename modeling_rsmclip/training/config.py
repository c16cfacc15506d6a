"""Every option of the training recipe, with the DESIGN defaults: one dataclass, read from a YAML file and/or CLI
flags (a flag overrides the file, the file overrides the default). `--help` documents each option.

Each option is checked against its declared type and constraints (`options.py`) and the rules between options
before anything runs; every problem is listed at once, each naming the key, the value and what is expected
(`ConfigError`)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..templates import LANGUAGES
from .options import add_option_argument, check_path, check_value, field_kinds, label, option, parse_value

_GROUPS = ("model", "data", "augmentation", "objective", "optimisation", "operations")


class ConfigError(UserError):
    """An invalid training configuration; `problems` holds one line per problem, `source` where it came from."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" ({source})" if source else ""
        super().__init__(f"invalid training configuration{where}:\n  - " + "\n  - ".join(self.problems))


@dataclass
class TrainingConfig:
    """Options of `rsmclip train` / `train.py`. Field names are the YAML keys; flags are `--field-name`."""

    # ------------------------------------------------------------------------------------------------- model
    model_name_or_path: str | None = option(
        None,
        "Start from a converted pretrained RS-M-CLIP folder or Hub id (the real recipe fine-tunes the "
        "multilingual CLIP). Exclusive with --preset.",
        "model",
        path="input",
    )
    preset: str | None = option(
        None,
        "Train from scratch with an architecture preset of RSMCLIPConfig (e.g. tiny, small, rs-m-clip). "
        "Needs --tokenizer-name-or-path.",
        "model",
    )
    tokenizer_name_or_path: str | None = option(
        None,
        "Tokenizer (or processor) folder used with --preset; with --model-name-or-path the model's own "
        "processor is used unless this is given.",
        "model",
        path="input",
    )
    dino_out_dim: int | None = option(
        None,
        "Override the distillation head's output size K (DINO: 65536); a "
        "pretrained head of another size is re-initialised.",
        "model",
        ge=1,
    )
    dino_hidden_dim: int | None = option(
        None, "Override the head's hidden width (DINO: 2048).", "model", ge=1
    )
    dino_bottleneck_dim: int | None = option(
        None, "Override the head's bottleneck (DINO: 256).", "model", ge=1
    )
    dino_num_layers: int | None = option(
        None, "Override the head's number of MLP layers (DINO: 3).", "model", ge=1
    )
    attn_implementation: str | None = option(
        None,
        "Attention kernel of both towers (sdpa, eager, flash_attention_2); default: transformers' choice.",
        "model",
    )

    # -------------------------------------------------------------------------------------------------- data
    dataset: str | None = option(
        None,
        "The training dataset: a folder written by `rsmclip build-dataset` (save_to_disk), a folder of "
        "data files, or a Hub dataset id.",
        "data",
        required=True,
        path="input",
    )
    dataset_config_name: str | None = option(None, "Configuration name of a Hub dataset.", "data")
    train_split: str = option("train", "Split to train on.", "data")
    validation_split: str | None = option(
        "validation", "Split for periodic retrieval validation (mR); 'none' disables validation.", "data"
    )
    streaming: bool = option(
        False, "Stream the training split instead of loading it (needs --max-steps).", "data"
    )
    shuffle_buffer_size: int = option(10_000, "Shuffle buffer of a streamed dataset.", "data", ge=1)
    caption_languages: list[str] = option(
        ["all"],
        "Caption languages to sample from at every step: 'all', 'en' (English only) or a list of codes "
        f"({' '.join(LANGUAGES)}). A language is drawn uniformly among those an image has, then one of its captions.",
        "data",
        nargs="+",
        choices=("all", *LANGUAGES),
        what="language",
        metavar="LANG",
    )
    eval_languages: list[str] | None = option(
        None,
        "Languages of the validation retrieval (default: the training languages).",
        "data",
        nargs="+",
        choices=LANGUAGES,
        what="language",
        metavar="LANG",
    )
    max_train_samples: int | None = option(None, "Use only the first N training rows.", "data", ge=1)
    max_eval_samples: int | None = option(None, "Use only the first N validation rows.", "data", ge=1)
    max_text_length: int = option(77, "Token budget of a caption (truncation).", "data", ge=1)
    dataloader_num_workers: int = option(
        4, "DataLoader worker processes (decoding and augmentation run there).", "data", ge=0
    )

    # ------------------------------------------------------------------------------------------ augmentation
    clip_view: str = option(
        "center",
        "Image the CLIP loss sees: 'center' (resize + centre crop) or 'global' (the first global crop, "
        "shared with the distillation student: one image-tower pass fewer).",
        "augmentation",
        choices=["center", "global"],
    )
    clip_flip_rotate: bool = option(
        True, "Random flips and 90-degree rotations on the CLIP view.", "augmentation"
    )
    num_global_crops: int = option(2, "Global crops per image (teacher and student).", "augmentation", ge=0)
    num_local_crops: int = option(8, "Local crops per image (student only).", "augmentation", ge=0)
    global_crop_size: int | None = option(
        None, "Global crop size in pixels (default: the model's image size).", "augmentation", ge=1
    )
    local_crop_size: int | None = option(
        None,
        "Local crop size in pixels (default: 96 at 224 px, i.e. 3/7 of the image size rounded to the patch "
        "size).",
        "augmentation",
        ge=1,
    )
    global_crop_scale: list[float] = option(
        [0.4, 1.0], "Area range of global crops.", "augmentation", nargs=2, gt=0, le=1
    )
    local_crop_scale: list[float] = option(
        [0.05, 0.4], "Area range of local crops.", "augmentation", nargs=2, gt=0, le=1
    )
    crop_flip_rotate: bool = option(
        True,
        "Vertical flips and 90-degree rotations on the crops (horizontal flips are always on).",
        "augmentation",
    )
    color_jitter_prob: float = option(
        0.8, "Probability of colour jitter on a crop.", "augmentation", ge=0, le=1
    )
    color_jitter: list[float] = option(
        [0.4, 0.4, 0.2, 0.1], "Brightness, contrast, saturation, hue jitter.", "augmentation", nargs=4, ge=0
    )
    grayscale_prob: float = option(
        0.2, "Probability of converting a crop to grey.", "augmentation", ge=0, le=1
    )
    blur_prob_global: list[float] = option(
        [1.0, 0.1], "Gaussian blur probability of global crops 1 and 2.", "augmentation", nargs=2, ge=0, le=1
    )
    blur_prob_local: float = option(
        0.5, "Gaussian blur probability of local crops.", "augmentation", ge=0, le=1
    )
    solarize_prob_global: list[float] = option(
        [0.0, 0.2], "Solarisation probability of global crops 1 and 2.", "augmentation", nargs=2, ge=0, le=1
    )

    # --------------------------------------------------------------------------------------------- objective
    distillation: bool = option(True, "Add the self-distillation loss (off: CLIP loss only).", "objective")
    distillation_weight: float = option(
        1.0, "lambda: total loss = CLIP loss + lambda * distillation loss.", "objective", ge=0
    )
    student_temp: float = option(0.1, "Student softmax temperature.", "objective", gt=0)
    teacher_temp: float = option(0.04, "Teacher softmax temperature after warm-up.", "objective", gt=0)
    warmup_teacher_temp: float = option(
        0.04, "Teacher temperature at step 0 (e.g. 0.04 with --teacher-temp 0.07).", "objective", gt=0
    )
    teacher_temp_warmup_steps: int = option(
        0, "Steps of linear teacher-temperature warm-up.", "objective", ge=0
    )
    center_momentum: float = option(
        0.9, "EMA momentum of the teacher-output center.", "objective", ge=0, le=1
    )
    teacher_momentum: float = option(
        0.996, "Teacher EMA momentum at step 0 (cosine schedule).", "objective", ge=0, le=1
    )
    teacher_momentum_final: float = option(
        1.0, "Teacher EMA momentum at the last step.", "objective", ge=0, le=1
    )
    freeze_last_layer_steps: int = option(
        0, "Keep the head's last layer fixed for this many steps (DINO: 1 epoch).", "objective", ge=0
    )
    local_loss: bool = option(
        False,
        "CLIP loss on local rows against the gathered batch only (less memory, same gradients).",
        "objective",
    )
    logit_scale_max: float | None = option(
        None,
        "Clamp of logit_scale after every step (default: the model config's, ln 100).",
        "objective",
        gt=0,
    )

    # ------------------------------------------------------------------------------------------ optimisation
    learning_rate: float = option(1e-5, "Peak learning rate (AdamW).", "optimisation", gt=0)
    head_learning_rate: float | None = option(
        None, "Peak learning rate of the distillation head (default: --learning-rate).", "optimisation", gt=0
    )
    weight_decay: float = option(
        0.2, "AdamW weight decay (never on norms, biases, logit_scale).", "optimisation", ge=0
    )
    adam_beta1: float = option(0.9, "AdamW beta1.", "optimisation", ge=0, lt=1)
    adam_beta2: float = option(0.98, "AdamW beta2.", "optimisation", ge=0, lt=1)
    adam_epsilon: float = option(1e-6, "AdamW epsilon.", "optimisation", gt=0)
    lr_scheduler_type: str = option(
        "cosine",
        "Learning-rate schedule after warm-up (transformers' get_scheduler).",
        "optimisation",
        choices=["cosine", "linear", "constant_with_warmup", "cosine_with_restarts"],
    )
    warmup_steps: int = option(100, "Linear learning-rate warm-up steps.", "optimisation", ge=0)
    max_grad_norm: float = option(1.0, "Gradient clipping by global norm (0 disables).", "optimisation", ge=0)
    per_device_train_batch_size: int = option(
        64, "Image-caption pairs per process and micro-step.", "optimisation", ge=1
    )
    per_device_eval_batch_size: int = option(128, "Validation batch size.", "optimisation", ge=1)
    gradient_accumulation_steps: int = option(
        1, "Micro-steps per optimiser step (CLIP negatives come from one micro-batch).", "optimisation", ge=1
    )
    num_train_epochs: float = option(10, "Epochs (ignored when --max-steps is set).", "optimisation", gt=0)
    max_steps: int | None = option(
        None, "Total optimiser steps (overrides --num-train-epochs).", "optimisation", ge=1
    )
    mixed_precision: str | None = option(
        None,
        "no, fp16 or bf16 (default: the `accelerate config` choice).",
        "optimisation",
        choices=["no", "fp16", "bf16"],
    )
    gradient_checkpointing: bool = option(
        False, "Recompute activations in the backward pass (less memory).", "optimisation"
    )
    freeze_vision_tower: bool = option(
        False, "Do not train the image tower and its projection.", "optimisation"
    )
    freeze_text_tower: bool = option(False, "Do not train the text tower and its projection.", "optimisation")
    freeze_token_embeddings: bool = option(
        False,
        "Do not train the text tower's token-embedding table (250k x 768 for XLM-R base): no gradient, no AdamW "
        "state and no update for its 192M values; the rest of the text tower trains.",
        "optimisation",
    )
    lora: bool = option(False, "Train LoRA adapters (peft) instead of the full towers.", "optimisation")
    lora_r: int = option(16, "LoRA rank.", "optimisation", ge=1)
    lora_alpha: int = option(32, "LoRA alpha.", "optimisation", ge=1)
    lora_dropout: float = option(0.05, "LoRA dropout.", "optimisation", ge=0, lt=1)
    lora_target_modules: list[str] = option(
        ["q_proj", "v_proj", "query", "value"],
        "Modules that get adapters (query/value projections of the "
        "image tower: q_proj/v_proj; of the text tower: query/value).",
        "optimisation",
        nargs="+",
    )
    lora_modules_to_save: list[str] = option(
        ["visual_projection", "text_projection"],
        "Modules trained in full and saved with the adapter (the "
        "distillation head is added when distillation is on).",
        "optimisation",
        nargs="*",
    )
    use_cpu: bool = option(
        False,
        "Train on the CPU even when a GPU is present (several CPU processes started by "
        "torchrun use gloo automatically).",
        "optimisation",
    )
    seed: int = option(
        42,
        "Seed of the initialisation, the shuffling and the augmentations.",
        "optimisation",
        ge=0,
        le=2**32 - 1,
    )

    # -------------------------------------------------------------------------------------------- operations
    output_dir: str | None = option(
        None, "Where checkpoints, logs and the final model go.", "operations", required=True, path="output"
    )
    logging_steps: int = option(10, "Log losses every N steps.", "operations", ge=1)
    report_to: str = option(
        "tensorboard",
        "Tracker: tensorboard, wandb (when installed), all or none.",
        "operations",
        choices=["tensorboard", "wandb", "all", "none"],
    )
    project_name: str = option("rsmclip", "Tracker project name.", "operations")
    eval_steps: int = option(
        500, "Validation retrieval every N steps (0: only at the end).", "operations", ge=0
    )
    save_steps: int = option(
        500, "Checkpoint (accelerate save_state) every N steps (0: never).", "operations", ge=0
    )
    save_total_limit: int | None = option(3, "Keep only the last K checkpoints.", "operations", ge=0)
    resume_from_checkpoint: str | None = option(
        None,
        "Resume from a checkpoint folder, or 'latest' for the newest one in OUTPUT_DIR/checkpoints.",
        "operations",
        path="folder",
        keywords=("latest",),
    )
    max_consecutive_nonfinite: int = option(
        10,
        "Stop after this many optimiser steps in a row with a non-finite "
        "loss or gradient (each one is skipped and counted).",
        "operations",
        ge=1,
    )
    push_to_hub: bool = option(False, "Upload the final model and its card to the Hub.", "operations")
    hub_model_id: str | None = option(None, "Hub repository for --push-to-hub.", "operations")
    hub_private_repo: bool = option(False, "Create the Hub repository as private.", "operations")

    # ------------------------------------------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        for name, kind in field_kinds(type(self)).items():
            setattr(self, name, parse_value(getattr(self, name), kind))
        if isinstance(self.validation_split, str) and self.validation_split.lower() in ("", "none", "null"):
            self.validation_split = None

    def problems(self, *, complete: bool = True) -> list[str]:
        """Every problem of this configuration, one line each: each option against its declared type and
        constraints; with `complete`, also what a run needs: required options, paths that exist (or Hub ids),
        and the rules between options (each run only when the options it reads passed their own check)."""
        kinds = field_kinds(type(self))
        problems, valid = [], set()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not complete and value is None and f.metadata["required"]:
                continue
            problem = check_value(f.name, value, kinds[f.name], f.metadata)
            if problem is None and complete:
                problem = check_path(f.name, value, f.metadata)
            if problem:
                problems.append(problem)
            else:
                valid.add(f.name)
        if complete:
            for names, rule in _RULES:
                if valid.issuperset(names) and (problem := rule(self)):
                    problems.append(problem)
        return problems

    def validate(self) -> None:
        """Raise a `ConfigError` (a `ValueError`) listing every problem (`problems()`)."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    # ---------------------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write the options as YAML that reads back to an equal configuration. Non-ASCII text is written as it
        is, unless PyYAML would not read it back (it writes a NEL character raw and then folds it as a line
        break): then it is escaped."""
        values = self.to_dict()
        text = yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
        if yaml.safe_load(text) != values:
            text = yaml.safe_dump(values, sort_keys=False, allow_unicode=False)
        Path(path).write_text(text, encoding="utf-8")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(
        cls, values: Mapping[Any, Any], source: str = "configuration", *, validate: bool = False
    ) -> TrainingConfig:
        """A configuration from option: value pairs (keys with `_` or `-`, as in YAML). Unknown keys, a key given
        twice and values of the wrong type or out of range raise one `ConfigError` listing all of them; with
        `validate`, the checks of `validate()` join the same list."""
        known = cls.field_names()
        problems: list[str] = []
        normalised: dict[str, Any] = {}
        spelled: dict[str, Any] = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]}?" if close else "run with --help for the list"
                problems.append(f"unknown option {str(key)!r} ({hint})")
            elif name in spelled:
                problems.append(f"{label(name)}: given twice (as {spelled[name]!r} and {key!r})")
            else:
                spelled[name], normalised[name] = key, value
        config = cls(**normalised)
        problems += config.problems(complete=validate)
        if problems:
            raise ConfigError(problems, source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, *, validate: bool = False) -> TrainingConfig:
        return cls.from_dict(read_yaml(path), source=str(path), validate=validate)


# ------------------------------------------------------------------------------------------- rules between options
# (the options a rule reads, the rule): a rule returns its problem, or None.
_RULES: list[tuple[tuple[str, ...], Callable[[TrainingConfig], str | None]]] = []


def _rule(*names: str) -> Callable:
    def register(rule: Callable[[TrainingConfig], str | None]) -> Callable:
        _RULES.append((names, rule))
        return rule

    return register


@_rule("model_name_or_path", "preset")
def _one_starting_point(c: TrainingConfig) -> str | None:
    if bool(c.model_name_or_path) == bool(c.preset):
        return "give exactly one of --model-name-or-path (fine-tune) and --preset (from scratch)"
    return None


@_rule("preset", "tokenizer_name_or_path")
def _preset_needs_a_tokenizer(c: TrainingConfig) -> str | None:
    if c.preset and not c.tokenizer_name_or_path:
        return "--preset needs --tokenizer-name-or-path (a tokenizer or processor folder)"
    return None


@_rule("preset")
def _known_preset(c: TrainingConfig) -> str | None:
    from ..configuration_rsmclip import PRESETS

    if c.preset and c.preset not in PRESETS:
        return f"{label('preset')}: unknown preset {c.preset!r} (known: {', '.join(PRESETS)})"
    return None


@_rule("streaming", "max_steps")
def _stream_needs_max_steps(c: TrainingConfig) -> str | None:
    if c.streaming and not c.max_steps:
        return "--streaming needs --max-steps (a stream has no length)"
    return None


@_rule("caption_languages")
def _all_languages_alone(c: TrainingConfig) -> str | None:
    if "all" in c.caption_languages and len(c.caption_languages) > 1:
        return "--caption-languages: 'all' cannot be combined with other languages"
    return None


@_rule("distillation", "num_global_crops", "num_local_crops")
def _distillation_crops(c: TrainingConfig) -> str | None:
    if c.distillation and c.num_global_crops < 1:
        return "distillation needs at least one global crop (--num-global-crops)"
    if c.distillation and c.num_global_crops + c.num_local_crops < 2:
        return "distillation needs at least two crops (--num-global-crops + --num-local-crops)"
    return None


@_rule("clip_view", "num_global_crops")
def _global_view_needs_a_crop(c: TrainingConfig) -> str | None:
    if c.clip_view == "global" and c.num_global_crops < 1:
        return "--clip-view global needs a global crop (--num-global-crops)"
    return None


@_rule("freeze_vision_tower", "freeze_text_tower", "distillation")
def _something_to_train(c: TrainingConfig) -> str | None:
    if c.freeze_vision_tower and c.freeze_text_tower and not c.distillation:
        return "both towers frozen (--freeze-vision-tower, --freeze-text-tower) and no distillation: nothing to train"
    return None


@_rule("lora", "freeze_vision_tower", "freeze_text_tower")
def _lora_freezes_already(c: TrainingConfig) -> str | None:
    if c.lora and (c.freeze_vision_tower or c.freeze_text_tower):
        return "--lora already freezes the base weights; drop --freeze-*-tower"
    return None


@_rule("push_to_hub", "hub_model_id")
def _hub_needs_a_repository(c: TrainingConfig) -> str | None:
    if c.push_to_hub and not c.hub_model_id:
        return "--push-to-hub needs --hub-model-id"
    return None


@_rule("global_crop_scale", "local_crop_scale")
def _ordered_crop_scales(c: TrainingConfig) -> str | None:
    for name in ("global_crop_scale", "local_crop_scale"):
        low, high = getattr(c, name)
        if low > high:
            return f"{label(name)}: expected (min, max), got [{low:g}, {high:g}]"
    return None


@_rule("color_jitter")
def _hue_jitter(c: TrainingConfig) -> str | None:
    if c.color_jitter[3] > 0.5:
        return f"{label('color_jitter')}: the hue jitter (the 4th value) is at most 0.5, got {c.color_jitter[3]:g}"
    return None


@_rule("output_dir", "model_name_or_path", "tokenizer_name_or_path", "dataset")
def _output_is_not_an_input(c: TrainingConfig) -> str | None:
    """The run folder (training owns it: checkpoints rotate there) is no input and holds none (`safe_io`)."""
    from ..safe_io import OutputOverwritesInputError, check_outputs_not_inputs

    inputs = [c.model_name_or_path, c.tokenizer_name_or_path, c.dataset]
    try:
        check_outputs_not_inputs([], [v for v in inputs if v], owned=[c.output_dir])
    except OutputOverwritesInputError as error:
        return f"{label('output_dir')}: {error}"
    return None


# ------------------------------------------------------------------------------------------------------- YAML
class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(path: Path, text: str, error: yaml.YAMLError) -> str:
    """`FILE:LINE:COLUMN: invalid YAML: what` for a PyYAML error."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    what = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    if mark is not None:
        line, column = mark.line + 1, mark.column + 1
    elif isinstance(getattr(error, "position", None), int):  # a ReaderError: a character YAML does not allow
        position = error.position
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        character = error.character
        code = f"#x{character:04x}" if isinstance(character, int) else repr(character)
        what = f"character {code} is not allowed ({error.reason})"
    else:
        return f"{path}: invalid YAML: {what}"
    return f"{path}:{line}:{column}: invalid YAML: {what}"


def read_yaml(path: str | Path) -> dict[Any, Any]:
    """The option: value mapping of a YAML file. A file that is not UTF-8 text, YAML that does not parse (with its
    line and column), a key given twice, or a document that is not a mapping raise one `ConfigError` naming
    the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"configuration file {path} does not exist")
    if path.is_dir():
        raise ConfigError([f"{path} is a folder, not a YAML file"])
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: not UTF-8 text (byte {error.start})"]) from None
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError([_yaml_problem(path, text, error)]) from None
    except RecursionError:
        raise ConfigError([f"{path}: invalid YAML: nested too deeply"]) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            [f"{path}: expected a mapping of option: value at the top level, got {type(values).__name__}"]
        )
    return values


# ------------------------------------------------------------------------------------------------------ argparse
def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and one flag per `TrainingConfig` field (`options.add_option_argument`)."""
    parser.add_argument(
        "--config",
        type=str,
        default=None,
        metavar="YAML",
        help="YAML file of options (keys are the option names with underscores); flags override it.",
    )
    groups = {name: parser.add_argument_group(f"{name} options") for name in _GROUPS}
    kinds = field_kinds(TrainingConfig)
    for f in dataclasses.fields(TrainingConfig):
        add_option_argument(groups[f.metadata["group"]], f, kinds[f.name])


def config_from_args(args: argparse.Namespace, *, validate: bool = False) -> TrainingConfig:
    """Defaults < `--config` YAML < flags. Problems raise one `ConfigError`; with `validate`, every check of
    `TrainingConfig.validate` is made in the same pass."""
    yaml_path = getattr(args, "config", None)
    values = read_yaml(yaml_path) if yaml_path else {}
    flags = {name: getattr(args, name) for name in TrainingConfig.field_names() if hasattr(args, name)}
    values = {k: v for k, v in values.items() if str(k).replace("-", "_") not in flags}  # the flag wins
    values.update(flags)
    return TrainingConfig.from_dict(values, source=yaml_path or "command line", validate=validate)
