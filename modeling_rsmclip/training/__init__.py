"""The RS-M-CLIP training recipe: CLIP loss with cross-process negatives + DINO-style self-distillation.

Names are imported on first use (`modeling_rsmclip._lazy`).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "ConfigError": ".config",
    "TrainingConfig": ".config",
    "ClipLoss": ".losses",
    "DINOLoss": ".losses",
    "gather_with_grad": ".losses",
    "EMATeacher": ".teacher",
    "cosine_momentum": ".teacher",
    "teacher_temperature": ".teacher",
    "train": ".loop",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
