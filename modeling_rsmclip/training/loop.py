"""The Accelerate training loop: CLIP loss + self-distillation, checkpoints, exact resume, validation, final save.

Runs unchanged on one CPU, one GPU or several GPUs (`accelerate launch` / `torchrun`): DDP wraps the student's
`TrainingModule`; the EMA teacher stays outside `prepare` and is updated from the unwrapped student after every
optimiser step (i.e. only when gradients are synchronised).

`train(config)` reads as a run: `build_run` (the setup, `run.py`), the start or resume from a checkpoint,
`train_steps` (micro-batches through `train_step`; every accumulation window ends in `_optimizer_step`, then
`_end_of_step` logs, validates and checkpoints), and `_finalise` (the final model, its card and results). What a
checkpoint restores is the `TrainerState`; the `_Meters` are what the loop measures and reports.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import send_to_device, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..evaluation.metrics import retrieval_metrics_by_language
from ..templates import LANGUAGES
from .build import core_model
from .card import build_model_card
from .checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    resume_latest_checkpoint,
    save_checkpoint,
)
from .config import TrainingConfig
from .run import TrainRun, build_run, default_local_crop_size, languages_of
from .teacher import cosine_momentum, teacher_temperature

logger = get_logger(__name__)  # logs on the main process only

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "build_run",
    "default_local_crop_size",
    "train",
    "train_steps",
]

StepCallback = Callable[[int, torch.nn.Module], None]


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


@dataclass
class _Meters:
    """What the loop measures and reports; not checkpointed (a resumed run starts with new meters)."""

    progress: tqdm
    nonfinite: torch.Tensor  # a non-finite loss in one of the current optimiser step's micro-batches
    last_log_time: float
    last_log_samples: int
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # summed over the step's micro-batches
    micro_batches: int = 0
    grad_norm: torch.Tensor | None = None
    teacher_momentum: float = math.nan  # the latest values, logged with the losses
    teacher_temp: float = math.nan
    eval_results: dict[str, dict[str, float]] | None = None
    last_eval_step: int = -1

    @classmethod
    def start(cls, run: TrainRun, state: TrainerState) -> _Meters:
        accelerator = run.accelerator
        return cls(
            progress=tqdm(
                total=run.total_steps,
                initial=state.step,
                desc="training",
                disable=not accelerator.is_local_main_process,
            ),
            nonfinite=torch.zeros((), dtype=torch.bool, device=accelerator.device),
            last_log_time=time.perf_counter(),
            last_log_samples=state.samples_seen,
        )


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
def train(config: TrainingConfig, *, step_callback: StepCallback | None = None) -> TrainResult:
    """Run the training recipe described by `config` (see `TrainingConfig`).

    `step_callback(step, student)` is called on every process after each optimiser step (after any checkpoint of
    that step) with the unwrapped student (the `RSMCLIPModel`, or its peft wrapper with LoRA).
    """
    run = build_run(config)  # validates the configuration first
    state = _start(run)
    run.accelerator.init_trackers(config.project_name, config=_hparams(config))
    meters = _Meters.start(run, state)
    train_steps(run, state, meters, step_callback=step_callback)
    return _finalise(run, state, meters)


def _start(run: TrainRun) -> TrainerState:
    """Where the loop starts: the state restored from a checkpoint (`--resume-from-checkpoint`), else step 0."""
    config, accelerator = run.config, run.accelerator
    if not config.resume_from_checkpoint:
        # Different dropout masks on every process (the initialisation used the same seed everywhere).
        set_seed(config.seed + accelerator.process_index)
        return TrainerState()
    modules = {"teacher": run.teacher, "dino_loss": run.dino_loss}
    if config.resume_from_checkpoint == "latest":  # a damaged checkpoint falls back to the previous one
        path, state = resume_latest_checkpoint(accelerator, run.checkpoints_dir, **modules)
    else:
        path = Path(config.resume_from_checkpoint)
        state = load_checkpoint(accelerator, path, **modules)
    if path is None:
        logger.info("no checkpoint in %s: starting from scratch", run.checkpoints_dir)
    else:
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            path,
            state.step,
            state.epoch,
            state.batches_in_epoch,
        )
    return state


def train_steps(
    run: TrainRun, state: TrainerState, meters: _Meters, *, step_callback: StepCallback | None = None
) -> None:
    """Train from `state` until `run.total_steps` optimiser steps are done, over as many epochs as that takes.

    A map-style split is one pass of the epoch-spanning sampler, started where `state` stands; a stream is read
    epoch by epoch, and on resume the batches the interrupted run consumed are read again and dropped."""
    config, data, accelerator = run.config, run.data, run.accelerator
    while state.step < run.total_steps:
        epoch = state.epoch
        batches_this_pass = 0
        data.examples.set_epoch(epoch)
        if data.sampler is not None:
            data.sampler.set_start(epoch, state.batches_in_epoch * data.global_batch)
        to_skip = state.batches_in_epoch if config.streaming else 0
        for batch in data.loader:
            if to_skip:  # a stream cannot seek
                to_skip -= 1
                continue
            if config.streaming:
                batch = send_to_device(batch, accelerator.device)
            state.batches_in_epoch += 1
            batches_this_pass += 1
            if not train_step(run, state, meters, batch):
                continue  # inside an accumulation window
            _end_of_step(run, state, meters, step_callback)
            if state.step >= run.total_steps:
                break
        else:  # the loader is exhausted: next epoch (a stream), or the spanning sampler's last epoch is done
            if batches_this_pass == 0 and not config.streaming:  # would loop for ever
                raise RuntimeError(f"the training sampler ran out at step {state.step} of {run.total_steps}")
            if batches_this_pass == 0:
                raise ValueError(
                    f"the training stream yielded no full batch of {config.per_device_train_batch_size} in epoch "
                    f"{epoch}: it has too few rows for this batch size and number of processes"
                )
            if config.streaming:
                state.epoch += 1
                state.batches_in_epoch = 0
    meters.progress.close()


def train_step(run: TrainRun, state: TrainerState, meters: _Meters, batch: dict[str, Any]) -> bool:
    """One micro-batch: forward, the CLIP (+ distillation) loss, backward; the last micro-batch of an accumulation
    window also takes the optimiser step. Returns whether it did."""
    accelerator = run.accelerator
    with accelerator.accumulate(run.train_module):
        loss, losses = _losses(run, state, meters, batch)
        meters.nonfinite |= ~torch.isfinite(loss.detach())
        accelerator.backward(loss)
        for key, value in losses.items():
            meters.losses[key] = meters.losses.get(key, 0.0) + value.float()
        meters.micro_batches += 1
        if not accelerator.sync_gradients:
            return False
        _optimizer_step(run, state, meters)
    return True


def _losses(
    run: TrainRun, state: TrainerState, meters: _Meters, batch: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The micro-batch's total loss (for backward) and its detached parts to log."""
    config = run.config
    out = run.train_module(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch.get("pixel_values"),
        global_crops=batch.get("global_crops"),
        local_crops=batch.get("local_crops"),
    )
    loss_clip = run.clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"])
    loss = loss_clip
    losses = {"loss_clip": loss_clip.detach()}
    if run.teacher is not None:
        with run.accelerator.autocast():
            teacher_logits = run.teacher(batch["global_crops"])
        meters.teacher_temp = teacher_temperature(
            state.step, config.teacher_temp_warmup_steps, config.warmup_teacher_temp, config.teacher_temp
        )
        loss_dino = run.dino_loss(out["student_logits"], teacher_logits, meters.teacher_temp)
        loss = loss + config.distillation_weight * loss_dino
        losses["loss_distillation"] = loss_dino.detach()
    losses["loss"] = loss.detach()
    return loss, losses


