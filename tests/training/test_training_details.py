"""What a real (tiny, CPU) training step does: the frozen teacher, gradient clipping, mixup by default."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from kubedistill.config import build_train_config
from kubedistill.training.trainer import Trainer

from ..conftest import TINY_RUN

FAST = TINY_RUN


@contextmanager
def _set_up(out: Path, data: Path, **overrides) -> Iterator[Trainer]:
    trainer = Trainer(build_train_config({**FAST, "out": str(out), "data": str(data), **overrides}))
    trainer.setup()
    try:
        yield trainer
    finally:
        trainer.cleanup()


class _Recorder(nn.Module):
    """Passes images through ``inner`` and keeps a copy of every input."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.inputs.append(images.detach().clone())
        return self.inner(images)


def test_a_training_step_leaves_the_teacher_frozen_and_bitwise_unchanged(tmp_path, image_folder):
    """Two real steps (LARS, weight decay, the default clipping): the teacher's parameters do not require
    grad, get no .grad, and keep every bit, while the student's weights move."""
    with _set_up(tmp_path / "run", image_folder, max_steps=2) as trainer:
        teacher = trainer.method.teacher
        before = {name: t.clone() for name, t in teacher.state_dict().items()}
        conv = trainer.method.student.backbone.conv1.weight
        conv_before = conv.detach().clone()
        trainer.train()
        assert trainer.step == 2
        params = list(teacher.parameters())
        assert len(params) > 100  # the ViT-S/14's parameters, not an empty wrapper
        assert not any(p.requires_grad for p in params)
        assert all(p.grad is None for p in params)
        after = teacher.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[name], after[name]) for name in before)
        assert not teacher.training
        assert not torch.equal(conv.detach(), conv_before)


def _first_step_gradients(out: Path, data: Path, clip: float | None) -> list[torch.Tensor]:
    """The gradients the optimizer's first step() finds, in trainer.trainable's order."""
    overrides = {"max_steps": 1, "precision": "32-true", "optim_args": {"gradient_clip_val": clip}}
    with _set_up(out, data, **overrides) as trainer:
        # Clipping (over trainer.trainable) covers exactly what the optimizer steps.
        stepped = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        assert stepped == {id(p) for p in trainer.trainable}
        seen: list[list[torch.Tensor]] = []
        step = trainer.optimizer.step

        def recording_step(*args, **kwargs):
            seen.append([p.grad.detach().clone() for p in trainer.trainable])
            return step(*args, **kwargs)

        trainer.optimizer.step = recording_step
        trainer.train()
    assert len(seen) == 1
    return seen[0]


def _total_norm(grads: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def test_gradient_clipping_bounds_the_norm_the_optimizer_applies(tmp_path, image_folder):
    """The same first step with optim_args.gradient_clip_val=0.01 and with clipping off: the optimizer sees
    the unclipped gradient scaled down to norm 0.01 (same direction); the unclipped norm is far above 0.01."""
    defaults = build_train_config({"out": "o", "data": "d", "model": FAST["model"]})
    assert defaults.optim_args.gradient_clip_val == 1.0
    clip = 0.01
    raw = _first_step_gradients(tmp_path / "raw", image_folder, clip=None)
    clipped = _first_step_gradients(tmp_path / "clipped", image_folder, clip=clip)
    raw_norm = _total_norm(raw)
    assert raw_norm > 10 * clip, raw_norm
    assert _total_norm(clipped) == pytest.approx(clip, rel=1e-4)
    scale = clip / raw_norm
    assert all(torch.allclose(c, r * scale, rtol=1e-3, atol=1e-9) for c, r in zip(clipped, raw, strict=True))


def _solve_mix(mixed: torch.Tensor, images: torch.Tensor) -> tuple[float, list[int]]:
    """(lambda, perm) with mixed[i] = lambda * images[i] + (1 - lambda) * images[perm[i]], found by least
    squares over every partner j of each row (not by replaying the run's generator)."""
    x, m = images.flatten(1).double(), mixed.flatten(1).double()
    perm, lams = [], []
    for i in range(len(x)):
        best = (torch.linalg.vector_norm(m[i] - x[i]).item(), i, None)  # partner i: the image unchanged
        for j in range(len(x)):
            direction = x[i] - x[j]
            if j == i or not direction.any():
                continue
            lam = ((m[i] - x[j]) @ direction / (direction @ direction)).item()
            residual = torch.linalg.vector_norm(m[i] - x[j] - lam * direction).item()
            if residual < best[0]:
                best = (residual, j, lam)
        perm.append(best[1])
        if best[2] is not None:
            lams.append(best[2])
    assert lams, "no image was mixed with another"
    assert max(lams) - min(lams) < 1e-4, f"one lambda per batch, got {lams}"
    return sum(lams) / len(lams), perm


def _recorded_run(out: Path, data: Path, **overrides) -> tuple[list[torch.Tensor], ...]:
    """(loader batches, teacher inputs, student inputs) of a 2-step run."""
    with _set_up(out, data, max_steps=2, **overrides) as trainer:
        assert trainer.method.use_mixup is trainer.config.method_args.mixup
        teacher = _Recorder(trainer.method.teacher)
        trainer.method._teacher = (teacher,)
        student_inputs: list[torch.Tensor] = []
        trainer.method.student.register_forward_pre_hook(
            lambda _, args: student_inputs.append(args[0].detach().clone())
        )
        batches: list[torch.Tensor] = []
        loader_batches = trainer._epoch_batches

        def recording_batches():
            for images in loader_batches():
                batches.append(images.clone())
                yield images

        trainer._epoch_batches = recording_batches
        trainer.train()
    return batches, teacher.inputs, student_inputs


def test_a_default_run_mixes_each_batch_and_feeds_the_same_mix_to_teacher_and_student(tmp_path, image_folder):
    """Mixup is on by default: every step's teacher input is lambda * batch + (1 - lambda) * batch[perm] with
    lambda in (0, 1) and perm a non-trivial permutation, and the student gets that very tensor. With
    method_args.mixup=false the same batches reach both networks untouched."""
    assert build_train_config({"out": "o", "data": "d", "model": FAST["model"]}).method_args.mixup is True
    batches, teacher_inputs, student_inputs = _recorded_run(tmp_path / "mixed", image_folder)
    assert len(batches) == len(teacher_inputs) == len(student_inputs) == 2
    for images, mixed, student_in in zip(batches, teacher_inputs, student_inputs, strict=True):
        assert torch.equal(mixed, student_in)
        lam, perm = _solve_mix(mixed, images)
        assert 0.0 < lam < 1.0
        assert sorted(perm) == list(range(8)) and perm != list(range(8))
        assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm], atol=1e-5)

    plain = {**FAST["method_args"], "mixup": False}
    same_batches, teacher_inputs, student_inputs = _recorded_run(
        tmp_path / "plain", image_folder, method_args=plain
    )
    assert all(torch.equal(a, b) for a, b in zip(batches, same_batches, strict=True))  # same seed, same data
    for images, teacher_in, student_in in zip(same_batches, teacher_inputs, student_inputs, strict=True):
        assert torch.equal(teacher_in, images) and torch.equal(student_in, images)
