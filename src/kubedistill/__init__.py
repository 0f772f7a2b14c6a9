"""kubedistill: label-free knowledge distillation from a frozen DINOv2 teacher into any torchvision student."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "describe", "load_student", "load_teacher", "probe", "register", "train", "validate"]

if TYPE_CHECKING:
    from kubedistill.api import describe, load_student, load_teacher, probe, register, train, validate


def __getattr__(name: str) -> Any:
    # The API pulls in torch, torchvision and timm; importing a light submodule (storage, errors) should not.
    if name in __all__:
        return getattr(importlib.import_module("kubedistill.api"), name)
    raise AttributeError(f"module 'kubedistill' has no attribute {name!r}")
