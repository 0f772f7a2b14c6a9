"""The served form of a student: preprocessing + student + L2 normalization in one module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from kubedistill.models.export import LoadedStudent

CROP_FRACTION = 0.875  # as EvalTransform: resize the shorter side to size / 0.875, then center-crop


class EmbeddingModel(nn.Module):
    """(B, 3, H, W) RGB images -> (B, C) L2-normalized embeddings, any H and W.

    Input: float32 in [0, 1] (what the pyfunc flavour takes) or uint8 in [0, 255]. The module resizes the
    shorter side to image_size / 0.875, center-crops ``image_size`` and normalizes with the student's mean
    and std, exactly the probe's preprocessing, so callers send plain decoded pixels.
    """

    def __init__(self, student: LoadedStudent):
        super().__init__()
        meta = student.metadata
        self.student = student.student
        self.image_size = [int(v) for v in meta.image_size]
        self.resize_to = round(max(self.image_size) / CROP_FRACTION)
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def feature_dim(self) -> int:
        return self.student.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = TF.resize(x, [self.resize_to], antialias=True)
        x = TF.center_crop(x, self.image_size)
        x = (x - self.mean) / self.std
        return F.normalize(self.student(x), dim=1)
