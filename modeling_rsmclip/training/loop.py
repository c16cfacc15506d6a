"""The Accelerate training loop: CLIP loss + self-distillation, checkpoints, exact resume, validation, final save.

Runs unchanged on one CPU, one GPU or several GPUs (`accelerate launch` / `torchrun`): DDP wraps the student's
`TrainingModule`; the EMA teacher stays outside `prepare` and is updated from the unwrapped student after every
optimiser step (i.e. only when gradients are synchronised).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, send_to_device, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..evaluation.metrics import retrieval_metrics_by_language
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
from .card import build_model_card
from .checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    resume_latest_checkpoint,
    save_checkpoint,
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
from .teacher import EMATeacher, cosine_momentum, teacher_temperature

logger = get_logger(__name__)  # logs on the main process only


class NonFiniteLossError(RuntimeError):
    """Too many optimiser steps in a row had a non-finite loss or gradient."""


@dataclass
class TrainResult:
    """What `train` returns: where the model went, how far it got, and the logged values."""

    output_dir: Path
    step: int
    nonfinite_steps: int
    log_history: list[dict[str, Any]] = field(default_factory=list)
    eval_results: dict[str, dict[str, float]] | None = None


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


def _hparams(config: TrainingConfig) -> dict[str, Any]:
    """Tracker-friendly hyper-parameters (scalars and strings only)."""
    out: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if value is None:
            value = "none"
        elif isinstance(value, list | tuple):
            value = " ".join(map(str, value))
        out[key] = value
    return out


def _languages_of(config: TrainingConfig) -> list[str]:
    langs = allowed_languages(config.caption_languages)
    return list(LANGUAGES) if langs is None else langs


@torch.no_grad()
def evaluate_retrieval(
    model: Any,
    loader: DataLoader,
    tokenizer: Any,
    accelerator: Accelerator,
    max_length: int,
    text_batch_size: int,
) -> dict[str, dict[str, float]]:
    """Image<->text retrieval (R@1/5/10 and mR, per language) of `model` on a validation loader."""
    was_training = model.training
    model.eval()
    image_embeds, texts, text_to_image, text_langs = [], [], [], []
    num_images = 0
    try:
        for batch in tqdm(
            loader, desc="validation", leave=False, disable=not accelerator.is_local_main_process
        ):
            pixel_values = batch["pixel_values"].to(accelerator.device)
            with accelerator.autocast():
                image_embeds.append(
                    model.get_image_features(pixel_values=pixel_values).pooler_output.float().cpu()
                )
            for offset, captions in enumerate(batch["captions"]):
                for lang, text in captions:
                    texts.append(text)
                    text_to_image.append(num_images + offset)
                    text_langs.append(lang)
            num_images += len(pixel_values)
        text_embeds = []
        for start in range(0, len(texts), text_batch_size):
            tokens = tokenizer(
                texts[start : start + text_batch_size],
                padding="longest",
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(accelerator.device)
            with accelerator.autocast():
                text_embeds.append(
                    model.get_text_features(
                        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                    )
                    .pooler_output.float()
                    .cpu()
                )
    finally:
        model.train(was_training)
    if not texts:
        raise ValueError("the validation split has no caption in the evaluation languages")
    results = retrieval_metrics_by_language(
        torch.cat(image_embeds), torch.cat(text_embeds), text_to_image, text_langs
    )
    order = {lang: i for i, lang in enumerate(LANGUAGES)}
    return {
        lang: dict(results[lang]) for lang in sorted(results, key=lambda lang: order.get(lang, len(order)))
    }


# --------------------------------------------------------------------------------------------------------- train
def train(
    config: TrainingConfig,
    *,
    step_callback: Callable[[int, torch.nn.Module], None] | None = None,
) -> TrainResult:
    """Run the training recipe described by `config` (see `TrainingConfig`).

    `step_callback(step, student)` is called on every process after each optimiser step (after any checkpoint of
    that step) with the unwrapped student (the `RSMCLIPModel`, or its peft wrapper with LoRA).
    """
    config.validate()
    output_dir = Path(config.output_dir)
    checkpoints_dir = output_dir / "checkpoints"
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

    # ---------------------------------------------------------------------------------------------- model
    set_seed(config.seed)
    model, processor = load_model_and_processor(config)
    if config.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    freeze_towers(model, config)
    student = apply_lora(model, config) if config.lora else model
    core = core_model(student)
    vision_config = core.config.vision_config
    image_size = vision_config.image_size
    logit_scale_max = (
        config.logit_scale_max if config.logit_scale_max is not None else core.config.logit_scale_max
    )
    teacher = EMATeacher(core.vision_model, core.distillation_head) if config.distillation else None
    dino_loss = (
        DINOLoss(
            core.config.dino_out_dim,
            num_global_views=config.num_global_crops,
            student_temp=config.student_temp,
            center_momentum=config.center_momentum,
        )
        if config.distillation
        else None
    )
    clip_loss = ClipLoss(local_loss=config.local_loss)

    # ----------------------------------------------------------------------------------------------- data
    image_processor = processor.image_processor
    mean = tuple(getattr(image_processor, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
    std = tuple(getattr(image_processor, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
    needs_crops = config.distillation or config.clip_view == "global"
    multicrop = None
    if needs_crops:
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
    transform = SampleTransform(clip_transform, multicrop, config.caption_languages, seed=config.seed)
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
    train_rows: int | None = None
    sources: dict[str, int] | None = None
    if config.streaming:
        if config.max_train_samples:
            rows = rows.take(config.max_train_samples)
        examples: Any = StreamingExamples(
            rows,
            transform,
            seed=config.seed,
            buffer_size=config.shuffle_buffer_size,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
        )
        train_loader = DataLoader(examples, **loader_kwargs)
        steps_per_epoch = None
    else:
        if config.max_train_samples:
            rows = rows.select(range(min(config.max_train_samples, len(rows))))
        train_rows = len(rows)
        if "source" in rows.column_names:
            sources = dict(Counter(s or "unknown" for s in rows["source"]))
        examples = TrainingExamples(rows, transform)
        global_batch = config.per_device_train_batch_size * accelerator.num_processes
        # Every epoch is a whole number of optimiser steps (the permutation's tail that does not fill one is
        # left out, a different tail each epoch), and one sampler spans all epochs.
        samples_per_step = global_batch * config.gradient_accumulation_steps
        steps_per_epoch = len(examples) // samples_per_step
        if steps_per_epoch < 1:
            raise ValueError(
                f"the training split has {len(examples)} rows, fewer than one optimiser step "
                f"({global_batch} per batch x {config.gradient_accumulation_steps} accumulation steps); lower "
                f"--per-device-train-batch-size or --gradient-accumulation-steps"
            )
        batches_per_epoch = steps_per_epoch * config.gradient_accumulation_steps  # per process
        total_steps = config.max_steps or max(1, math.ceil(config.num_train_epochs * steps_per_epoch))
        sampler = EpochSpanningSampler(
            len(examples),
            seed=config.seed,
            samples_per_epoch=steps_per_epoch * samples_per_step,
            num_epochs=math.ceil(total_steps / steps_per_epoch),
        )
        train_loader = DataLoader(examples, sampler=sampler, **loader_kwargs)
    val_loader = None
    eval_languages = list(config.eval_languages or _languages_of(config))
    if config.validation_split:
        val_rows = load_split(config.dataset, config.validation_split, config_name=config.dataset_config_name)
        if config.max_eval_samples:
            val_rows = val_rows.select(range(min(config.max_eval_samples, len(val_rows))))
        val_loader = DataLoader(
            ValidationExamples(val_rows, build_clip_transform(image_size, mean, std), eval_languages),
            batch_size=config.per_device_eval_batch_size,
            collate_fn=collate_validation,
            num_workers=config.dataloader_num_workers,
            generator=torch.Generator().manual_seed(config.seed),
        )

    # ------------------------------------------------------------------------------------------ optimiser
    train_module = TrainingModule(student, clip_view=config.clip_view, distillation=config.distillation)
    raw_optimizer = optimizer = torch.optim.AdamW(
        parameter_groups(student, config),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )
    if config.streaming:
        train_module, optimizer = accelerator.prepare(train_module, optimizer)
    else:
        train_module, optimizer, train_loader = accelerator.prepare(train_module, optimizer, train_loader)
    if config.max_steps:
        total_steps = config.max_steps
    else:
        total_steps = max(1, math.ceil(config.num_train_epochs * steps_per_epoch))
    # accelerate steps a prepared scheduler once per process at every optimiser step.
    lr_scheduler = get_scheduler(
        config.lr_scheduler_type,
        optimizer=raw_optimizer,
        num_warmup_steps=config.warmup_steps * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    lr_scheduler = accelerator.prepare(lr_scheduler)
    if teacher is not None:
        teacher.to(accelerator.device)
        dino_loss.to(accelerator.device)
    trainable = [p for p in train_module.parameters() if p.requires_grad]
    head_last_layer = [
        p
        for n, p in student.named_parameters()
        if p.requires_grad and "distillation_head" in n and "last_layer" in n
    ]

    # -------------------------------------------------------------------------------------------- resume
    state = TrainerState()
    if config.resume_from_checkpoint:
        center = dino_loss.center if dino_loss is not None else None
        if config.resume_from_checkpoint == "latest":  # a damaged checkpoint falls back to the previous one
            path, state = resume_latest_checkpoint(accelerator, checkpoints_dir, teacher, center)
        else:
            path = Path(config.resume_from_checkpoint)
            state = load_checkpoint(accelerator, path, teacher, center)
        if path is None:
            logger.info("no checkpoint in %s: starting from scratch", checkpoints_dir)
        else:
            logger.info(
                "resumed from %s at step %d (epoch %d, batch %d)",
                path,
                state.step,
                state.epoch,
                state.batches_in_epoch,
            )
    else:
        # Different dropout masks on every process (the initialisation above used the same seed everywhere).
        set_seed(config.seed + accelerator.process_index)
    accelerator.init_trackers(config.project_name, config=_hparams(config))

    # ------------------------------------------------------------------------------------------------ loop
    fp16 = accelerator.mixed_precision == "fp16"
    max_norm = config.max_grad_norm if config.max_grad_norm and config.max_grad_norm > 0 else float("inf")
    progress = tqdm(
        total=total_steps, initial=state.step, desc="training", disable=not accelerator.is_local_main_process
    )
    running: dict[str, torch.Tensor] = {}
    running_count = 0
    window_bad = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    last_log_time, last_log_samples = time.perf_counter(), state.samples_seen
    eval_results: dict[str, dict[str, float]] | None = None
    last_eval_step = -1

    def run_validation() -> None:
        nonlocal eval_results, last_eval_step
        if val_loader is None or last_eval_step == state.step:
            return
        if accelerator.is_main_process:
            eval_results = evaluate_retrieval(
                core,
                val_loader,
                processor.tokenizer,
                accelerator,
                config.max_text_length,
                config.per_device_eval_batch_size,
            )
            metrics = {f"val/mR_{lang}": m["mR"] for lang, m in eval_results.items()}
            metrics["val/mR"] = sum(m["mR"] for m in eval_results.values()) / len(eval_results)
            accelerator.log(metrics, step=state.step)
            state.log_history.append({"step": state.step, **metrics})
            progress.write(f"step {state.step}: validation mR {metrics['val/mR']:.2f}")
        last_eval_step = state.step
        accelerator.wait_for_everyone()

    momentum, temp = float("nan"), float("nan")
    while state.step < total_steps:
        epoch = state.epoch
        batches_this_pass = 0
        examples.set_epoch(epoch)
        if not config.streaming:  # one pass over the spanning sampler, from where the state is
            sampler.set_start(epoch, state.batches_in_epoch * global_batch)
        loader: Any = train_loader
        to_skip = state.batches_in_epoch if config.streaming else 0
        for batch in loader:
            if to_skip:  # a stream cannot seek: re-read and drop what the interrupted run consumed
                to_skip -= 1
                continue
            if config.streaming:
                batch = send_to_device(batch, accelerator.device)
            state.batches_in_epoch += 1
            batches_this_pass += 1
            with accelerator.accumulate(train_module):
                out = train_module(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    pixel_values=batch.get("pixel_values"),
                    global_crops=batch.get("global_crops"),
                    local_crops=batch.get("local_crops"),
                )
                loss_clip = clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"])
                loss = loss_clip
                losses = {"loss_clip": loss_clip.detach()}
                if teacher is not None:
                    with accelerator.autocast():
                        teacher_logits = teacher(batch["global_crops"])
                    temp = teacher_temperature(
                        state.step,
                        config.teacher_temp_warmup_steps,
                        config.warmup_teacher_temp,
                        config.teacher_temp,
                    )
                    loss_dino = dino_loss(out["student_logits"], teacher_logits, temp)
                    loss = loss + config.distillation_weight * loss_dino
                    losses["loss_distillation"] = loss_dino.detach()
                losses["loss"] = loss.detach()
                window_bad |= ~torch.isfinite(loss.detach())
                accelerator.backward(loss)
                for key, value in losses.items():
                    running[key] = running.get(key, 0.0) + value.float()
                running_count += 1

                if not accelerator.sync_gradients:
                    continue
                if state.step < config.freeze_last_layer_steps:
                    for param in head_last_layer:
                        param.grad = None
                grad_norm = accelerator.clip_grad_norm_(trainable, max_norm)
                bad = window_bad.clone()
                if not fp16 and grad_norm is not None:  # fp16 overflow is the grad scaler's business
                    bad |= ~torch.isfinite(grad_norm)
                # One small all-reduce per optimiser step: every process takes the same decision.
                any_bad = bool(accelerator.reduce(bad.float(), reduction="sum").item() > 0)
                window_bad.zero_()
                if any_bad:
                    optimizer.zero_grad(set_to_none=True)
                    state.nonfinite_steps += 1
                    state.consecutive_nonfinite += 1
                else:
                    optimizer.step()
                    state.consecutive_nonfinite = 0
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            # ------------------------------------------------------------------ after an optimiser step
            state.step += 1
            epoch = state.epoch
            if not config.streaming and state.batches_in_epoch >= batches_per_epoch:
                state.epoch, state.batches_in_epoch = epoch + 1, 0
            state.samples_seen += (
                config.per_device_train_batch_size * accelerator.num_processes * running_count
            )
            if not any_bad:
                with torch.no_grad():
                    core.logit_scale.clamp_(0, logit_scale_max)
                if teacher is not None:
                    momentum = cosine_momentum(
                        state.step - 1, total_steps, config.teacher_momentum, config.teacher_momentum_final
                    )
                    unwrapped = core_model(accelerator.unwrap_model(train_module).model)
                    teacher.update(unwrapped.vision_model, unwrapped.distillation_head, momentum)
            progress.update(1)
            if state.consecutive_nonfinite >= config.max_consecutive_nonfinite:
                raise NonFiniteLossError(
                    f"{state.consecutive_nonfinite} optimiser steps in a row (up to step {state.step}) had a "
                    f"non-finite loss or gradient; each was skipped. Lower the learning rate, check the data, or "
                    f"use bf16 instead of fp16. Last good checkpoint: {latest_checkpoint(checkpoints_dir)}"
                )
            if state.step % config.logging_steps == 0 or state.step == total_steps:
                values = {
                    k: accelerator.reduce(v / running_count, reduction="mean").item()
                    for k, v in running.items()
                }
                now = time.perf_counter()
                values.update(
                    {
                        "lr": lr_scheduler.get_last_lr()[0],
                        "logit_scale": float(core.logit_scale.exp().item()),
                        "grad_norm": float(grad_norm.item()) if grad_norm is not None else float("nan"),
                        "nonfinite_steps": state.nonfinite_steps,
                        "epoch": epoch,
                        "samples_per_second": (state.samples_seen - last_log_samples)
                        / max(now - last_log_time, 1e-9),
                    }
                )
                if teacher is not None:
                    values["teacher_momentum"] = momentum
                    values["teacher_temp"] = temp
                accelerator.log(values, step=state.step)
                state.log_history.append({"step": state.step, **values})
                progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
                last_log_time, last_log_samples = now, state.samples_seen
            running, running_count = {}, 0
            if val_loader is not None and config.eval_steps and state.step % config.eval_steps == 0:
                run_validation()
            if config.save_steps and (state.step % config.save_steps == 0 or state.step == total_steps):
                snapshot = TrainerState(**{**state.__dict__})
                saved = save_checkpoint(
                    accelerator,
                    checkpoints_dir,
                    snapshot,
                    teacher,
                    dino_loss.center if dino_loss is not None else None,
                    config.save_total_limit,
                    extra_files={"training_config.json": json.dumps(config.to_dict(), indent=1)},
                )
                logger.info("step %d: checkpoint saved to %s", state.step, saved)
            if step_callback is not None:
                step_callback(state.step, accelerator.unwrap_model(train_module).model)
            if state.step >= total_steps:
                break
        else:  # the loader is exhausted: next epoch (a stream), or the spanning sampler's last epoch is done
            if not config.streaming:
                if batches_this_pass == 0:  # would loop for ever
                    raise RuntimeError(f"the training sampler ran out at step {state.step} of {total_steps}")
                continue
            if batches_this_pass == 0:
                raise ValueError(
                    f"the training stream yielded no full batch of {config.per_device_train_batch_size} in epoch "
                    f"{epoch}: it has too few rows for this batch size and number of processes"
                )
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()

    # ------------------------------------------------------------------------------------------------- end
    run_validation()
    accelerator.wait_for_everyone()
    unwrapped_student = accelerator.unwrap_model(train_module).model
    if accelerator.is_main_process:
        final_model = unwrapped_student
        if config.lora:
            unwrapped_student.save_pretrained(str(output_dir / "adapter"))
            final_model = unwrapped_student.merge_and_unload()
        final_model.save_pretrained(str(output_dir))
        processor.save_pretrained(str(output_dir))
        card = build_model_card(
            config,
            languages=_languages_of(config),
            num_processes=accelerator.num_processes,
            total_steps=state.step,
            train_rows=train_rows,
            sources=sources,
            results=eval_results,
            mixed_precision=accelerator.mixed_precision,
        )
        card.save(str(output_dir / "README.md"))
        results = {
            "step": state.step,
            "samples_seen": state.samples_seen,
            "nonfinite_steps": state.nonfinite_steps,
            "validation": eval_results,
            "log_history": state.log_history,
        }
        (output_dir / "train_results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        if config.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(config.hub_model_id, private=config.hub_private_repo, exist_ok=True)
            api.upload_folder(
                repo_id=config.hub_model_id,
                folder_path=str(output_dir),
                ignore_patterns=["checkpoints/*", "logs/*", "*.tmp/*"],
                commit_message=f"RS-M-CLIP trained for {state.step} steps",
            )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        output_dir=output_dir,
        step=state.step,
        nonfinite_steps=state.nonfinite_steps,
        log_history=list(state.log_history),
        eval_results=eval_results,
    )
