"""Weighted k-nearest-neighbour classification on L2-normalized features (cosine similarity).

Each of the k most similar training rows votes for its class with weight exp(similarity / temperature),
as in the kNN evaluation of DINO: close neighbours count much more than far ones.
"""

from __future__ import annotations

import torch

# Rows of queries per similarity matrix: (chunk x N_train) floats stay around 40 MB for 10k training rows.
QUERY_CHUNK = 1024


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Class votes of every query row.

    Args:
        train_features: (N, D) L2-normalized; the memory bank.
        train_labels: (N,) int64 in [0, num_classes).
        query_features: (Q, D) L2-normalized, on the same device as ``train_features``.
        k: neighbours per query (capped at N).
        temperature: softness of the vote weights exp(cos / temperature).

    Returns:
        (Q, C) float32 votes; argmax is the prediction, top-k of it the k best guesses.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn_scores: need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    k = min(k, train_features.shape[0])
    votes = torch.zeros(query_features.shape[0], num_classes, device=query_features.device)
    for start in range(0, query_features.shape[0], QUERY_CHUNK):
        queries = query_features[start : start + QUERY_CHUNK]
        similarity, neighbours = (queries @ train_features.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes[start : start + len(queries)].scatter_add_(1, train_labels[neighbours], weights)
    return votes
