"""Multinomial logistic regression on frozen features, with the L2 penalty chosen on held-out training rows.

The whole feature matrix fits in memory (10k x 512 floats is 20 MB), so the fit is full-batch L-BFGS: a few
dozen matrix products per penalty, no learning rate to tune and no epochs. The penalty is picked on a
stratified held-out part of the *training* features; the validation set is never looked at until the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Penalties lambda of  mean cross-entropy + lambda/2 * ||W||^2, strongest first (each fit warm-starts the next).
# In scikit-learn's terms C = 1 / (lambda * n_samples). On L2-normalized features anything stronger than 1e-2
# predicts little more than the majority class.
DEFAULT_L2_GRID: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
DEFAULT_HOLDOUT_FRACTION = 0.2
MAX_ITERATIONS = 100
# Stop when every gradient entry of the (mean) objective is below this: scikit-learn's default tol. Tighter
# costs 2-3x the time here without changing which penalty wins or the val accuracy (BENCHMARKS.md).
GRADIENT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class LinearClassifier:
    """``scores(x) = x @ weight.T + bias``: (D,) features -> (C,) logits."""

    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    l2: float  # the penalty it was trained with
    holdout_top1: dict[float, float]  # penalty -> held-out top-1 accuracy of the selection sweep

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.T + self.bias


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    l2: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iterations: int = MAX_ITERATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 (bias not penalised) with L-BFGS.

    Args:
        features: (N, D) float32. labels: (N,) int64 in [0, num_classes).
        init: (weight (C, D), bias (C,)) to start from, e.g. the solution for a stronger penalty.

    Returns:
        weight (C, D), bias (C,).
    """
    dim = features.shape[1]
    weight = torch.zeros(num_classes, dim, device=features.device) if init is None else init[0].clone()
    bias = torch.zeros(num_classes, device=features.device) if init is None else init[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iterations, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=GRADIENT_TOLERANCE, tolerance_change=1e-6,
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def stratified_split(labels: torch.Tensor, fraction: float, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, held_out): ``fraction`` of every class with at least 2 rows is held out (at least one row).

    Classes with a single row stay in the fit part, so every class can be learned.
    """
    generator = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for cls in labels.unique(sorted=True).tolist():
        rows = (labels == cls).nonzero().flatten().cpu()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_held = 0 if len(rows) < 2 else max(1, round(fraction * len(rows)))
        held.append(rows[:n_held])
        fit.append(rows[n_held:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def train_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    seed: int = 0,
) -> LinearClassifier:
    """Pick the penalty with the best held-out top-1 (ties: the stronger penalty), then refit on all rows."""
    if not l2_grid or any(v < 0 for v in l2_grid) or not 0 < holdout_fraction < 1:
        raise ValueError(
            f"train_linear_probe: l2_grid {list(l2_grid)} must be non-empty and >= 0, holdout_fraction "
            f"{holdout_fraction} in (0, 1)"
        )
    grid = sorted(set(l2_grid), reverse=True)
    fit_rows, held_rows = stratified_split(labels, holdout_fraction, seed=seed)
    held_top1: dict[float, float] = {}
    if len(held_rows) and len(grid) > 1:
        fit_rows, held_rows = fit_rows.to(features.device), held_rows.to(features.device)
        x_fit, y_fit, x_held, y_held = features[fit_rows], labels[fit_rows], features[held_rows], labels[held_rows]
        solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        previous = None
        for l2 in grid:
            previous = solutions[l2] = fit_logistic_regression(x_fit, y_fit, num_classes, l2=l2, init=previous)
            predicted = (x_held @ previous[0].T + previous[1]).argmax(dim=1)
            held_top1[l2] = (predicted == y_held).double().mean().item()
        best = max(grid, key=lambda l2: (held_top1[l2], l2))
        init = solutions[best]  # the refit on all rows starts from the held-out fit: far fewer iterations
    else:
        best, init = (grid[0] if len(grid) == 1 else grid[len(grid) // 2]), None
    weight, bias = fit_logistic_regression(features, labels, num_classes, l2=best, init=init)
    return LinearClassifier(weight, bias, best, held_top1)
