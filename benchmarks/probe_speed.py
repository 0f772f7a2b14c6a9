"""Probe wall time and accuracy on 10,000 feature vectors: kubedistill's probe vs scikit-learn, same run.

The features are generated (no labeled image set of that size ships with a package here): 100 classes,
512-d, class centres on the unit sphere plus Gaussian noise, L2-normalized like a student's embeddings,
with the noise set so that a linear probe lands well below 100% (the comparison needs room to differ).
10,000 train rows and 2,000 val rows. Both sides get the same rows, the same penalty sweep and the same
held-out split of train for choosing the penalty.

    .venv/bin/python benchmarks/probe_speed.py [--train 10000] [--val 2000] [--classes 100] [--dim 512]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from common import cpu_name

from kubedistill.evaluation.knn import knn_scores
from kubedistill.evaluation.linear import DEFAULT_L2_GRID, stratified_split, train_linear_probe
from kubedistill.evaluation.metrics import topk_accuracy
from kubedistill.evaluation.probe import evaluate_features


def make_features(n: int, classes: int, dim: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = F.normalize(torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return F.normalize(centres[labels] + 0.25 * torch.randn(n, dim, generator=g), dim=1), labels


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def sklearn_sweep(x, y, xv, yv, grid, fit_rows, held_rows) -> tuple[float, float, float]:
    """The same procedure with scikit-learn: sweep C on the held-out split, refit the best on all rows."""
    from sklearn.linear_model import LogisticRegression

    n_fit = len(fit_rows)
    best_c, best_acc = None, -1.0
    for l2 in sorted(grid, reverse=True):
        c = 1 / (l2 * n_fit)  # our mean loss + l2/2 ||W||^2  ==  scikit-learn's C = 1 / (l2 * n)
        model = LogisticRegression(C=c, max_iter=100).fit(x[fit_rows], y[fit_rows])
        acc = (model.predict(x[held_rows]) == y[held_rows]).mean()
        if acc > best_acc:
            best_c, best_acc = 1 / (l2 * len(x)), acc
    final = LogisticRegression(C=best_c, max_iter=100).fit(x, y)
    return float((final.predict(xv) == yv).mean()), float(topk5(final.decision_function(xv), yv)), best_c


def topk5(scores: np.ndarray, labels: np.ndarray) -> float:
    return topk_accuracy(torch.from_numpy(scores), torch.from_numpy(labels), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--val", type=int, default=2_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning at max_iter=100, reported in the table

    x, y = make_features(args.train, args.classes, args.dim, seed=1)
    xv, yv = make_features(args.val, args.classes, args.dim, seed=2)
    rows = []

    metrics, seconds = timed(lambda: evaluate_features(x, y, xv, yv))
    rows.append(("kubedistill evaluate_features (linear sweep + refit, and kNN)", seconds,
                 metrics["linear_top1"], metrics["linear_top5"]))  # fmt: skip
    probe, seconds = timed(lambda: train_linear_probe(x, y, args.classes))
    scores = probe.scores(xv)
    rows.append((f"kubedistill linear probe alone (5 penalties, chose {probe.l2:g})", seconds,
                 topk_accuracy(scores, yv, 1), topk_accuracy(scores, yv, 5)))  # fmt: skip
    votes, seconds = timed(lambda: knn_scores(x, y, xv, args.classes))
    rows.append(("kubedistill kNN alone (k=20, T=0.07)", seconds, topk_accuracy(votes, yv, 1), topk_accuracy(votes, yv, 5)))

    fit_rows, held_rows = (r.numpy() for r in stratified_split(y, 0.2, seed=0))
    xn, yn, xvn, yvn = x.numpy(), y.numpy(), xv.numpy(), yv.numpy()
    (top1, top5, c), seconds = timed(lambda: sklearn_sweep(xn, yn, xvn, yvn, DEFAULT_L2_GRID, fit_rows, held_rows))
    rows.append((f"scikit-learn LogisticRegression, same sweep + refit (chose C={c:.3g})", seconds, top1, top5))
    from sklearn.linear_model import LogisticRegression

    c_ours = 1 / (probe.l2 * len(x))
    model, seconds = timed(lambda: LogisticRegression(C=c_ours, max_iter=1000).fit(xn, yn))
    rows.append((f"scikit-learn LogisticRegression, one fit at our penalty (C={c_ours:.3g}, max_iter=1000)", seconds,
                 float((model.predict(xvn) == yvn).mean()), topk5(model.decision_function(xvn), yvn)))  # fmt: skip

    print(f"- command: `.venv/bin/python benchmarks/probe_speed.py` ({args.train} train / {args.val} val rows, "
          f"{args.classes} classes, {args.dim}-d)")  # fmt: skip
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_name()}; torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}, scikit-learn {_sklearn_version()}; "
          f"date: {datetime.date.today().isoformat()}")  # fmt: skip
    print()
    print("| what | wall time (s) | val top-1 | val top-5 |")
    print("|---|---:|---:|---:|")
    for name, secs, top1, top5 in rows:
        print(f"| {name} | {secs:.2f} | {top1:.4f} | {top5:.4f} |")
    print()
    print(json.dumps({"rows": rows}))


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


if __name__ == "__main__":
    main()
