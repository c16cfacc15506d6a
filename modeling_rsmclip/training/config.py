"""Every option of the training recipe, with the DESIGN defaults: one dataclass, read from a YAML file and/or CLI
flags (a flag overrides the file, the file overrides the default). `--help` documents each option."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..templates import LANGUAGES

_GROUPS = ("model", "data", "augmentation", "objective", "optimisation", "operations")


def _opt(
    default: Any, help: str, group: str, *, type: Any = None, choices: Any = None, nargs: Any = None
) -> Any:
    """A dataclass field carrying what argparse needs; `type` is the element type of list options."""
    assert group in _GROUPS
    meta = {"help": help, "group": group, "type": type, "choices": choices, "nargs": nargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainingConfig:
    """Options of `rsmclip train` / `train.py`. Field names are the YAML keys; flags are `--field-name`."""

    # ------------------------------------------------------------------------------------------------- model
    model_name_or_path: str | None = _opt(
        None,
        "Start from a converted pretrained RS-M-CLIP folder or Hub id (the real recipe fine-tunes the "
        "multilingual CLIP). Exclusive with --preset.",
        "model",
        type=str,
    )
    preset: str | None = _opt(
        None,
        "Train from scratch with an architecture preset of RSMCLIPConfig (e.g. tiny, small, rs-m-clip). "
        "Needs --tokenizer-name-or-path.",
        "model",
        type=str,
    )
    tokenizer_name_or_path: str | None = _opt(
        None,
        "Tokenizer (or processor) folder used with --preset; with --model-name-or-path the model's own "
        "processor is used unless this is given.",
        "model",
        type=str,
    )
    dino_out_dim: int | None = _opt(
        None,
        "Override the distillation head's output size K (DINO: 65536); a "
        "pretrained head of another size is re-initialised.",
        "model",
        type=int,
    )
    dino_hidden_dim: int | None = _opt(
        None, "Override the head's hidden width (DINO: 2048).", "model", type=int
    )
    dino_bottleneck_dim: int | None = _opt(
        None, "Override the head's bottleneck (DINO: 256).", "model", type=int
    )
    dino_num_layers: int | None = _opt(
        None, "Override the head's number of MLP layers (DINO: 3).", "model", type=int
    )
    attn_implementation: str | None = _opt(
        None,
        "Attention kernel of both towers (sdpa, eager, flash_attention_2); default: transformers' choice.",
        "model",
        type=str,
    )

    # -------------------------------------------------------------------------------------------------- data
    dataset: str | None = _opt(
        None,
        "The training dataset: a folder written by `rsmclip build-dataset` (save_to_disk), a folder of "
        "data files, or a Hub dataset id.",
        "data",
        type=str,
    )
    dataset_config_name: str | None = _opt(None, "Configuration name of a Hub dataset.", "data", type=str)
    train_split: str = _opt("train", "Split to train on.", "data", type=str)
    validation_split: str | None = _opt(
        "validation",
        "Split for periodic retrieval validation (mR); 'none' disables validation.",
        "data",
        type=str,
    )
    streaming: bool = _opt(
        False, "Stream the training split instead of loading it (needs --max-steps).", "data"
    )
    shuffle_buffer_size: int = _opt(10_000, "Shuffle buffer of a streamed dataset.", "data", type=int)
    caption_languages: list[str] = _opt(
        ["all"],
        "Caption languages to sample from at every step: 'all', 'en' (English only) or a list of codes "
        f"({' '.join(LANGUAGES)}). A language is drawn uniformly among those an image has, then one of its captions.",
        "data",
        type=str,
        nargs="+",
    )
    eval_languages: list[str] | None = _opt(
        None,
        "Languages of the validation retrieval (default: the training languages).",
        "data",
        type=str,
        nargs="+",
    )
    max_train_samples: int | None = _opt(None, "Use only the first N training rows.", "data", type=int)
    max_eval_samples: int | None = _opt(None, "Use only the first N validation rows.", "data", type=int)
    max_text_length: int = _opt(77, "Token budget of a caption (truncation).", "data", type=int)
    dataloader_num_workers: int = _opt(
        4, "DataLoader worker processes (decoding and augmentation run there).", "data", type=int
    )

    # ------------------------------------------------------------------------------------------ augmentation
    clip_view: str = _opt(
        "center",
        "Image the CLIP loss sees: 'center' (resize + centre crop) or 'global' (the first global crop, "
        "shared with the distillation student: one image-tower pass fewer).",
        "augmentation",
        type=str,
        choices=["center", "global"],
    )
    clip_flip_rotate: bool = _opt(
        True, "Random flips and 90-degree rotations on the CLIP view.", "augmentation"
    )
    num_global_crops: int = _opt(2, "Global crops per image (teacher and student).", "augmentation", type=int)
    num_local_crops: int = _opt(8, "Local crops per image (student only).", "augmentation", type=int)
    global_crop_size: int | None = _opt(
        None, "Global crop size in pixels (default: the model's image size).", "augmentation", type=int
    )
    local_crop_size: int | None = _opt(
        None,
        "Local crop size in pixels (default: 96 at 224 px, i.e. 3/7 of the image size rounded to the patch "
        "size).",
        "augmentation",
        type=int,
    )
    global_crop_scale: list[float] = _opt(
        [0.4, 1.0], "Area range of global crops.", "augmentation", type=float, nargs=2
    )
    local_crop_scale: list[float] = _opt(
        [0.05, 0.4], "Area range of local crops.", "augmentation", type=float, nargs=2
    )
    crop_flip_rotate: bool = _opt(
        True,
        "Vertical flips and 90-degree rotations on the crops (horizontal flips are always on).",
        "augmentation",
    )
    color_jitter_prob: float = _opt(
        0.8, "Probability of colour jitter on a crop.", "augmentation", type=float
    )
    color_jitter: list[float] = _opt(
        [0.4, 0.4, 0.2, 0.1],
        "Brightness, contrast, saturation, hue jitter.",
        "augmentation",
        type=float,
        nargs=4,
    )
    grayscale_prob: float = _opt(0.2, "Probability of converting a crop to grey.", "augmentation", type=float)
    blur_prob_global: list[float] = _opt(
        [1.0, 0.1], "Gaussian blur probability of global crops 1 and 2.", "augmentation", type=float, nargs=2
    )
    blur_prob_local: float = _opt(
        0.5, "Gaussian blur probability of local crops.", "augmentation", type=float
    )
    solarize_prob_global: list[float] = _opt(
        [0.0, 0.2], "Solarisation probability of global crops 1 and 2.", "augmentation", type=float, nargs=2
    )

    # --------------------------------------------------------------------------------------------- objective
    distillation: bool = _opt(True, "Add the self-distillation loss (off: CLIP loss only).", "objective")
    distillation_weight: float = _opt(
        1.0, "lambda: total loss = CLIP loss + lambda * distillation loss.", "objective", type=float
    )
    student_temp: float = _opt(0.1, "Student softmax temperature.", "objective", type=float)
    teacher_temp: float = _opt(0.04, "Teacher softmax temperature after warm-up.", "objective", type=float)
    warmup_teacher_temp: float = _opt(
        0.04, "Teacher temperature at step 0 (e.g. 0.04 with --teacher-temp 0.07).", "objective", type=float
    )
    teacher_temp_warmup_steps: int = _opt(
        0, "Steps of linear teacher-temperature warm-up.", "objective", type=int
    )
    center_momentum: float = _opt(0.9, "EMA momentum of the teacher-output center.", "objective", type=float)
    teacher_momentum: float = _opt(
        0.996, "Teacher EMA momentum at step 0 (cosine schedule).", "objective", type=float
    )
    teacher_momentum_final: float = _opt(
        1.0, "Teacher EMA momentum at the last step.", "objective", type=float
    )
    freeze_last_layer_steps: int = _opt(
        0, "Keep the head's last layer fixed for this many steps (DINO: 1 epoch).", "objective", type=int
    )
    local_loss: bool = _opt(
        False,
        "CLIP loss on local rows against the gathered batch only (less memory, same gradients).",
        "objective",
    )
    logit_scale_max: float | None = _opt(
        None,
        "Clamp of logit_scale after every step (default: the model config's, ln 100).",
        "objective",
        type=float,
    )

    # ------------------------------------------------------------------------------------------ optimisation
    learning_rate: float = _opt(1e-5, "Peak learning rate (AdamW).", "optimisation", type=float)
    head_learning_rate: float | None = _opt(
        None,
        "Peak learning rate of the distillation head (default: --learning-rate).",
        "optimisation",
        type=float,
    )
    weight_decay: float = _opt(
        0.2, "AdamW weight decay (never on norms, biases, logit_scale).", "optimisation", type=float
    )
    adam_beta1: float = _opt(0.9, "AdamW beta1.", "optimisation", type=float)
    adam_beta2: float = _opt(0.98, "AdamW beta2.", "optimisation", type=float)
    adam_epsilon: float = _opt(1e-6, "AdamW epsilon.", "optimisation", type=float)
    lr_scheduler_type: str = _opt(
        "cosine",
        "Learning-rate schedule after warm-up (transformers' get_scheduler).",
        "optimisation",
        type=str,
        choices=["cosine", "linear", "constant_with_warmup", "cosine_with_restarts"],
    )
    warmup_steps: int = _opt(100, "Linear learning-rate warm-up steps.", "optimisation", type=int)
    max_grad_norm: float = _opt(
        1.0, "Gradient clipping by global norm (0 disables).", "optimisation", type=float
    )
    per_device_train_batch_size: int = _opt(
        64, "Image-caption pairs per process and micro-step.", "optimisation", type=int
    )
    per_device_eval_batch_size: int = _opt(128, "Validation batch size.", "optimisation", type=int)
    gradient_accumulation_steps: int = _opt(
        1,
        "Micro-steps per optimiser step (CLIP negatives come from one micro-batch).",
        "optimisation",
        type=int,
    )
    num_train_epochs: float = _opt(
        10, "Epochs (ignored when --max-steps is set).", "optimisation", type=float
    )
    max_steps: int | None = _opt(
        None, "Total optimiser steps (overrides --num-train-epochs).", "optimisation", type=int
    )
    mixed_precision: str | None = _opt(
        None,
        "no, fp16 or bf16 (default: the `accelerate config` choice).",
        "optimisation",
        type=str,
        choices=["no", "fp16", "bf16"],
    )
    gradient_checkpointing: bool = _opt(
        False, "Recompute activations in the backward pass (less memory).", "optimisation"
    )
    freeze_vision_tower: bool = _opt(
        False, "Do not train the image tower and its projection.", "optimisation"
    )
    freeze_text_tower: bool = _opt(False, "Do not train the text tower and its projection.", "optimisation")
    freeze_token_embeddings: bool = _opt(
        False,
        "Do not train the text tower's token-embedding table (250k x 768 for XLM-R base): no gradient, no AdamW "
        "state and no update for its 192M values; the rest of the text tower trains.",
        "optimisation",
    )
    lora: bool = _opt(False, "Train LoRA adapters (peft) instead of the full towers.", "optimisation")
    lora_r: int = _opt(16, "LoRA rank.", "optimisation", type=int)
    lora_alpha: int = _opt(32, "LoRA alpha.", "optimisation", type=int)
    lora_dropout: float = _opt(0.05, "LoRA dropout.", "optimisation", type=float)
    lora_target_modules: list[str] = _opt(
        ["q_proj", "v_proj", "query", "value"],
        "Modules that get adapters (query/value projections of the "
        "image tower: q_proj/v_proj; of the text tower: query/value).",
        "optimisation",
        type=str,
        nargs="+",
    )
    lora_modules_to_save: list[str] = _opt(
        ["visual_projection", "text_projection"],
        "Modules trained in full and saved with the adapter (the "
        "distillation head is added when distillation is on).",
        "optimisation",
        type=str,
        nargs="*",
    )
    use_cpu: bool = _opt(
        False,
        "Train on the CPU even when a GPU is present (several CPU processes started by "
        "torchrun use gloo automatically).",
        "optimisation",
    )
    seed: int = _opt(
        42, "Seed of the initialisation, the shuffling and the augmentations.", "optimisation", type=int
    )

    # -------------------------------------------------------------------------------------------- operations
    output_dir: str | None = _opt(
        None, "Where checkpoints, logs and the final model go.", "operations", type=str
    )
    logging_steps: int = _opt(10, "Log losses every N steps.", "operations", type=int)
    report_to: str = _opt(
        "tensorboard",
        "Tracker: tensorboard, wandb (when installed), all or none.",
        "operations",
        type=str,
        choices=["tensorboard", "wandb", "all", "none"],
    )
    project_name: str = _opt("rsmclip", "Tracker project name.", "operations", type=str)
    eval_steps: int = _opt(
        500, "Validation retrieval every N steps (0: only at the end).", "operations", type=int
    )
    save_steps: int = _opt(
        500, "Checkpoint (accelerate save_state) every N steps (0: never).", "operations", type=int
    )
    save_total_limit: int | None = _opt(3, "Keep only the last K checkpoints.", "operations", type=int)
    resume_from_checkpoint: str | None = _opt(
        None,
        "Resume from a checkpoint folder, or 'latest' for the newest one in OUTPUT_DIR/checkpoints.",
        "operations",
        type=str,
    )
    max_consecutive_nonfinite: int = _opt(
        10,
        "Stop after this many optimiser steps in a row with a non-finite "
        "loss or gradient (each one is skipped and counted).",
        "operations",
        type=int,
    )
    push_to_hub: bool = _opt(False, "Upload the final model and its card to the Hub.", "operations")
    hub_model_id: str | None = _opt(None, "Hub repository for --push-to-hub.", "operations", type=str)
    hub_private_repo: bool = _opt(False, "Create the Hub repository as private.", "operations")

    # ------------------------------------------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        if isinstance(self.caption_languages, str):
            self.caption_languages = [self.caption_languages]
        if isinstance(self.validation_split, str) and self.validation_split.lower() in ("", "none", "null"):
            self.validation_split = None

    def validate(self) -> None:
        """Raise a `ValueError` naming every inconsistent option."""
        errors = []
        if bool(self.model_name_or_path) == bool(self.preset):
            errors.append("give exactly one of --model-name-or-path (fine-tune) and --preset (from scratch)")
        if self.preset and not self.tokenizer_name_or_path:
            errors.append("--preset needs --tokenizer-name-or-path (a tokenizer or processor folder)")
        if not self.dataset:
            errors.append("--dataset is required")
        if not self.output_dir:
            errors.append("--output-dir is required")
        if self.streaming and not self.max_steps:
            errors.append("--streaming needs --max-steps (a stream has no length)")
        langs = [lang for lang in self.caption_languages if lang != "all"]
        if "all" in self.caption_languages and langs:
            errors.append("--caption-languages: 'all' cannot be combined with other languages")
        for lang in langs + list(self.eval_languages or []):
            if lang not in LANGUAGES:
                errors.append(f"unknown language {lang!r} (known: {', '.join(LANGUAGES)})")
        if self.distillation and self.num_global_crops + self.num_local_crops < 2:
            errors.append("distillation needs at least two crops")
        if self.distillation and self.num_global_crops < 1:
            errors.append("distillation needs at least one global crop")
        if self.clip_view == "global" and self.num_global_crops < 1:
            errors.append("--clip-view global needs a global crop")
        for name in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
        ):
            if getattr(self, name) < 1:
                errors.append(f"--{name.replace('_', '-')} must be >= 1")
        if self.freeze_vision_tower and self.freeze_text_tower and not self.distillation:
            errors.append("both towers frozen and no distillation: nothing to train")
        if self.lora and (self.freeze_vision_tower or self.freeze_text_tower):
            errors.append("--lora already freezes the base weights; drop --freeze-*-tower")
        if self.push_to_hub and not self.hub_model_id:
            errors.append("--push-to-hub needs --hub-model-id")
        if self.report_to not in ("tensorboard", "wandb", "all", "none"):
            errors.append(f"--report-to {self.report_to!r} is not one of tensorboard, wandb, all, none")
        if errors:
            raise ValueError("invalid training configuration:\n  - " + "\n  - ".join(errors))

    # ---------------------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(
            yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8"
        )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "configuration") -> TrainingConfig:
        known = set(cls.field_names())
        normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalised) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown option(s) {', '.join(unknown)}; run with --help for the list"
            )
        return cls(**normalised)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainingConfig:
        return cls.from_dict(read_yaml(path), source=str(path))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"configuration file {path} does not exist")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option: value at the top level")
    return values


# ------------------------------------------------------------------------------------------------------ argparse
def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and one flag per `TrainingConfig` field. Flags default to "not given" (argparse.SUPPRESS)
    so that a YAML file can supply the value; `--help` shows the built-in default."""
    parser.add_argument(
        "--config",
        type=str,
        default=None,
        metavar="YAML",
        help="YAML file of options (keys are the option names with underscores); flags override it.",
    )
    groups = {name: parser.add_argument_group(f"{name} options") for name in _GROUPS}
    for f in dataclasses.fields(TrainingConfig):
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{meta['help']} (default: {shown})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if meta["type"] is None:  # a boolean switch: --flag / --no-flag
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta["type"]
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if meta["nargs"] is not None:
                kwargs["nargs"] = meta["nargs"]
            if not meta["choices"]:
                kwargs["metavar"] = {int: "N", float: "X"}.get(meta["type"], "VALUE")
        groups[meta["group"]].add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """Defaults < `--config` YAML < flags."""
    values: dict[str, Any] = {}
    yaml_path = getattr(args, "config", None)
    if yaml_path:
        values.update({str(k).replace("-", "_"): v for k, v in read_yaml(yaml_path).items()})
    for name in TrainingConfig.field_names():
        if hasattr(args, name):
            values[name] = getattr(args, name)
    return TrainingConfig.from_dict(values, source=yaml_path or "command line")
