"""Linear probe and kNN on feature matrices: separable data, shuffled labels, no val leakage, vs scikit-learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kubedistill.errors import DataError
from kubedistill.evaluation.knn import knn_scores
from kubedistill.evaluation.linear import stratified_split
from kubedistill.evaluation.metrics import confusion_matrix, topk_accuracy
from kubedistill.evaluation.probe import evaluate_features, run_probes

NUM_CLASSES = 8


def _clusters(n: int, *, spread: float, seed: int, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rows around NUM_CLASSES fixed centres (the same centres for every seed)."""
    centres = torch.randn(NUM_CLASSES, dim, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    return centres[labels] + spread * torch.randn(n, dim, generator=g), labels


def test_separable_classes_score_100_percent():
    x, y = _clusters(400, spread=0.3, seed=0)
    xv, yv = _clusters(160, spread=0.3, seed=1)
    metrics = evaluate_features(x, y, xv, yv)
    assert metrics["linear_top1"] == 1.0 and metrics["knn_top1"] == 1.0
    assert metrics["linear_top5"] == 1.0 and metrics["knn_top5"] == 1.0
    assert (metrics["num_train"], metrics["num_val"], metrics["num_classes"], metrics["feature_dim"]) == (400, 160, 8, 64)


def test_shuffled_labels_stay_near_chance_on_val():
    x, y = _clusters(800, spread=0.3, seed=0)
    xv, yv = _clusters(800, spread=0.3, seed=1)
    g = torch.Generator().manual_seed(7)
    metrics = evaluate_features(x, y[torch.randperm(800, generator=g)], xv, yv[torch.randperm(800, generator=g)])
    chance = 1 / NUM_CLASSES  # 800 val rows: a binomial std of 0.012 around 0.125
    assert abs(metrics["linear_top1"] - chance) < 0.06, metrics
    assert abs(metrics["knn_top1"] - chance) < 0.06, metrics
    assert abs(metrics["linear_top5"] - 5 / NUM_CLASSES) < 0.08, metrics


def test_val_rows_copied_from_train_with_other_labels_are_not_memorised():
    """Leakage check: val = the train features with fresh random labels. A probe that fit or tuned on val
    would score high; one that only knows train's labels scores chance."""
    x, _ = _clusters(800, spread=1.5, seed=0)
    g = torch.Generator().manual_seed(3)
    y_train = torch.randint(0, NUM_CLASSES, (800,), generator=g)
    y_val = torch.randint(0, NUM_CLASSES, (800,), generator=g)
    metrics = evaluate_features(x, y_train, x.clone(), y_val)
    assert metrics["linear_top1"] < 0.22 and metrics["knn_top1"] < 0.22, metrics


def test_penalty_choice_never_looks_at_val():
    x, y = _clusters(400, spread=2.0, seed=0)
    xv, yv = _clusters(200, spread=2.0, seed=1)
    chosen = {evaluate_features(x, y, xv_, yv_)["linear_l2"] for xv_, yv_ in ((xv, yv), (-xv, yv.flip(0)))}
    assert len(chosen) == 1


def test_linear_probe_matches_scikit_learn_on_the_same_features():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = _clusters(1200, spread=3.0, seed=0)
    xv, yv = _clusters(800, spread=3.0, seed=1)
    ours = evaluate_features(x, y, xv, yv, l2_grid=[1e-3])
    xn, xvn = F.normalize(x, dim=1).numpy(), F.normalize(xv, dim=1).numpy()
    # Our penalty lambda/2 ||W||^2 on the mean loss is scikit-learn's C = 1 / (lambda * n).
    reference = sklearn.LogisticRegression(C=1 / (1e-3 * len(x)), max_iter=2000).fit(xn, y.numpy())
    reference_top1 = (reference.predict(xvn) == yv.numpy()).mean()
    assert 0.5 < reference_top1 < 0.99  # a task with room for the two to differ
    assert ours["linear_top1"] == pytest.approx(reference_top1, abs=0.01)


def test_topk_with_fewer_classes_than_k_counts_every_class():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06]])
    labels = torch.tensor([0, 2])
    assert topk_accuracy(scores, labels, 1) == 0.0
    assert topk_accuracy(scores, labels, 2) == 0.5
    assert topk_accuracy(scores, labels, 5) == 1.0  # min(5, 3) guesses


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_knn_votes_are_similarity_weighted():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    votes = knn_scores(bank, labels, query, 2, k=2, temperature=0.5)
    # Neighbours: row 0 (cos 1.0, class 0) and row 1 (cos 0.8, class 1).
    assert votes[0].tolist() == pytest.approx([torch.tensor(2.0).exp().item(), torch.tensor(1.6).exp().item()])


def test_stratified_holdout_takes_every_class():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    fit, held = stratified_split(labels, 0.2, seed=0)
    assert sorted(labels[held].tolist()) == [0, 0, 1]
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(16))


def test_string_labels_and_confusion_outputs():
    x, y = _clusters(80, spread=0.3, seed=0)
    names = [f"class-{int(v)}" for v in y]
    outcome = run_probes(x, names, x[:16], names[:16])
    assert outcome.classes == [f"class-{i}" for i in range(NUM_CLASSES)]
    assert outcome.confusion["linear"].trace().item() == 16 and outcome.confusion["knn"].sum().item() == 16


def test_val_class_missing_from_train_is_a_data_error():
    x, y = _clusters(40, spread=0.3, seed=0)
    with pytest.raises(DataError, match="1 validation class\\(es\\) do not occur in the training set: 9"):
        evaluate_features(x, y, x[:2], torch.tensor([0, 9]))
