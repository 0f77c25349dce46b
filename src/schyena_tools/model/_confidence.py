"""Confidence a biologist can trust: temperature scaling, calibration error and the unknown-type score.

- **Calibration.** A classifier's largest softmax probability is its confidence; fitted to
  convergence on a few hundred cells it is over-confident. Temperature scaling (Guo et al.,
  ICML 2017) divides the logits by one number ``T`` fitted by maximum likelihood on predictions
  for cells the classifier did not train on: ``train_classifier`` uses out-of-fold logits of
  its linear probe (cross-fitting, no cell held back from training) or, when it fine-tunes
  with validation cells, their logits. The predicted labels do not change.
- **Unknown types.** A cell of a type the reference never saw still gets a confident label from
  a softmax. The unknown-type score is instead a distance to the reference (a deep
  nearest-neighbour score, Sun et al., ICML 2022): the distance from a cell to its ``k``-th
  nearest labelled training cell, expressed as the fraction of training cells that are closer
  to their own ``k``-th neighbour, so 0.99 means "farther from the reference than 99% of the
  reference cells are from each other".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Neighbours of the unknown-type score (the ``k``-th nearest reference cell).
UNKNOWN_NEIGHBOURS = 10


def fit_temperature(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """The temperature ``T`` minimising the cross-entropy of ``softmax(logits / T)``, in [0.05, 100].

    ``logits`` ``(cells, classes)`` of cells the classifier did not train on, ``labels``
    their class indices.
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(objective)
    return float(np.clip(np.exp(float(log_t.detach())), 0.05, 100.0))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence (equal-width bins, Guo et al. 2017).

    ``sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|`` over ``n_bins`` bins of the
    largest probability.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(labels)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        inside = bins == b
        error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def _kth_neighbour_distance(
    reference: torch.Tensor, query: torch.Tensor, k: int, exclude_self: bool
) -> np.ndarray:
    """Distance from each query row to its ``k``-th nearest reference row (chunks of 1,024 rows)."""
    k_used = min(k + int(exclude_self), reference.shape[0])
    distances = []
    for start in range(0, query.shape[0], 1024):
        block = torch.cdist(query[start : start + 1024], reference)
        distances.append(block.topk(k_used, dim=1, largest=False).values[:, -1])
    return torch.cat(distances).numpy()


def unknown_features(cell_embedding: torch.Tensor) -> torch.Tensor:
    """The space of the unknown-type score: L2-normalised cell embeddings, ``float32`` on CPU."""
    return F.normalize(torch.as_tensor(cell_embedding).float().cpu(), dim=1)


def reference_distances(reference: torch.Tensor, k: int = UNKNOWN_NEIGHBOURS) -> np.ndarray:
    """Each reference cell's distance to its ``k``-th nearest other reference cell, sorted."""
    return np.sort(_kth_neighbour_distance(reference, reference, k, exclude_self=True))


def unknown_scores(
    reference: torch.Tensor,
    reference_sorted_distances: np.ndarray,
    query: torch.Tensor,
    k: int = UNKNOWN_NEIGHBOURS,
) -> np.ndarray:
    """Unknown-type scores in [0, 1] of ``query`` rows (see the module notes).

    The fraction of reference cells whose ``k``-th-neighbour distance
    (``reference_sorted_distances``, from :func:`reference_distances`) is below the query's
    distance to its ``k``-th nearest reference cell.
    """
    distance = _kth_neighbour_distance(reference, query, k, exclude_self=False)
    ranks = np.searchsorted(reference_sorted_distances, distance, side="left")
    return (ranks / max(len(reference_sorted_distances), 1)).astype(np.float32)