def _optimizer_step(run: TrainRun, state: TrainerState, meters: _Meters) -> None:
    """End of an accumulation window: clip the gradients, skip the step (and count it) when a loss or the gradient
    is not finite on any process, else step; then the learning-rate schedule, the logit-scale clamp and the EMA
    update of the teacher. `state.step` is still the index of this step."""
    config, accelerator, optimizer = run.config, run.accelerator, run.optimizer
    if state.step < config.freeze_last_layer_steps:
        for param in run.head_last_layer:
            param.grad = None
    max_norm = config.max_grad_norm if config.max_grad_norm and config.max_grad_norm > 0 else float("inf")
    meters.grad_norm = accelerator.clip_grad_norm_(run.trainable, max_norm)
    bad = meters.nonfinite.clone()
    if (
        accelerator.mixed_precision != "fp16" and meters.grad_norm is not None
    ):  # fp16: the grad scaler's business
        bad |= ~torch.isfinite(meters.grad_norm)
    # One small all-reduce per optimiser step: every process takes the same decision.
    skipped = bool(accelerator.reduce(bad.float(), reduction="sum").item() > 0)
    meters.nonfinite.zero_()
    if skipped:
        optimizer.zero_grad(set_to_none=True)
        state.nonfinite_steps += 1
        state.consecutive_nonfinite += 1
    else:
        optimizer.step()
        state.consecutive_nonfinite = 0
    run.lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if skipped:
        return
    with torch.no_grad():
        run.core.logit_scale.clamp_(0, run.logit_scale_max)
    if run.teacher is not None:
        meters.teacher_momentum = cosine_momentum(
            state.step, run.total_steps, config.teacher_momentum, config.teacher_momentum_final
        )
        unwrapped = core_model(accelerator.unwrap_model(run.train_module).model)
        run.teacher.update(unwrapped.vision_model, unwrapped.distillation_head, meters.teacher_momentum)


