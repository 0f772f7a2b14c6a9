"""Frozen features of any module for a list of image URIs: resize + center crop + normalize, no augmentation."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kubedistill.data.datasets import ImageDataset, collate
from kubedistill.data.transforms import EvalTransform, NormalizeArgs
from kubedistill.errors import DataError

logger = logging.getLogger(__name__)

NormalizeSpec = bool | NormalizeArgs | Mapping[str, Sequence[float]] | tuple[Sequence[float], Sequence[float]]


def extract_features(
    model: nn.Module,
    uris: Sequence[str],
    *,
    image_size: int | tuple[int, int] = 224,
    normalize: NormalizeSpec = True,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    l2_normalize: bool = True,
) -> torch.Tensor:
    """Run ``model`` (any module mapping (B, 3, H, W) float images to (B, D) or (B, D, ...) features) once
    over ``uris`` in order, in eval mode and without gradients.

    Args:
        uris: image paths or URIs (whatever ``ImageDataset`` reads).
        image_size: the model's input size; the shorter side is resized to size / 0.875, then center-cropped.
        normalize: True for ImageNet mean/std, False for plain [0, 1] values, or a NormalizeArgs /
            ``{"mean": [...], "std": [...]}`` / ``(mean, std)``.
        device: "auto" (the GPU when present), "cpu", "cuda", or a torch.device.
        l2_normalize: divide each row by its L2 norm (what the probes expect).

    Returns:
        (N, D) float32 on the CPU, row i for ``uris[i]``. Raises DataError naming the unreadable images
        (none are silently replaced: a replaced image would carry another image's label).
    """
    if len(uris) == 0:
        raise DataError("extract_features: no images given")
    device = resolve_device(device)
    dataset = ImageDataset(list(uris), EvalTransform(image_size, _normalize_args(normalize)))
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )  # fmt: skip
    was_training = model.training
    model.eval().to(device)
    rows, unreadable = [], []
    try:
        with torch.inference_mode():
            for start, batch in zip(range(0, len(uris), batch_size), loader, strict=True):
                expected = torch.arange(start, start + len(batch["index"]))
                # ImageDataset swaps an unreadable image for another one; a probe must not (labels would lie).
                unreadable.extend(uris[i] for i in expected[batch["index"] != expected].tolist())
                rows.append(_forward(model, batch["image"].to(device, non_blocking=True)))
    finally:
        model.train(was_training)
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
        raise DataError(
            f"{len(unreadable)} image(s) could not be decoded: {shown}. Run `kubedistill validate` and probe "
            "the images of its manifest"
        )
    features = torch.cat(rows)
    return F.normalize(features, dim=1) if l2_normalize else features


def _forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.ndim > 2:
        # Feature maps (B, D, h, w) -> global average pool, so conv trunks without pooling work too.
        out = out.flatten(2).mean(dim=2)
    return out.float().cpu()


def resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _normalize_args(spec: NormalizeSpec) -> NormalizeArgs:
    if spec is True:
        return NormalizeArgs()
    if spec is False:
        return NormalizeArgs(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    if isinstance(spec, NormalizeArgs):
        return spec
    if isinstance(spec, Mapping):
        return NormalizeArgs(mean=tuple(spec["mean"]), std=tuple(spec["std"]))
    mean, std = spec
    return NormalizeArgs(mean=tuple(mean), std=tuple(std))
