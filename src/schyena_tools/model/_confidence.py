"""Confidence a biologist can trust: temperature scaling, calibration error and the unknown-type score.

- **Calibration.** A classifier's largest softmax probability is its confidence; fitted to
  convergence on a few hundred cells it is over-confident. Temperature scaling (Guo et al.,
  ICML 2017) divides the logits by one number ``T`` fitted by maximum likelihood on predictions
  for cells the classifier did not train on: ``train_classifier`` uses out-of-fold logits of
  its linear probe (cross-fitting, no cell held back from training) or, when it fine-tunes
  with validation cells, their logits. The predicted labels do not change.
- **Unknown types.** A cell of a type the reference never saw still gets a label from a
  softmax, often a confident one. The unknown-type score combines two signs that a cell lies
  outside the labelled training cells, each expressed as a rank among those training cells so
  that both read on the same [0, 1] scale:

  1. *low confidence*: the fraction of training cells whose out-of-fold (calibrated) confidence
     is above the cell's confidence;
  2. *far from the reference*: the distance from the cell to its 10th nearest training cell in
     the principal components (50) of the classifier's own standardised inputs (cell embedding
     and expression), as the fraction of training cells that are closer to their own 10th
     neighbour (a deep nearest-neighbour score, Sun et al., ICML 2022).

  The score is their mean. Measured by leaving one Zeisel 2015 type out at a time
  (``benchmarks/unknown_types.py``): the confidence alone separated unseen major classes best,
  the distance unseen subtypes; the mean is never far from the better one.
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


#: Principal components of the classifier's inputs that the distance is measured in.
UNKNOWN_COMPONENTS = 50


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


def fit_unknown_reference(features: torch.Tensor, confidences: np.ndarray, seed: int | None = 0) -> dict:
    """The reference of the unknown-type score, from the training cells (plain arrays, saved).

    ``features``: ``(cells, inputs)`` the classifier's standardised inputs of its training cells
    (:func:`~._linear_readout.readout_features`); ``confidences``: their out-of-fold calibrated
    confidences (or, without cross-fitting, their confidences).
    """
    features = torch.as_tensor(features).float()
    center = features.mean(0)
    n_components = max(1, min(UNKNOWN_COMPONENTS, features.shape[0] - 1, features.shape[1]))
    with torch.random.fork_rng():  # seeded, without touching the caller's random state
        torch.manual_seed(0 if seed is None else seed)
        _, _, components = torch.pca_lowrank(features - center, q=n_components, center=False, niter=4)
    coordinates = (features - center) @ components
    return {
        "center": center.numpy(),
        "projection": components.contiguous().numpy(),
        "coordinates": coordinates.numpy(),
        "distances": np.sort(_kth_neighbour_distance(coordinates, coordinates, UNKNOWN_NEIGHBOURS, True)),
        "confidences": np.sort(np.asarray(confidences, dtype=np.float32)),
    }


def project(reference: dict, features: torch.Tensor) -> torch.Tensor:
    """``features`` in the reference's principal components.

    Columns past the reference's width are left out: they are a query's extra genes, whose
    weights a classifier transferred from a reference without them holds at zero.
    """
    center = torch.from_numpy(reference["center"])
    features = torch.as_tensor(features).float()[:, : center.shape[0]]
    return (features - center) @ torch.from_numpy(reference["projection"])


def unknown_scores(reference: dict, coordinates: torch.Tensor, confidences: np.ndarray) -> np.ndarray:
    """Unknown-type scores in [0, 1] (see the module notes) of cells given by their
    :func:`project` ed ``coordinates`` and calibrated ``confidences``.
    """
    sorted_distances, sorted_confidences = reference["distances"], reference["confidences"]
    distance = _kth_neighbour_distance(
        torch.from_numpy(reference["coordinates"]),
        torch.as_tensor(coordinates).float(),
        UNKNOWN_NEIGHBOURS,
        False,
    )
    far = np.searchsorted(sorted_distances, distance, side="left") / max(len(sorted_distances), 1)
    less_confident = 1.0 - np.searchsorted(sorted_confidences, confidences, side="right") / max(
        len(sorted_confidences), 1
    )
    return (0.5 * (far + less_confident)).astype(np.float32)
