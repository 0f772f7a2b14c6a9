"""Hyperparameters of the distillation method and of its optimizers, with LightlyTrain's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class DistillationArgs:
    """``method_args`` of method="distillation"."""

    # Teacher: a name from kubedistill.models.teachers.TEACHERS, or a path/URI to a TorchScript file.
    teacher: str = "dinov2/vitb14"
    # None: the official checkpoint of `teacher`; "none": random init (smoke tests and speed runs only);
    # otherwise a local path, https:// URL or gs:// URI of a checkpoint in the official state_dict format.
    teacher_weights: str | None = None
    # Expected sha256 of the teacher weights file; checked after download and on every cache hit.
    teacher_sha256: str | None = None
    # Number of teacher vectors in the pseudo-classifier queue; "auto" picks it from the dataset size.
    queue_size: int | Literal["auto"] = "auto"
    temperature: float = 0.07
    # Batch mixup with lambda ~ U(0, 1), as in "A Good Teacher is Patient and Consistent".
    mixup: bool = True
    # How the optimizer's lr scales with the global batch size relative to reference_batch_size.
    lr_scale_method: Literal["sqrt", "linear", "none"] = "sqrt"
    reference_batch_size: int = 1536

    def problems(self) -> list[str]:
        found = []
        if not self.temperature > 0:
            found.append(f"temperature: must be > 0, got {self.temperature}")
        if self.queue_size != "auto" and self.queue_size < 1:
            found.append(f"queue_size: must be >= 1 or 'auto', got {self.queue_size}")
        if self.reference_batch_size < 1:
            found.append(f"reference_batch_size: must be >= 1, got {self.reference_batch_size}")
        return found


@dataclass
class _ScheduleArgs:
    """Fields shared by every optimizer: the lr schedule and gradient clipping."""

    # Linear warmup length; "auto" = min(10, epochs / 10) epochs.
    warmup_epochs: float | Literal["auto"] = "auto"
    # Cosine decay ends at min_lr_ratio * lr.
    min_lr_ratio: float = 0.001
    # Gradient-norm clipping over the student and head; null disables it.
    gradient_clip_val: float | None = 1.0

    def problems(self) -> list[str]:
        found = []
        if not self.lr > 0:  # type: ignore[attr-defined]
            found.append(f"lr: must be > 0, got {self.lr}")  # type: ignore[attr-defined]
        if self.weight_decay < 0:  # type: ignore[attr-defined]
            found.append(f"weight_decay: must be >= 0, got {self.weight_decay}")  # type: ignore[attr-defined]
        if self.warmup_epochs != "auto" and self.warmup_epochs < 0:
            found.append(f"warmup_epochs: must be >= 0 or 'auto', got {self.warmup_epochs}")
        if not 0 <= self.min_lr_ratio <= 1:
            found.append(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.gradient_clip_val is not None and not self.gradient_clip_val > 0:
            found.append(f"gradient_clip_val: must be > 0 or null, got {self.gradient_clip_val}")
        return found


@dataclass
class LARSArgs(_ScheduleArgs):
    """LARS (LightlyTrain's default): lr 1.8 is 0.3 x 1536 / 256, before batch-size scaling."""

    lr: float = 1.8
    momentum: float = 0.9
    weight_decay: float = 1e-6
    trust_coefficient: float = 0.001
    eps: float = 1e-8

    def problems(self) -> list[str]:
        found = super().problems()
        if not 0 <= self.momentum < 1:
            found.append(f"momentum: must be in [0, 1), got {self.momentum}")
        if not self.trust_coefficient > 0:
            found.append(f"trust_coefficient: must be > 0, got {self.trust_coefficient}")
        return found


@dataclass
class AdamWArgs(_ScheduleArgs):
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8

    def problems(self) -> list[str]:
        found = super().problems()
        if not all(0 <= b < 1 for b in self.betas):
            found.append(f"betas: each must be in [0, 1), got {list(self.betas)}")
        return found


OPTIMIZERS: dict[str, type[_ScheduleArgs]] = {"lars": LARSArgs, "adamw": AdamWArgs}
DEFAULT_OPTIMIZER = "lars"


def scaled_lr(lr: float, global_batch_size: int, args: DistillationArgs) -> float:
    """The lr actually used: ``lr x sqrt(B / B_ref)`` (or linear, or unscaled)."""
    ratio = global_batch_size / args.reference_batch_size
    if args.lr_scale_method == "sqrt":
        return lr * math.sqrt(ratio)
    if args.lr_scale_method == "linear":
        return lr * ratio
    return lr
