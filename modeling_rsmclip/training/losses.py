"""The two training losses: CLIP's symmetric InfoNCE with negatives gathered across processes, and DINO's
self-distillation cross-entropy with a centred, sharpened teacher.

Both work in one process and in a `torch.distributed` process group (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, keeping the autograd graph.

    The backward of the all-gather sums the gradients that every process computes for each shard and hands each
    process the gradient of its own shard, so the negatives of the other processes take part in the gradient
    (OpenCLIP's `gather_with_grad`). Every process must pass a tensor of the same shape.
    """
    _, world_size = _world()
    if world_size == 1:
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the global batch: every process computes the logits of the whole gathered batch.

    With `world_size` processes each holding `B` pairs, the loss is the mean over the `world_size * B` image->text
    and text->image cross-entropies, i.e. exactly the single-process loss of the concatenated batch. Under DDP the
    gradients that each process obtains are `world_size` times the gradients of that loss (the all-gather backward
    sums them), and DDP's gradient averaging divides them back: the update equals the single-process one.

    With `local_loss=True` each process only computes the rows of its own samples against all gathered samples
    (`B x world_size*B` logits instead of the full square): less memory and compute, the same gradients after DDP
    averaging; the reported loss is then the local mean.
    """

    def __init__(self, local_loss: bool = False) -> None:
        super().__init__()
        self.local_loss = local_loss

    def forward(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """`image_embeds`, `text_embeds`: `(B, D)` L2-normalised; `logit_scale`: the (exponentiated) inverse
        temperature."""
        if image_embeds.shape != text_embeds.shape:
            raise ValueError(
                f"image and text embeddings must pair up, got shapes {tuple(image_embeds.shape)} and "
                f"{tuple(text_embeds.shape)}"
            )
        rank, world_size = _world()
        all_images = gather_with_grad(image_embeds)
        all_texts = gather_with_grad(text_embeds)
        if self.local_loss and world_size > 1:
            logits_per_image = logit_scale * image_embeds @ all_texts.T
            logits_per_text = logit_scale * text_embeds @ all_images.T
            labels = torch.arange(len(image_embeds), device=image_embeds.device) + rank * len(image_embeds)
        else:
            logits_per_image = logit_scale * all_images @ all_texts.T
            logits_per_text = logits_per_image.T
            labels = torch.arange(len(all_images), device=image_embeds.device)
        return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


class DINOLoss(nn.Module):
    """DINO's cross-entropy between a centred, sharpened teacher and the student, over pairs of different views.

    Inputs are view-major: `teacher_logits` is `(n_global * B, K)` (all samples of global view 0, then view 1, ...)
    and `student_logits` is `(n_views * B, K)` with the same global views first, then the local views. For every
    teacher view `i` and student view `v != i`, the loss term is
    `mean_b sum_k -softmax((t - c) / tau_t)_k * log_softmax(s / tau_s)_k`; the loss is the mean of those terms.

    The center `c` is an exponential moving average of the teacher logits' batch mean, averaged over all
    processes (one all-reduce per update): `c <- m * c + (1 - m) * mean(t)`. It is updated after the loss is
    computed, with the teacher logits of the current step, as in DINO.
    """

    center: torch.Tensor

    def __init__(
        self, out_dim: int, num_global_views: int = 2, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        if num_global_views < 1:
            raise ValueError("the distillation loss needs at least one global view")
        self.num_global_views = num_global_views
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        n_global = self.num_global_views
        if len(teacher_logits) % n_global:
            raise ValueError(
                f"{len(teacher_logits)} teacher rows are not a multiple of {n_global} global views"
            )
        batch = len(teacher_logits) // n_global
        if len(student_logits) % batch or len(student_logits) // batch < n_global:
            raise ValueError(
                f"{len(student_logits)} student rows do not hold the {n_global} global views of {batch} samples"
            )
        n_views = len(student_logits) // batch
        if n_views < 2:
            raise ValueError(
                "the distillation loss needs at least two views (it only compares different views)"
            )
        student_log_probs = F.log_softmax(student_logits.float() / self.student_temp, dim=-1).chunk(n_views)
        teacher = teacher_logits.detach().float()
        teacher_probs = F.softmax((teacher - self.center) / teacher_temp, dim=-1).chunk(n_global)
        total = student_logits.new_zeros((), dtype=torch.float32)
        n_terms = 0
        for i, target in enumerate(teacher_probs):
            for v, log_probs in enumerate(student_log_probs):
                if v == i:
                    continue
                total = total + torch.sum(-target * log_probs, dim=-1).mean()
                n_terms += 1
        self.update_center(teacher)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the teacher logits' mean over the global batch (all processes)."""
        batch_sum = teacher_logits.float().sum(dim=0, keepdim=True)
        _, world_size = _world()
        if world_size > 1:
            dist.all_reduce(batch_sum)  # every process holds the same number of rows
        batch_center = batch_sum / (len(teacher_logits) * world_size)
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
