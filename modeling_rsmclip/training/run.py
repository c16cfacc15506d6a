"""What a training run is made of, built once before the first step: `build_run(config) -> TrainRun`.

The setup reads as DINO's `train_dino()` banners, one function each: the accelerator, the student (LoRA, frozen
parts) with its EMA teacher and losses, the training and validation data, then the optimiser and the learning-rate
schedule, all prepared by Accelerate. The order of these steps is the order in which they draw random numbers
(initialisation, LoRA adapters): changing it changes the run.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_scheduler

from ..modeling_rsmclip import RSMCLIPModel
from ..templates import LANGUAGES
from .augment import MultiCropAugmentation, MultiCropConfig, build_clip_transform
from .build import (
    TrainingModule,
    apply_lora,
    core_model,
    freeze_towers,
    load_model_and_processor,
    parameter_groups,
)
from .config import TrainingConfig
from .data import (
    EpochSpanningSampler,
    SampleTransform,
    StreamingExamples,
    TrainingCollator,
    TrainingExamples,
    ValidationExamples,
    allowed_languages,
    collate_validation,
    load_split,
)
from .losses import ClipLoss, DINOLoss
from .teacher import EMATeacher

# OpenAI CLIP's normalisation, for an image processor that does not say.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TrainData:
    """The training examples, their loader, and how many optimiser steps the run takes."""

    examples: TrainingExamples | StreamingExamples
    loader: DataLoader
    sampler: EpochSpanningSampler | None  # one sampler spanning every epoch; None for a stream
    total_steps: int
    global_batch: int  # pairs per micro-step over all processes
    batches_per_epoch: int | None  # micro-batches per process in an epoch; None for a stream
    train_rows: int | None  # None for a stream
    sources: dict[str, int] | None  # rows per `source`, when the dataset has that column


@dataclass
class TrainRun:
    """Everything `build_run` sets up. The loop changes the models, the optimiser and the schedule, nothing else;
    where the loop stands is the `TrainerState` (what a checkpoint holds)."""

    config: TrainingConfig
    accelerator: Accelerator
    processor: Any
    student: nn.Module  # the unwrapped student: the RSMCLIPModel, or its peft wrapper with LoRA
    core: RSMCLIPModel  # the RSMCLIPModel inside the student
    train_module: nn.Module  # the TrainingModule, prepared (DDP-wrapped on several processes)
    optimizer: Any
    lr_scheduler: Any
    clip_loss: ClipLoss
    teacher: EMATeacher | None  # None without distillation
    dino_loss: DINOLoss | None
    data: TrainData
    val_loader: DataLoader | None
    trainable: list[nn.Parameter]  # what gradient clipping sees
    head_last_layer: list[nn.Parameter]  # frozen for the first --freeze-last-layer-steps steps
    logit_scale_max: float

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def total_steps(self) -> int:
        return self.data.total_steps


# ------------------------------------------------------------------------------------------------------ helpers
def default_local_crop_size(image_size: int, patch_size: int) -> int:
    """96 px for a 224 px model (DINO), i.e. 3/7 of the image size, rounded to a multiple of the patch size."""
    return max(patch_size, int(round(image_size * 3 / 7 / patch_size)) * patch_size)


def _distributed_cpu_launch() -> bool:
    """Several processes started by torchrun/mpirun on a machine without an accelerator: Accelerate then needs
    `cpu=True` to set up the gloo process group (on GPUs it picks NCCL by itself)."""
    import os

    world_size = max(
        int(os.environ.get(name, "1") or 1) for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
    )
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return world_size > 1 and not torch.cuda.is_available() and not has_xpu


def _trackers(report_to: str) -> list[str]:
    import importlib.util

    has_wandb = importlib.util.find_spec("wandb") is not None
    if report_to == "none":
        return []
    if report_to == "wandb" and not has_wandb:
        raise ValueError("--report-to wandb needs the wandb package (pip install wandb)")
    if report_to == "all":
        return ["tensorboard"] + (["wandb"] if has_wandb else [])
    return [report_to]


def languages_of(config: TrainingConfig) -> list[str]:
    """The caption languages the run trains on (all known languages for 'all')."""
    langs = allowed_languages(config.caption_languages)
    return list(LANGUAGES) if langs is None else langs


def total_steps_of(config: TrainingConfig, steps_per_epoch: int | None) -> int:
    """Optimiser steps of the run: --max-steps, else --num-train-epochs' worth (a stream needs --max-steps)."""
    if config.max_steps:
        return config.max_steps
    return max(1, math.ceil(config.num_train_epochs * steps_per_epoch))


