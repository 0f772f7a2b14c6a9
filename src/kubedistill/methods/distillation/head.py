"""The projection head mapping student features into the teacher's space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """Linear(C -> D), weight truncated-normal (std 0.02), bias at torch's default init; output L2-normalized."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) -> (B, D), unit norm."""
        return F.normalize(self.linear(features), dim=-1)
