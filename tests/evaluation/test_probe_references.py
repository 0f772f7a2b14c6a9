"""The probe's references: a random-init student of the same architecture and the teacher, scored the same way."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import kubedistill
from kubedistill.evaluation.run import gap_closed

from .conftest import export_random_student, write_labeled_images


class RedOnly(nn.Module):
    """A "teacher" that sees only the red channel's mean: it confuses the classes whose red values are close."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        red = images[:, 0].mean(dim=(1, 2))
        return torch.stack([red, torch.ones_like(red)], dim=1)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labeled")
    return write_labeled_images(root / "train", 10, seed=0), write_labeled_images(root / "val", 5, seed=1)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated:FutureWarning")
def test_references_are_scored_like_the_student(tmp_path, labeled):
    train, val = labeled
    teacher = tmp_path / "red_only.pt"
    torch.jit.script(RedOnly()).save(str(teacher))
    # The "distilled" student here is the random-init student itself (seed 0): the random reference must
    # score exactly the same, and the gap closed is then exactly 0.
    student = export_random_student(tmp_path / "student.pt", seed=0)
    result = kubedistill.probe(checkpoint=student, train=train, val=val, out=tmp_path / "probe", num_workers=0,
                               random_baseline=True, teacher=str(teacher))  # fmt: skip
    metrics = result.metrics
    for key in ("linear_top1", "linear_top5", "knn_top1", "knn_top5"):
        assert metrics[f"random_{key}"] == metrics[key]
        assert 0.0 <= metrics[f"teacher_{key}"] <= 1.0
    assert metrics["teacher_linear_top1"] < metrics["linear_top1"]  # red alone does not separate every colour
    assert metrics["gap_closed"] == 0.0
    other = export_random_student(tmp_path / "other.pt", seed=1)
    moved = kubedistill.probe(checkpoint=other, train=train, val=val, out=tmp_path / "probe1", num_workers=0,
                              random_baseline=True, seed=0)  # fmt: skip
    assert "teacher_linear_top1" not in moved.metrics and "gap_closed" not in moved.metrics


def test_gap_closed():
    assert gap_closed(0.5, 0.1, 0.9) == pytest.approx(0.5)
    assert gap_closed(0.9, 0.1, 0.9) == pytest.approx(1.0)
    assert gap_closed(0.05, 0.1, 0.9) < 0  # worse than where it started
    assert math.isnan(gap_closed(0.5, 0.7, 0.7))  # no gap to close