def _normalisation(processor: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    image_processor = processor.image_processor
    mean = tuple(getattr(image_processor, "image_mean", None) or CLIP_MEAN)
    std = tuple(getattr(image_processor, "image_std", None) or CLIP_STD)
    return mean, std


# ------------------------------------------------------------------------------------------- the setup steps
def _make_accelerator(config: TrainingConfig) -> Accelerator:
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=config.use_cpu or _distributed_cpu_launch(),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=_trackers(config.report_to) or None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(even_batches=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("modeling_rsmclip").setLevel(logging.INFO)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        config.to_yaml(output_dir / "training_config.yaml")
    return accelerator


def _build_student(config: TrainingConfig) -> tuple[nn.Module, Any]:
    """The student (gradient checkpointing, frozen towers, LoRA adapters) and its processor."""
    model, processor = load_model_and_processor(config)
    if config.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    freeze_towers(model, config)
    student = apply_lora(model, config) if config.lora else model
    return student, processor


def _build_distillation(
    config: TrainingConfig, core: RSMCLIPModel
) -> tuple[EMATeacher | None, DINOLoss | None]:
    """The EMA teacher (a copy of the student's image tower and head) and the DINO loss; none without distillation."""
    if not config.distillation:
        return None, None
    teacher = EMATeacher(core.vision_model, core.distillation_head)
    dino_loss = DINOLoss(
        core.config.dino_out_dim,
        num_global_views=config.num_global_crops,
        student_temp=config.student_temp,
        center_momentum=config.center_momentum,
    )
    return teacher, dino_loss


def _sample_transform(config: TrainingConfig, processor: Any, core: RSMCLIPModel) -> SampleTransform:
    """A row -> the CLIP view and/or the multi-crop views, and one caption of an allowed language."""
    vision_config = core.config.vision_config
    image_size = vision_config.image_size
    mean, std = _normalisation(processor)
    multicrop = None
    if config.distillation or config.clip_view == "global":
        multicrop = MultiCropAugmentation(
            MultiCropConfig(
                num_global_crops=config.num_global_crops if config.distillation else 1,
                num_local_crops=config.num_local_crops if config.distillation else 0,
                global_crop_size=config.global_crop_size or image_size,
                local_crop_size=config.local_crop_size
                or default_local_crop_size(image_size, vision_config.patch_size),
                global_crop_scale=tuple(config.global_crop_scale),
                local_crop_scale=tuple(config.local_crop_scale),
                flip_rotate=config.crop_flip_rotate,
                color_jitter_prob=config.color_jitter_prob,
                color_jitter=tuple(config.color_jitter),
                grayscale_prob=config.grayscale_prob,
                blur_prob_global=tuple(config.blur_prob_global),
                blur_prob_local=config.blur_prob_local,
                solarize_prob_global=tuple(config.solarize_prob_global),
            ),
            mean=mean,
            std=std,
        )
    clip_transform = (
        build_clip_transform(image_size, mean, std, flip_rotate=config.clip_flip_rotate)
        if config.clip_view == "center"
        else None
    )
    return SampleTransform(clip_transform, multicrop, config.caption_languages, seed=config.seed)


def _build_train_data(
    config: TrainingConfig, processor: Any, core: RSMCLIPModel, accelerator: Accelerator
) -> TrainData:
    """The training split as a loader of collated micro-batches, and the number of optimiser steps.

    A map-style split is read through one `EpochSpanningSampler` over all epochs: every epoch is a whole number of
    optimiser steps (the permutation's tail that does not fill one is left out, a different tail each epoch). A
    stream is split between processes and shuffled with a buffer."""
    transform = _sample_transform(config, processor, core)
    collator = TrainingCollator(processor.tokenizer, max_length=config.max_text_length)
    rows = load_split(
        config.dataset, config.train_split, config_name=config.dataset_config_name, streaming=config.streaming
    )
    loader_kwargs = {
        "batch_size": config.per_device_train_batch_size,
        "collate_fn": collator,
        "num_workers": config.dataloader_num_workers,
        "pin_memory": accelerator.device.type == "cuda",
        "drop_last": True,  # equal batches on every process: the all-gather of the CLIP loss needs them
        # Worker seeds come from this generator, not from the global RNG that dropout uses (exact resume).
        "generator": torch.Generator().manual_seed(config.seed),
    }
    global_batch = config.per_device_train_batch_size * accelerator.num_processes
    if config.streaming:
        if config.max_train_samples:
            rows = rows.take(config.max_train_samples)
        examples = StreamingExamples(
            rows,
            transform,
            seed=config.seed,
            buffer_size=config.shuffle_buffer_size,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
        )
        return TrainData(
            examples=examples,
            loader=DataLoader(examples, **loader_kwargs),
            sampler=None,
            total_steps=total_steps_of(config, None),
            global_batch=global_batch,
            batches_per_epoch=None,
            train_rows=None,
            sources=None,
        )
    if config.max_train_samples:
        rows = rows.select(range(min(config.max_train_samples, len(rows))))
    sources = dict(Counter(s or "unknown" for s in rows["source"])) if "source" in rows.column_names else None
    examples = TrainingExamples(rows, transform)
    samples_per_step = global_batch * config.gradient_accumulation_steps
    steps_per_epoch = len(examples) // samples_per_step
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training split has {len(examples)} rows, fewer than one optimiser step "
            f"({global_batch} per batch x {config.gradient_accumulation_steps} accumulation steps); lower "
            f"--per-device-train-batch-size or --gradient-accumulation-steps"
        )
    total_steps = total_steps_of(config, steps_per_epoch)
    sampler = EpochSpanningSampler(
        len(examples),
        seed=config.seed,
        samples_per_epoch=steps_per_epoch * samples_per_step,
        num_epochs=math.ceil(total_steps / steps_per_epoch),
    )
    return TrainData(
        examples=examples,
        loader=DataLoader(examples, sampler=sampler, **loader_kwargs),
        sampler=sampler,
        total_steps=total_steps,
        global_batch=global_batch,
        batches_per_epoch=steps_per_epoch * config.gradient_accumulation_steps,
        train_rows=len(rows),
        sources=sources,
    )


def _build_validation_loader(config: TrainingConfig, processor: Any, core: RSMCLIPModel) -> DataLoader | None:
    """The validation split (centre crops, captions of the evaluation languages); None without one."""
    if not config.validation_split:
        return None
    eval_languages = list(config.eval_languages or languages_of(config))
    image_size = core.config.vision_config.image_size
    mean, std = _normalisation(processor)
    val_rows = load_split(config.dataset, config.validation_split, config_name=config.dataset_config_name)
    if config.max_eval_samples:
        val_rows = val_rows.select(range(min(config.max_eval_samples, len(val_rows))))
    return DataLoader(
        ValidationExamples(val_rows, build_clip_transform(image_size, mean, std), eval_languages),
        batch_size=config.per_device_eval_batch_size,
        collate_fn=collate_validation,
        num_workers=config.dataloader_num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )


# ------------------------------------------------------------------------------------------------- build_run
def build_run(config: TrainingConfig) -> TrainRun:
    """Set up the run that `config` describes (see the module docstring); writes OUTPUT_DIR/training_config.yaml.

    The configuration is validated first: a `ConfigError` lists its problems before anything is loaded or written.
    """
    config.validate()

    # ============ accelerator ============
    accelerator = _make_accelerator(config)

    # ============ student, teacher and losses ============
    set_seed(config.seed)
    student, processor = _build_student(config)
    core = core_model(student)
    teacher, dino_loss = _build_distillation(config, core)
    clip_loss = ClipLoss(local_loss=config.local_loss)

    # ============ data ============
    data = _build_train_data(config, processor, core, accelerator)
    val_loader = _build_validation_loader(config, processor, core)

    # ============ optimiser and learning-rate schedule ============
    train_module = TrainingModule(student, clip_view=config.clip_view, distillation=config.distillation)
    raw_optimizer = torch.optim.AdamW(
        parameter_groups(student, config),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )
    if config.streaming:
        train_module, optimizer = accelerator.prepare(train_module, raw_optimizer)
    else:
        train_module, optimizer, data.loader = accelerator.prepare(train_module, raw_optimizer, data.loader)
    # accelerate steps a prepared scheduler once per process at every optimiser step.
    lr_scheduler = get_scheduler(
        config.lr_scheduler_type,
        optimizer=raw_optimizer,
        num_warmup_steps=config.warmup_steps * accelerator.num_processes,
        num_training_steps=data.total_steps * accelerator.num_processes,
    )
    lr_scheduler = accelerator.prepare(lr_scheduler)
    if teacher is not None:
        teacher.to(accelerator.device)
        dino_loss.to(accelerator.device)
    return TrainRun(
        config=config,
        accelerator=accelerator,
        processor=processor,
        student=student,
        core=core,
        train_module=train_module,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        clip_loss=clip_loss,
        teacher=teacher,
        dino_loss=dino_loss,
        data=data,
        val_loader=val_loader,
        trainable=[p for p in train_module.parameters() if p.requires_grad],
        head_last_layer=[
            p
            for n, p in student.named_parameters()
            if p.requires_grad and "distillation_head" in n and "last_layer" in n
        ],
        logit_scale_max=(
            config.logit_scale_max if config.logit_scale_max is not None else core.config.logit_scale_max
        ),
    )