def _end_of_step(
    run: TrainRun, state: TrainerState, meters: _Meters, step_callback: StepCallback | None
) -> None:
    """After an optimiser step: count it, stop on too many non-finite steps, then log, validate and checkpoint
    when their step comes."""
    config, accelerator = run.config, run.accelerator
    state.step += 1
    epoch = state.epoch  # the epoch of this step
    if run.data.batches_per_epoch is not None and state.batches_in_epoch >= run.data.batches_per_epoch:
        state.epoch, state.batches_in_epoch = epoch + 1, 0
    state.samples_seen += (
        config.per_device_train_batch_size * accelerator.num_processes * meters.micro_batches
    )
    meters.progress.update(1)
    if state.consecutive_nonfinite >= config.max_consecutive_nonfinite:
        raise NonFiniteLossError(
            f"{state.consecutive_nonfinite} optimiser steps in a row (up to step {state.step}) had a "
            f"non-finite loss or gradient; each was skipped. Lower the learning rate, check the data, or "
            f"use bf16 instead of fp16. Last good checkpoint: {latest_checkpoint(run.checkpoints_dir)}"
        )
    if state.step % config.logging_steps == 0 or state.step == run.total_steps:
        _log_window(run, state, meters, epoch)
    meters.losses, meters.micro_batches = {}, 0
    if config.eval_steps and state.step % config.eval_steps == 0:
        _validate(run, state, meters)
    if config.save_steps and (state.step % config.save_steps == 0 or state.step == run.total_steps):
        _save_checkpoint(run, state)
    if step_callback is not None:
        step_callback(state.step, accelerator.unwrap_model(run.train_module).model)


def _log_window(run: TrainRun, state: TrainerState, meters: _Meters, epoch: int) -> None:
    """Log the losses of the step just taken (averaged over its micro-batches and the processes), the learning
    rate, temperature, gradient norm, counts and throughput since the last log."""
    accelerator = run.accelerator
    values = {
        k: accelerator.reduce(v / meters.micro_batches, reduction="mean").item()
        for k, v in meters.losses.items()
    }
    now = time.perf_counter()
    values.update(
        {
            "lr": run.lr_scheduler.get_last_lr()[0],
            "logit_scale": float(run.core.logit_scale.exp().item()),
            "grad_norm": float(meters.grad_norm.item()) if meters.grad_norm is not None else float("nan"),
            "nonfinite_steps": state.nonfinite_steps,
            "epoch": epoch,
            "samples_per_second": (state.samples_seen - meters.last_log_samples)
            / max(now - meters.last_log_time, 1e-9),
        }
    )
    if run.teacher is not None:
        values["teacher_momentum"] = meters.teacher_momentum
        values["teacher_temp"] = meters.teacher_temp
    accelerator.log(values, step=state.step)
    state.log_history.append({"step": state.step, **values})
    meters.progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
    meters.last_log_time, meters.last_log_samples = now, state.samples_seen


