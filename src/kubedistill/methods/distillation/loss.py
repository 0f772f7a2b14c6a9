"""The distillation loss: KL divergence between teacher and student pseudo-class distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.07,
    queue_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(p_teacher || p_student), averaged over the batch.

    The queue of teacher vectors acts as the weights of a pseudo classifier: both the teacher and the
    student vectors are projected onto it and turned into distributions over the K queue slots.

    Args:
        student: (B, D) L2-normalized student vectors (after the projection head).
        teacher: (B, D) L2-normalized teacher vectors.
        queue: (K, D) L2-normalized teacher vectors of recent batches.
        temperature: softmax temperature T applied to both sides.
        queue_mask: optional (K,) bool, True for filled slots. Unfilled slots are left out of both softmaxes.

    Returns:
        Scalar tensor: sum_k p_t[b, k] * (log p_t[b, k] - log p_s[b, k]), averaged over b.
    """
    if queue_mask is not None:
        queue = queue[queue_mask]
    # The loss is computed in fp32 even under autocast: a softmax over thousands of slots at T=0.07 is
    # sensitive to bf16 rounding.
    queue = queue.float()
    log_p_teacher = F.log_softmax(teacher.float() @ queue.T / temperature, dim=-1)
    log_p_student = F.log_softmax(student.float() @ queue.T / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
