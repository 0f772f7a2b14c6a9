"""extract_features: row order, preprocessing, pooling of feature maps, unreadable images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from kubedistill.errors import DataError
from kubedistill.evaluation.features import extract_features


class MeanColour(nn.Module):
    """(B, 3, H, W) -> (B, 3): the mean of each channel (a feature whose value is easy to predict)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def _solid(path, colour) -> str:
    Image.fromarray(np.full((30, 40, 3), colour, dtype=np.uint8)).save(path)
    return str(path)


def test_rows_follow_the_uris_and_normalization_is_applied(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)]
    uris = [_solid(tmp_path / f"{i}.png", c) for i, c in enumerate(colours)]
    raw = extract_features(MeanColour(), uris, image_size=16, normalize=False, batch_size=2, l2_normalize=False)
    assert torch.allclose(raw, torch.tensor(colours, dtype=torch.float32) / 255, atol=1e-4)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    normalized = extract_features(
        MeanColour(), uris, image_size=16, normalize={"mean": mean, "std": std}, batch_size=3, l2_normalize=False
    )
    assert torch.allclose(normalized, (raw - 0.5) / 0.25, atol=1e-4)
    unit = extract_features(MeanColour(), uris[:4], image_size=16, normalize=False)
    assert torch.allclose(unit.norm(dim=1), torch.ones(4))


def test_feature_maps_are_average_pooled(tmp_path):
    uris = [_solid(tmp_path / "a.png", (255, 0, 0))]
    identity = extract_features(nn.Identity(), uris, image_size=8, normalize=False, l2_normalize=False)
    assert identity.shape == (1, 3) and torch.allclose(identity, torch.tensor([[1.0, 0.0, 0.0]]), atol=1e-4)


def test_unreadable_images_are_named_not_replaced(tmp_path):
    good = _solid(tmp_path / "good.png", (10, 20, 30))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"1 image\(s\) could not be decoded: .*bad.png.*kubedistill validate"):
        extract_features(MeanColour(), [good, str(bad)], image_size=8)
