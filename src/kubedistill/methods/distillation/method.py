"""The distillation method: student + projection head + teacher queue, and one training forward pass."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from kubedistill.methods.distillation.head import ProjectionHead
from kubedistill.methods.distillation.loss import distillation_loss
from kubedistill.methods.distillation.queue import TeacherQueue

Gather = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def mixup(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Convex combination of the batch with a random permutation of itself, lambda ~ U(0, 1) per batch.

    (B, 3, H, W) -> (B, 3, H, W). Teacher and student both see the mixed images ("consistent" teaching).
    """
    lam = torch.rand((), generator=generator).item()
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    return lam * images + (1.0 - lam) * images[perm]


class Distillation(nn.Module):
    """Trainable part of the method. The frozen teacher is held outside the module tree on purpose: it is
    not saved in checkpoints, not wrapped by DDP, and not touched by the optimizer.

    Args:
        student: maps (B, 3, H, W) -> (B, C) pooled features.
        student_dim: C.
        teacher: frozen, maps (B, 3, H, W) -> (B, D) (not normalized).
        teacher_dim: D.
        queue_size: K.
        temperature: softmax temperature of the loss.
        use_mixup: mix each batch before the forward passes.
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        student_dim: int,
        teacher: nn.Module,
        teacher_dim: int,
        queue_size: int,
        temperature: float = 0.07,
        use_mixup: bool = True,
    ):
        super().__init__()
        self.student = student
        self.head = ProjectionHead(student_dim, teacher_dim)
        self.queue = TeacherQueue(queue_size, teacher_dim)
        self._teacher = (teacher,)  # a tuple hides it from nn.Module's registration
        self.temperature = temperature
        self.use_mixup = use_mixup

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    @torch.no_grad()
    def teacher_embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) unit-norm teacher vectors, in fp32."""
        return F.normalize(self.teacher(images).float(), dim=-1)

    def student_embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) unit-norm student vectors in the teacher's space."""
        return self.head(self.student(images))

    def forward(
        self,
        images: torch.Tensor,
        *,
        gather: Gather = _identity,
        generator: torch.Generator | None = None,
        teacher_autocast: AbstractContextManager | None = None,
        student_autocast: AbstractContextManager | None = None,
    ) -> torch.Tensor:
        """One training forward pass; returns the scalar loss.

        ``gather`` all-gathers the (B, D) teacher vectors across ranks (identity in one process) so every rank
        enqueues the same global batch, in the same order.
        """
        if self.use_mixup:
            images = mixup(images, generator)
        with teacher_autocast or nullcontext():
            teacher_vectors = self.teacher_embed(images)
        with student_autocast or nullcontext():
            student_vectors = self.student_embed(images)
        # The current batch joins the queue before the loss: LightlyTrain's order.
        self.queue.enqueue(gather(teacher_vectors))
        return distillation_loss(
            student_vectors,
            teacher_vectors,
            self.queue.vectors,
            temperature=self.temperature,
            queue_mask=self.queue.mask,
        )
