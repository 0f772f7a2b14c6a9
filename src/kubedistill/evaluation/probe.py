"""Linear probe + weighted kNN on train/val features, and the ``kubedistill probe`` step around them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kubedistill.errors import DataError
from kubedistill.evaluation.knn import knn_scores
from kubedistill.evaluation.linear import DEFAULT_HOLDOUT_FRACTION, DEFAULT_L2_GRID, train_linear_probe
from kubedistill.evaluation.metrics import confusion_matrix, topk_accuracy

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07

Labels = Sequence[str] | Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class ProbeOutcome:
    """Everything one evaluation produced: ``metrics`` (as in metrics.json) and the confusion matrices."""

    metrics: dict[str, float | int]
    classes: list[str]
    confusion: dict[str, torch.Tensor]  # "linear" / "knn" -> (C, C) int64, rows true, columns predicted


def evaluate_features(
    train_features: torch.Tensor,
    train_labels: Labels,
    val_features: torch.Tensor,
    val_labels: Labels,
    *,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, float | int]:
    """Score frozen features: returns the metrics dict written to metrics.json.

    Args:
        train_features, val_features: (N, D) and (M, D) float features of any extractor; L2-normalized here.
        train_labels, val_labels: class names or integers, one per row. Every val class must occur in train.
        k, temperature: the weighted kNN classifier (cosine similarity, votes exp(cos / temperature)).
        l2_grid, holdout_fraction: the linear probe's penalty sweep, chosen on a stratified held-out part of
            train (val is never used for the choice).
        device: where to compute; the features' device by default.

    Keys: linear_top1, linear_top5, knn_top1, knn_top5 (fractions in [0, 1]; top-5 means min(5, C) guesses,
    so it is 1.0 with 5 classes or fewer), num_train, num_val, num_classes, feature_dim, linear_l2, knn_k,
    knn_temperature.
    """
    return run_probes(
        train_features, train_labels, val_features, val_labels, k=k, temperature=temperature, l2_grid=l2_grid,
        holdout_fraction=holdout_fraction, seed=seed, device=device,
    ).metrics  # fmt: skip


def run_probes(
    train_features: torch.Tensor,
    train_labels: Labels,
    val_features: torch.Tensor,
    val_labels: Labels,
    *,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> ProbeOutcome:
    """``evaluate_features`` plus the class names and confusion matrices."""
    _check_shapes(train_features, train_labels, val_features, val_labels)
    classes, y_train, y_val = encode_labels(train_labels, val_labels)
    device = torch.device(device) if device is not None else train_features.device
    x_train = F.normalize(train_features.to(device, torch.float32), dim=1)
    x_val = F.normalize(val_features.to(device, torch.float32), dim=1)
    y_train, y_val = y_train.to(device), y_val.to(device)
    num_classes = len(classes)

    linear = train_linear_probe(
        x_train, y_train, num_classes, l2_grid=l2_grid, holdout_fraction=holdout_fraction, seed=seed
    )
    linear_scores = linear.scores(x_val)
    knn = knn_scores(x_train, y_train, x_val, num_classes, k=k, temperature=temperature)
    metrics: dict[str, float | int] = {
        "linear_top1": topk_accuracy(linear_scores, y_val, 1),
        "linear_top5": topk_accuracy(linear_scores, y_val, 5),
        "knn_top1": topk_accuracy(knn, y_val, 1),
        "knn_top5": topk_accuracy(knn, y_val, 5),
        "num_train": len(y_train),
        "num_val": len(y_val),
        "num_classes": num_classes,
        "feature_dim": x_train.shape[1],
        "linear_l2": linear.l2,
        "knn_k": min(k, len(y_train)),
        "knn_temperature": temperature,
    }
    confusion = {
        "linear": confusion_matrix(linear_scores.argmax(1), y_val, num_classes).cpu(),
        "knn": confusion_matrix(knn.argmax(1), y_val, num_classes).cpu(),
    }
    return ProbeOutcome(metrics, classes, confusion)


def encode_labels(train_labels: Labels, val_labels: Labels) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Class names (sorted train labels, as strings) and int64 indices for train and val.

    Raises DataError when val has a class that train lacks (the probe could never predict it).
    """
    train = _as_list(train_labels)
    val = _as_list(val_labels)
    ordered = sorted(set(train), key=lambda v: (isinstance(v, str), v))
    index = {name: i for i, name in enumerate(ordered)}
    unknown = sorted({str(v) for v in val if v not in index})
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise DataError(
            f"{len(unknown)} validation class(es) do not occur in the training set: {shown}. Give train images "
            "of every class the validation set has"
        )
    if len(ordered) < 2:
        raise DataError(f"the training set has {len(ordered)} class(es); a probe needs at least 2")
    y_train = torch.tensor([index[v] for v in train], dtype=torch.long)
    y_val = torch.tensor([index[v] for v in val], dtype=torch.long)
    return [str(v) for v in ordered], y_train, y_val


def _as_list(labels: Labels) -> list:
    if isinstance(labels, torch.Tensor):
        return labels.flatten().tolist()
    return list(labels)


def _check_shapes(train_features, train_labels, val_features, val_labels) -> None:
    problems = []
    for name, x, y in (("train", train_features, train_labels), ("val", val_features, val_labels)):
        if x.ndim != 2 or x.shape[0] == 0:
            problems.append(f"{name} features must be a non-empty (N, D) matrix, got shape {tuple(x.shape)}")
        elif x.shape[0] != len(y):
            problems.append(f"{name}: {x.shape[0]} feature rows but {len(y)} labels")
    if not problems and train_features.shape[1] != val_features.shape[1]:
        problems.append(f"feature dims differ: train {train_features.shape[1]}, val {val_features.shape[1]}")
    if problems:
        raise ValueError("evaluate_features: " + "; ".join(problems))
