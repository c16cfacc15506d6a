"""The RS-M-CLIP training recipe: CLIP loss with cross-process negatives + DINO-style self-distillation."""

from .config import TrainingConfig
from .losses import ClipLoss, DINOLoss, gather_with_grad
from .teacher import EMATeacher, cosine_momentum, teacher_temperature

__all__ = [
    "ClipLoss",
    "DINOLoss",
    "EMATeacher",
    "TrainingConfig",
    "cosine_momentum",
    "gather_with_grad",
    "teacher_temperature",
    "train",
]


def __getattr__(name: str):
    # The loop pulls in accelerate and the data stack: import it on first use.
    if name == "train":
        from .loop import train

        return train
    raise AttributeError(name)
