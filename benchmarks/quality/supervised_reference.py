"""What labels buy in the same number of steps: resnet18 trained WITH labels on the train renders, then probed.

An upper reference for the distillation runs of benchmark.py: the same student, data and probe, but plain
cross-entropy on the true labels (AdamW 1e-3, constant, batch 128, no augmentation, fp32, images held in
memory so no data loading is timed). If even this does not reach the teacher's probe score in N steps, a
label-free student cannot be expected to in N steps either.

    .venv/bin/python benchmarks/quality/supervised_reference.py STEPS [--image-size 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kubedistill.data.transforms import NormalizeArgs
from kubedistill.devtools.known_teacher import load_split
from kubedistill.evaluation.probe import evaluate_features
from kubedistill.models.students import build_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", type=int)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-quality"))
    args = parser.parse_args()
    torch.manual_seed(0)
    train_x, train_y, _ = load_split(args.workdir / "data" / "train")
    test_x, test_y, _ = load_split(args.workdir / "data" / "test")
    norm = NormalizeArgs()
    mean, std = torch.tensor(norm.mean).view(1, 3, 1, 1), torch.tensor(norm.std).view(1, 3, 1, 1)
    size = args.image_size

    def prepare(images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / 255 - mean) / std
        return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)

    student = build_student("torchvision/resnet18", image_size=(size, size))
    classifier = nn.Linear(student.feature_dim, 10)
    optimizer = torch.optim.AdamW([*student.parameters(), *classifier.parameters()], lr=1e-3, weight_decay=0.01)
    start = time.perf_counter()
    student.train()
    for _ in range(args.steps):
        batch = torch.randint(0, len(train_x), (128,))
        loss = F.cross_entropy(classifier(student(prepare(train_x[batch]))), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    student.eval()
    with torch.no_grad():
        features = [torch.cat([student(prepare(x[i : i + 512])) for i in range(0, len(x), 512)]) for x in (train_x, test_x)]
    features = [F.normalize(f, dim=-1) for f in features]  # as `kubedistill probe` does
    metrics = evaluate_features(features[0], train_y.tolist(), features[1], test_y.tolist())
    print(f"supervised resnet18, {args.steps} steps at {size} px ({seconds:.0f} s of training): probe linear top-1 "
          f"{metrics['linear_top1']:.3f}, kNN top-1 {metrics['knn_top1']:.3f}, last loss {float(loss):.3f}")


if __name__ == "__main__":
    main()
