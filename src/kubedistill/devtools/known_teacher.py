"""A "known teacher" for the quality benchmark and the demo: a small CNN trained WITH labels on rendered digits
(``kubedistill.devtools.digits``), saved as TorchScript, so that distillation has something real to pass on.

The saved module maps normalized (B, 3, H, W) images (ImageNet mean/std, like every kubedistill input) to
(B, 128) embeddings: the layer the classifier reads, so the embedding carries what the labels taught. Any H, W
works (global average pooling), which `method_args.teacher` needs (it probes a 224x224 input on load).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from kubedistill.data.transforms import EvalTransform, NormalizeArgs
from kubedistill.training.precision import resolve_precision

EMBED_DIM = 128


class TeacherNet(nn.Module):
    """Input instance norm -> four conv stages (two 3x3 convs each, BN, ReLU, 2x2 max-pool) -> global average
    pool -> Linear.

    Any other input size is first resized (bilinear, antialiased) to ``input_size``, the size the net was
    trained at, as a DINOv2 teacher sees every input at its own patch scale: a student may then train at a
    larger image size than the renders' without changing what the teacher sees.

    The instance norm takes out each image's colour and contrast. In short tests on the renders (batch 64,
    AdamW 1e-3) the net without it was still at chance-level loss after 60 steps (2.30), the net with it at
    1.47 after 90; the random colours and textures are what hold the plain net back.
    """

    def __init__(self, width: int = 32, embed_dim: int = EMBED_DIM, input_size: int = 32):
        super().__init__()
        self.input_size = input_size
        layers: list[nn.Module] = [nn.InstanceNorm2d(3)]
        channels = 3
        for stage, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for _ in range(2):
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
            if stage < 3:
                layers.append(nn.MaxPool2d(2))
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(channels, embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim)."""
        if images.shape[-2] != self.input_size or images.shape[-1] != self.input_size:
            images = nn.functional.interpolate(
                images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
            )
        return self.embed(self.trunk(images))


def load_split(root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All images of a class-per-folder root as one uint8 (N, 3, H, W) tensor, their labels and paths."""
    paths = sorted(root.glob("*/*.png"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    labels = torch.tensor([int(p.parent.name) for p in paths])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, [str(p) for p in paths]


def cached_teacher(
    data: Path, path: Path, *, image_size: int, epochs: int, width: int = 32, seed: int = 0, log=print
) -> dict[str, float]:
    """``train_teacher`` on ``data/train`` (scored on ``data/test``) unless ``path`` already holds a teacher
    trained with the same settings on the same renders (``path`` + ``.json`` records them); returns its info."""
    stamp = path.with_suffix(".json")
    renders = json.loads((data / "render.json").read_text()) if (data / "render.json").is_file() else None
    params = {"epochs": epochs, "width": width, "renders": renders, "seed": seed, "input_size": image_size}
    if path.is_file() and stamp.is_file() and json.loads(stamp.read_text())["params"] == params:
        return json.loads(stamp.read_text())["result"]
    info = train_teacher(
        data / "train", data / "test", path, image_size=image_size, epochs=epochs, width=width, seed=seed, log=log
    )
    stamp.write_text(json.dumps({"params": params, "result": info}, indent=2))
    return info


def train_teacher(
    train_root: Path,
    test_root: Path,
    out: Path,
    *,
    image_size: int,
    epochs: int,
    width: int = 32,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    precision: str = "auto",
    log=print,
) -> dict[str, float]:
    """Train with labels, save the TorchScript embedding network to ``out``; returns its test accuracy, the
    training time and the precision it trained in (``precision``, decided as the trainer decides it)."""
    torch.manual_seed(seed)
    images, labels, _ = load_split(train_root)
    net, classifier = TeacherNet(width, input_size=image_size), nn.Linear(EMBED_DIM, 10)
    # The trainer's own choice: bf16 autocast only on a CPU with native bf16 (~4x fp32 there, with channels-last
    # convolutions), fp32 elsewhere (emulated bf16 is ~8x slower than fp32). The teacher is saved with fp32
    # weights either way; the distillation run decides its own precision.
    plan = resolve_precision(precision, torch.device("cpu"))
    layout = torch.channels_last if plan.student_bf16 else torch.contiguous_format
    net.to(memory_format=layout)
    params = [*net.parameters(), *classifier.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    steps_per_epoch = len(images) // batch_size
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    start = time.perf_counter()
    losses = []
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(images))
        for step in range(steps_per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size]
            x = augment_batch(images[batch], image_size).contiguous(memory_format=layout)
            with plan.student_autocast(torch.device("cpu")):
                logits = classifier(net(x))
            loss = nn.functional.cross_entropy(logits.float(), labels[batch], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        losses.append(float(loss.detach()))
        log(f"teacher epoch {epoch + 1}/{epochs}: loss {losses[-1]:.3f}")
    train_seconds = time.perf_counter() - start
    accuracy = _accuracy(net, classifier, test_root, image_size)
    net.eval().to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():
        # TorchScript is deprecated in torch, but it is the teacher format that needs no Python class to load.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
        torch.jit.script(net).save(str(out))
    return {"test_accuracy": accuracy, "train_seconds": train_seconds, "losses": losses, "precision": plan.name}


def augment_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Batched label-preserving views of uint8 (B, 3, H, W) images -> normalized float (B, 3, S, S).

    A random zoom (0.8-1.25x) and shift (up to 12% of the side), a left-right flip with probability 0.5 (the
    distillation views are flipped too) and a random channel order (colour is no cue in these renders).
    Crops stay mild, unlike distillation's (0.14 of the area): a crop that misses the digit would teach a
    wrong label.
    """
    b = images.shape[0]
    x = images.float() / 255
    scale = torch.exp(torch.empty(b).uniform_(math.log(0.8), math.log(1.25)))
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = flip / scale, 1 / scale
    theta[:, :, 2] = torch.empty(b, 2).uniform_(-0.12, 0.12) * 2
    grid = nn.functional.affine_grid(theta, [b, 3, image_size, image_size], align_corners=False)
    x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    permute = torch.rand(b) < 0.5
    x[permute] = x[permute][:, torch.randperm(3)]
    return _normalize(x)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    norm = NormalizeArgs()
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def _accuracy(net: nn.Module, classifier: nn.Module, root: Path, image_size: int) -> float:
    net.eval()
    images, labels, _ = load_split(root)
    view = EvalTransform((image_size, image_size))
    correct = 0
    for start in range(0, len(images), 256):
        x = torch.stack([view(img) for img in images[start : start + 256]])
        correct += int((classifier(net(x)).argmax(1) == labels[start : start + 256]).sum())
    return correct / len(images)