def _validate(run: TrainRun, state: TrainerState, meters: _Meters) -> None:
    """Retrieval on the validation split (on the main process), logged as `val/mR_<lang>` and `val/mR`; at most
    once per step."""
    if run.val_loader is None or meters.last_eval_step == state.step:
        return
    accelerator, config = run.accelerator, run.config
    if accelerator.is_main_process:
        meters.eval_results = evaluate_retrieval(
            run.core,
            run.val_loader,
            run.processor.tokenizer,
            accelerator,
            config.max_text_length,
            config.per_device_eval_batch_size,
        )
        metrics = {f"val/mR_{lang}": m["mR"] for lang, m in meters.eval_results.items()}
        metrics["val/mR"] = sum(m["mR"] for m in meters.eval_results.values()) / len(meters.eval_results)
        accelerator.log(metrics, step=state.step)
        state.log_history.append({"step": state.step, **metrics})
        meters.progress.write(f"step {state.step}: validation mR {metrics['val/mR']:.2f}")
    meters.last_eval_step = state.step
    accelerator.wait_for_everyone()


def _save_checkpoint(run: TrainRun, state: TrainerState) -> None:
    """Checkpoint the run (collective): accelerate's state, the teacher and the DINO loss, the loop position."""
    config = run.config
    saved = save_checkpoint(
        run.accelerator,
        run.checkpoints_dir,
        TrainerState(**{**state.__dict__}),
        total_limit=config.save_total_limit,
        extra_files={"training_config.json": json.dumps(config.to_dict(), indent=1)},
        teacher=run.teacher,
        dino_loss=run.dino_loss,
    )
    logger.info("step %d: checkpoint saved to %s", state.step, saved)


# ------------------------------------------------------------------------------------------------------ finish
def _finalise(run: TrainRun, state: TrainerState, meters: _Meters) -> TrainResult:
    """The last validation, then (main process) the final model, its card and results, and the Hub upload."""
    accelerator = run.accelerator
    _validate(run, state, meters)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_final_model(run, state, meters)
        if run.config.push_to_hub:
            _push_to_hub(run, state)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        output_dir=run.output_dir,
        step=state.step,
        nonfinite_steps=state.nonfinite_steps,
        log_history=list(state.log_history),
        eval_results=meters.eval_results,
    )


def _save_final_model(run: TrainRun, state: TrainerState, meters: _Meters) -> None:
    """OUTPUT_DIR: the student (LoRA: the adapter in `adapter/`, merged into the model), the processor, the model
    card (README.md) and train_results.json."""
    config, accelerator, output_dir = run.config, run.accelerator, run.output_dir
    student = accelerator.unwrap_model(run.train_module).model
    final_model = student
    if config.lora:
        student.save_pretrained(str(output_dir / "adapter"))
        final_model = student.merge_and_unload()
    final_model.save_pretrained(str(output_dir))
    run.processor.save_pretrained(str(output_dir))
    card = build_model_card(
        config,
        languages=languages_of(config),
        num_processes=accelerator.num_processes,
        total_steps=state.step,
        train_rows=run.data.train_rows,
        sources=run.data.sources,
        results=meters.eval_results,
        mixed_precision=accelerator.mixed_precision,
    )
    card.save(str(output_dir / "README.md"))
    results = {
        "step": state.step,
        "samples_seen": state.samples_seen,
        "nonfinite_steps": state.nonfinite_steps,
        "validation": meters.eval_results,
        "log_history": state.log_history,
    }
    (output_dir / "train_results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


def _push_to_hub(run: TrainRun, state: TrainerState) -> None:
    from huggingface_hub import HfApi

    config = run.config
    api = HfApi()
    api.create_repo(config.hub_model_id, private=config.hub_private_repo, exist_ok=True)
    api.upload_folder(
        repo_id=config.hub_model_id,
        folder_path=str(run.output_dir),
        ignore_patterns=["checkpoints/*", "logs/*", "*.tmp/*"],
        commit_message=f"RS-M-CLIP trained for {state.step} steps",
    )
