"""The self-distillation teacher (an EMA copy of the student's image tower and DINO head) and its schedules."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class EMATeacher(nn.Module):
    """A frozen copy of the student's `vision_model` and `distillation_head`, updated as an exponential moving
    average of the student's parameters: `teacher <- m * teacher + (1 - m) * student`.

    The teacher never goes through `accelerator.prepare` (it has no gradients and needs no synchronisation: every
    process applies the same update to the same synchronised student weights). Parameters the student does not
    train (frozen towers, LoRA base weights) are equal in both and are skipped, so they stay bit-identical.
    It stays in eval mode: no dropout in the targets.
    """

    def __init__(self, vision_model: nn.Module, distillation_head: nn.Module) -> None:
        super().__init__()
        self.vision_model = copy.deepcopy(vision_model)
        self.distillation_head = copy.deepcopy(distillation_head)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> EMATeacher:
        """The teacher is always in eval mode, whatever `mode` says."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """DINO head logits of the (global) crops, as `RSMCLIPModel.get_distillation_logits` computes them."""
        features = self.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=True, return_dict=True
        ).pooler_output
        return self.distillation_head(features)

    @staticmethod
    def _pairs(
        student_module: nn.Module, teacher_module: nn.Module
    ) -> list[tuple[nn.Parameter, nn.Parameter]]:
        teacher_params = dict(teacher_module.named_parameters())
        pairs = []
        for name, param in student_module.named_parameters():
            if name not in teacher_params:
                raise KeyError(
                    f"the teacher has no parameter {name!r}: it was built from a different student"
                )
            if param.requires_grad:
                pairs.append((param, teacher_params[name]))
        return pairs

    @torch.no_grad()
    def update(self, vision_model: nn.Module, distillation_head: nn.Module, momentum: float) -> None:
        """One EMA step from the (unwrapped) student's modules."""
        pairs = self._pairs(vision_model, self.vision_model) + self._pairs(
            distillation_head, self.distillation_head
        )
        if not pairs:
            return
        students = [s.detach().to(t.dtype) for s, t in pairs]
        teachers = [t for _, t in pairs]
        # DINO's update, teacher * m + student * (1 - m), on all tensors at once.
        torch._foreach_mul_(teachers, momentum)
        torch._foreach_add_(teachers, students, alpha=1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """DINO's teacher momentum: `final - (final - base) * (1 + cos(pi * step / total_steps)) / 2`.

    `base` at step 0, `final` at `total_steps`."""
    if total_steps <= 0:
        return final
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (1.0 + math.cos(math.pi * progress)) / 2.0


def teacher_temperature(step: int, warmup_steps: int, warmup_temp: float = 0.04, temp: float = 0.04) -> float:
    """Linear warm-up of the teacher temperature from `warmup_temp` to `temp` over `warmup_steps`, then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return temp
    return warmup_temp + (temp - warmup_temp) * step / warmup_steps
