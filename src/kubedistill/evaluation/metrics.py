"""Classification metrics on score matrices: top-k accuracy and the confusion matrix."""

from __future__ import annotations

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose true label is among the ``k`` highest scores.

    Args:
        scores: (N, C) class scores (logits, probabilities or kNN votes).
        labels: (N,) int64 class indices.
        k: at most this many guesses per row. With C < k classes every class is guessed, so top-k is 1.0:
            "top-5" on a 3-class problem is defined as min(5, C) guesses, not as an error.
    """
    if scores.shape[0] == 0:
        return float("nan")
    guesses = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (guesses == labels.unsqueeze(1)).any(dim=1).double().mean().item()


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)
