"""Students: any torchvision classification model (or timm model) with its classifier removed.

A student maps (B, 3, H, W) images to (B, C) pooled features, C = ``feature_dim``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from kubedistill.errors import ConfigError

TORCHVISION_PREFIX = "torchvision/"
TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class StudentInfo:
    """What is needed to rebuild a student from a state_dict: its name and output width."""

    name: str
    feature_dim: int


class Student(nn.Module):
    """A backbone whose classifier was replaced by an identity: forward gives (B, C) pooled features."""

    def __init__(self, backbone: nn.Module, info: StudentInfo):
        super().__init__()
        self.backbone = backbone
        self.info = info

    @property
    def feature_dim(self) -> int:
        return self.info.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return torch.flatten(features, start_dim=1)


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_students() -> list[str]:
    return [TORCHVISION_PREFIX + n for n in torchvision_names()] + [TIMM_PREFIX + "<any timm model name>"]


def build_student(name: str, *, image_size: tuple[int, int] | None = None) -> Student:
    """A randomly initialised student by name: ``torchvision/<name>`` or ``timm/<name>``.

    ``image_size`` is passed to architectures that fix their input size at construction (torchvision ViTs).
    """
    if name.startswith(TORCHVISION_PREFIX):
        return _build_torchvision(name.removeprefix(TORCHVISION_PREFIX), image_size)
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name.removeprefix(TIMM_PREFIX))
    raise ConfigError([f"model: {name!r} must start with 'torchvision/' or 'timm/', e.g. 'torchvision/resnet18'"])


def check_student_name(name: str) -> list[str]:
    """Problems with a model name, without building it (used by config validation)."""
    if name.startswith(TORCHVISION_PREFIX):
        short = name.removeprefix(TORCHVISION_PREFIX)
        names = torchvision_names()
        if short not in names:
            close = difflib.get_close_matches(short, names, n=3)
            hint = f" Did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}?" if close else ""
            return [f"model: unknown torchvision model {short!r}.{hint} Valid: torchvision.models.list_models()"]
        return []
    if name.startswith(TIMM_PREFIX):
        return _check_timm_name(name.removeprefix(TIMM_PREFIX))
    return [f"model: {name!r} must start with 'torchvision/' or 'timm/', e.g. 'torchvision/resnet18'"]


def _check_timm_name(short: str) -> list[str]:
    try:
        import timm
    except ImportError:
        return ["model: timm students need the 'timm' package: pip install timm"]
    if not timm.is_model(short):
        close = difflib.get_close_matches(short, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        return [f"model: unknown timm model {short!r}.{hint}"]
    return []


def _build_torchvision(short: str, image_size: tuple[int, int] | None) -> Student:
    import torchvision

    problems = check_student_name(TORCHVISION_PREFIX + short)
    if problems:
        raise ConfigError(problems)
    kwargs = _construction_kwargs(short, image_size)
    backbone = torchvision.models.get_model(short, weights=None, **kwargs)
    feature_dim = remove_classifier(backbone)
    return Student(backbone, StudentInfo(name=TORCHVISION_PREFIX + short, feature_dim=feature_dim))


def _construction_kwargs(short: str, image_size: tuple[int, int] | None) -> dict:
    # Auxiliary classifiers only exist for training with labels; they change the forward's return type.
    if short in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    # torchvision ViTs fix their position embeddings at construction; they need square inputs.
    if short.startswith("vit_") and image_size is not None and image_size[0] == image_size[1]:
        return {"image_size": image_size[0]}
    return {}


def remove_classifier(backbone: nn.Module) -> int:
    """Replace the final classification layer by an identity, in place; returns the feature width.

    torchvision puts the classifier last: the last nn.Linear in registration order (fc, classifier[-1],
    heads.head, head). SqueezeNet is the one classifier built from a 1x1 conv; it becomes global pooling.
    """
    if type(backbone).__name__ == "SqueezeNet":
        conv = backbone.classifier[1]
        backbone.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        return conv.in_channels
    last_name, last = None, None
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = name, module
    if last is None:
        raise ConfigError([f"model: cannot find the classifier of {type(backbone).__name__}"])
    _set_submodule(backbone, last_name, nn.Identity())
    return last.in_features


def _set_submodule(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _build_timm(short: str) -> Student:
    problems = _check_timm_name(short)
    if problems:
        raise ConfigError(problems)
    import timm

    backbone = timm.create_model(short, pretrained=False, num_classes=0)
    return Student(backbone, StudentInfo(name=TIMM_PREFIX + short, feature_dim=backbone.num_features))
