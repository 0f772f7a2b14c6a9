"""The served form of a student: preprocessing + student + L2 normalization in one module, compiled to a
TorchScript program so that a serving image with torch (and MLflow) but without kubedistill can load it."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from kubedistill.errors import KubedistillError
from kubedistill.models.export import LoadedStudent

CROP_FRACTION = 0.875  # as EvalTransform: resize the shorter side to size / 0.875, then center-crop


class ServingCompileError(KubedistillError):
    """The student could not be turned into a program that gives the same embeddings."""


class EmbeddingModel(nn.Module):
    """(B, 3, H, W) RGB images -> (B, C) L2-normalized embeddings, any H and W.

    Input: float32 in [0, 1] (what the pyfunc flavour takes) or uint8 in [0, 255]. The module resizes the
    shorter side to image_size / 0.875 (bilinear, antialiased, as torchvision's resize), center-crops
    ``image_size`` (torchvision's rounding) and normalizes with the student's mean and std: the probe's
    preprocessing, so callers send plain decoded pixels. Written in TorchScript's subset of Python.
    """

    def __init__(self, student: LoadedStudent):
        super().__init__()
        meta = student.metadata
        self.student = student.student
        self.feature_dim = int(meta.feature_dim)
        self.crop_h, self.crop_w = int(meta.image_size[0]), int(meta.image_size[1])
        self.resize_to = round(max(self.crop_h, self.crop_w) / CROP_FRACTION)
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError("expected RGB images of shape (B, 3, H, W), got " + str(images.shape))
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        height, width = x.size(2), x.size(3)
        short, long = min(height, width), max(height, width)
        new_long = int(self.resize_to * long / short)
        size = [self.resize_to, new_long] if height <= width else [new_long, self.resize_to]
        if size != [height, width]:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        top, left = _centered(size[0] - self.crop_h), _centered(size[1] - self.crop_w)
        x = x[:, :, top : top + self.crop_h, left : left + self.crop_w]
        x = (x - self.mean) / self.std
        return F.normalize(self.student(x), dim=1)


def _centered(margin: int) -> int:
    """torchvision's center-crop offset, int(round(margin / 2)) with Python's half-to-even rounding, in integers
    (TorchScript's round of a float rounds half away from zero)."""
    offset = margin // 2
    if margin % 2 == 1 and offset % 2 == 1:
        offset += 1
    return offset


def compile_for_serving(student: LoadedStudent, *, atol: float = 1e-5) -> torch.jit.ScriptModule:
    """The served module as a TorchScript program: the preprocessing scripted (its sizes depend on the input),
    the student traced (it always sees ``image_size`` crops; any batch size), checked to give the eager module's
    embeddings for several batch and image sizes."""
    eager = EmbeddingModel(student).eval()
    size = (eager.crop_h, eager.crop_w)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, which cannot yet
        # express the input-dependent resize; a TorchScript file still loads with torch alone.
        served = EmbeddingModel(student).eval()
        served.student = torch.jit.trace(student.student, torch.randn(2, 3, *size), check_trace=False)
        program = torch.jit.script(served)
    shapes = ((1, size[0], size[1]), (3, size[0] + 37, size[1] + 5), (2, size[0] // 2 + 3, 2 * size[1]))
    for batch, height, width in shapes:
        images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected, got = eager(images), program(images)
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=atol):
            raise ServingCompileError(
                f"the TorchScript program of {student.metadata.model} gives other embeddings than the model "
                f"(max difference {(got - expected).abs().max().item():.2e} on {batch}x3x{height}x{width} images); "
                "this architecture cannot be registered for serving without kubedistill; choose another student"
            )
    return program
