"""kubedistill: label-free knowledge distillation from a frozen DINOv2 teacher into any torchvision student."""

from __future__ import annotations

__version__ = "0.1.0"

from kubedistill.api import describe, load_student, load_teacher, train

__all__ = ["__version__", "describe", "load_student", "load_teacher", "train"]
