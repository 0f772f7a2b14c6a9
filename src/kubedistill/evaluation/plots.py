"""Confusion-matrix figure (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

# Beyond this many classes the cells are too small for numbers and the axes too crowded for names.
MAX_ANNOTATED_CLASSES = 20
MAX_LABELED_CLASSES = 50


def save_confusion_png(matrices: Mapping[str, torch.Tensor], classes: Sequence[str], path: Path) -> None:
    """One panel per matrix (e.g. linear and kNN), rows normalized to the true class, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display in pods and CI
    import matplotlib.pyplot as plt

    n = len(classes)
    side = min(4 + 0.35 * n, 16)
    fig, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices), side), squeeze=False)
    for ax, (title, matrix) in zip(axes[0], matrices.items(), strict=True):
        counts = matrix.double()
        rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
        ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"{title}: rows = true class, share predicted")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= MAX_LABELED_CLASSES:
            ax.set_xticks(range(n), labels=list(classes), rotation=90)
            ax.set_yticks(range(n), labels=list(classes))
        if n <= MAX_ANNOTATED_CLASSES:
            for i in range(n):
                for j in range(n):
                    if counts[i, j]:
                        color = "white" if rates[i, j] > 0.5 else "black"
                        ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
