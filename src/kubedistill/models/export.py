"""The exported student: weights plus what is needed to use them, loadable without pickle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubedistill.errors import WeightsError
from kubedistill.models.students import Student, build_student
from kubedistill.utils import atomic_save, atomic_write_text

STUDENT_FORMAT = "kubedistill.student/v1"


@dataclass(frozen=True)
class StudentMetadata:
    model: str
    feature_dim: int
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "feature_dim": self.feature_dim,
            "image_size": list(self.image_size),
            "normalize": {"mean": list(self.mean), "std": list(self.std)},
        }


def backbone_file(student_path: Path, model: str) -> Path:
    """``exported/<model>_backbone.pt`` next to ``student_path``: e.g. resnet18_backbone.pt."""
    return student_path.parent / f"{model.split('/', 1)[-1]}_backbone.pt"


def export_student(student: Student, metadata: StudentMetadata, path: Path,
                   provenance: dict[str, Any] | None = None) -> list[Path]:  # fmt: skip
    """Write ``path`` (weights + metadata, torch.save of plain types), ``path.json`` (metadata for people) and
    ``<model>_backbone.pt``; returns the three paths.

    ``<model>_backbone.pt`` is the plain state_dict of the architecture's own module (torchvision's or timm's)
    cut after its pooling: it loads with strict=True into that model once its classifier is removed as
    ``backbone.load`` in the JSON says, or with strict=False into the full model to fine-tune it. Tensors are
    saved contiguous (a student trained channels-last would otherwise keep NHWC strides).
    ``provenance``: what produced the weights (teacher name and the sha256 of its file, dataset fingerprint),
    kept with them.
    """
    backbone = backbone_file(path, metadata.model)
    described = {
        "format": STUDENT_FORMAT, **metadata.to_dict(),
        "backbone": {"file": backbone.name, "load": student.load_hint.replace("torch.load(path)", f"torch.load({backbone.name!r})")},
        **({"provenance": provenance} if provenance else {}),
    }  # fmt: skip
    atomic_save({**described, "state_dict": _contiguous(student.state_dict())}, path)
    atomic_save(_contiguous(student.backbone.state_dict()), backbone)
    atomic_write_text(path.with_suffix(".json"), json.dumps(described, indent=2))
    return [path, path.with_suffix(".json"), backbone]


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().contiguous() for key, value in state.items()}


class LoadedStudent(nn.Module):
    """An exported student in eval mode: (B, 3, H, W) normalized images -> (B, C) features.

    ``metadata`` says which image size and normalization the student was trained with.
    """

    def __init__(self, student: Student, metadata: StudentMetadata):
        super().__init__()
        self.student = student
        self.metadata = metadata

    @property
    def feature_dim(self) -> int:
        return self.metadata.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)


def load_student(path: str | Path) -> LoadedStudent:
    """Load ``exported/student.pt`` (torch.load with weights_only=True: no arbitrary objects are unpickled)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise WeightsError(f"exported student {path} does not exist; train first or check the path") from e
    except Exception as e:
        raise WeightsError(f"{path} cannot be read as an exported student ({e})") from e
    if not isinstance(payload, dict) or payload.get("format") != STUDENT_FORMAT:
        raise WeightsError(f"{path} is not a kubedistill exported student (format {STUDENT_FORMAT})")
    metadata = StudentMetadata(
        model=payload["model"],
        feature_dim=int(payload["feature_dim"]),
        image_size=tuple(payload["image_size"]),
        mean=tuple(payload["normalize"]["mean"]),
        std=tuple(payload["normalize"]["std"]),
    )
    student = build_student(metadata.model, image_size=metadata.image_size)
    student.load_state_dict(payload["state_dict"])
    return LoadedStudent(student, metadata).eval()
