"""The linear probe that ``train_classifier`` starts from: a convex fit of the head's readout.

Fine-tuning a pre-trained network on a small labelled set from a random head first spends its
steps on the head while the gradients of that random head pull the encoder off its
pre-trained features; fitting the linear readout to convergence on frozen features first and
fine-tuning from there ("LP-FT", Kumar et al., ICLR 2022) avoids that. Here the probe is a
multinomial logistic regression with an L2 penalty on the standardised cell embedding and the
standardised expression of every vocabulary gene, solved by L-BFGS: the objective of
scikit-learn's ``LogisticRegression(C=1 / penalty)``, the logistic-regression baseline of
cell-type annotation (CellTypist). ``train_classifier`` stops that L-BFGS path early by default
(:func:`logistic_path`, :func:`choose_probe_iterations`): fitted to convergence on ~150 cells
read at ~20,000 genes it overfits.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..nn import CellTypeClassifier, DoubletClassifier
from ..validation import check_number

#: Labelled cells the probe is fitted on at most (a random subset beyond that): the features
#: of every probed cell are held in memory, ``cells x genes`` floats.
PROBE_MAX_CELLS = 5000


def probe_cells(train_idx: np.ndarray, seed: int, max_cells: int = PROBE_MAX_CELLS) -> np.ndarray:
    """The training cells the probe sees: all of them, or ``max_cells`` drawn at random."""
    if train_idx.size <= max_cells:
        return train_idx
    return np.sort(np.random.default_rng(seed).choice(train_idx, max_cells, replace=False))


def solve_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    penalty: float,
    max_iter: int = 500,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """L2-penalised multinomial logistic regression by L-BFGS: ``(weight, bias, loss)``.

    Minimises ``sum_i CE(x_i W^T + b, y_i) + penalty / 2 * |W|^2`` (the bias is not penalised)
    in the dtype of ``features`` with a strong-Wolfe line search: scikit-learn's
    ``LogisticRegression(C=1 / penalty)``. ``init``: a starting ``(weight, bias)`` (e.g. the
    solution on all cells, when refitting on most of them), else zeros; the problem is convex,
    so the start changes the time, not the solution.
    """
    check_number(penalty, "penalty", minimum=0, exclusive_minimum=True)
    features = features.detach()
    labels = labels.long().cpu()
    # Columns that are zero in every cell (genes a query did not measure) get weight 0 at the
    # optimum: solve on the others only (a 4,000-gene query read at 19,972 tokens: 5x fewer).
    active = _active_columns(features)
    if not active.all():
        start = None if init is None else (init[0][:, active.to(init[0].device)], init[1])
        weight, bias, loss = solve_logistic(features[:, active], labels, n_classes, penalty, max_iter, start)
        full = torch.zeros(n_classes, features.shape[1], dtype=weight.dtype)
        full[:, active] = weight
        return full, bias, loss
    if init is None:
        weight = torch.zeros(n_classes, features.shape[1], dtype=features.dtype)
        bias = torch.zeros(n_classes, dtype=features.dtype)
    else:
        weight, bias = (value.detach().to(features.dtype).clone() for value in init)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer, objective = _lbfgs(features, labels, penalty, weight, bias, max_iter)
    optimizer.step(objective)
    final = float(objective().detach())
    return weight.detach(), bias.detach(), final


def _active_columns(features: torch.Tensor) -> torch.Tensor:
    """Columns not zero in every cell (all of them when there are no cells)."""
    if not features.shape[0]:
        return torch.ones(features.shape[1], dtype=torch.bool)
    return features.abs().amax(0) > 0


def _lbfgs(features, labels, penalty: float, weight, bias, max_iter: int):
    """The L-BFGS optimiser of the penalised multinomial loss and its closure."""
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels, reduction="sum")
        loss = loss + 0.5 * penalty * weight.square().sum()
        loss.backward()
        return loss

    return optimizer, objective


def logistic_path(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    penalty: float,
    iterations: tuple[int, ...],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight, bias)`` after each number of L-BFGS ``iterations`` from zeros, on one path.

    The same optimiser as :func:`solve_logistic`, stopped early: each snapshot continues the
    previous one (L-BFGS keeps its curvature history between steps), so the whole path costs one
    fit of ``max(iterations)`` iterations. Stopping a first-order path from zero early is a
    regulariser of its own (it keeps the weights in the leading directions of the data); the
    logistic-regression baseline's default tolerance stops it early too.
    """
    features = features.detach()
    labels = labels.long().cpu()
    active = _active_columns(features)  # as solve_logistic: zero columns keep weight 0
    weight = torch.zeros(n_classes, int(active.sum()), dtype=features.dtype, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=features.dtype, requires_grad=True)
    optimizer, objective = _lbfgs(features[:, active], labels, penalty, weight, bias, 1)
    snapshots, done = [], 0
    for target in sorted(iterations):
        if target > done:
            optimizer.param_groups[0]["max_iter"] = target - done
            optimizer.param_groups[0]["max_eval"] = max((target - done) * 5 // 4, 1)  # as LBFGS sets it
            optimizer.step(objective)
            done = target
        full = torch.zeros(n_classes, features.shape[1], dtype=features.dtype)
        full[:, active] = weight.detach()
        snapshots.append((full, bias.detach().clone()))
    return snapshots


#: Factor on the standardised cell-embedding columns in ``train_classifier``'s probe
#: (``probe_embedding_weight``; fine-tuning recipe page, round 9).
PROBE_EMBEDDING_WEIGHT = 2.0

#: L-BFGS iterations the early-stopped probe chooses from (``probe_iterations="cv"``).
PROBE_ITERATION_GRID = (5, 10, 20, 50, 100, 500)


def choose_probe_iterations(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    penalty: float,
    grid: tuple[int, ...] = PROBE_ITERATION_GRID,
    n_folds: int = 5,
    seed: int = 0,
) -> tuple[int, torch.Tensor]:
    """The number of L-BFGS iterations with the best out-of-fold macro-F1, and its logits.

    Each of ``n_folds`` folds of the training cells is predicted by the path fitted on the
    others (:func:`logistic_path`); ties go to fewer iterations. Returns the chosen number and
    the out-of-fold logits at it (what calibration and the unknown-type reference read).
    """
    from sklearn.metrics import f1_score

    labels = torch.as_tensor(labels).long()
    grid = tuple(sorted(set(grid)))
    fold = np.random.default_rng(seed).permutation(np.arange(len(labels)) % n_folds)
    logits = torch.zeros(len(grid), len(labels), n_classes, dtype=features.dtype)
    for k in range(n_folds):
        held_out = torch.from_numpy(fold == k)
        if not held_out.any() or held_out.all():
            continue
        path = logistic_path(features[~held_out], labels[~held_out], n_classes, penalty, grid)
        for i, (weight, bias) in enumerate(path):
            logits[i, held_out] = features[held_out] @ weight.T + bias
    truth = labels.numpy()
    scores = [f1_score(truth, logit.argmax(1).numpy(), average="macro") for logit in logits]
    best = int(np.argmax(scores))  # first maximum: the fewest iterations
    return grid[best], logits[best]


def early_stopped_probe(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, penalty: float, seed: int = 0
) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The default probe (``probe_iterations="cv"``): iterations, weight, bias, out-of-fold logits.

    :func:`choose_probe_iterations` picks the stop; the fit on all cells then follows the same
    path as the folds' (:func:`logistic_path` over the grid up to it) and stops there.
    """
    iterations, out_of_fold = choose_probe_iterations(features, labels, n_classes, penalty, seed=seed)
    steps = tuple(g for g in PROBE_ITERATION_GRID if g <= iterations)
    weight, bias = logistic_path(features, labels, n_classes, penalty, steps)[-1]
    return iterations, weight, bias, out_of_fold


#: Calibrated confidence at which ``self_trained_probe`` takes an unlabelled cell's prediction
#: as its label.
SELF_TRAINING_CONFIDENCE = 0.9


def self_trained_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    penalty: float,
    unlabelled: torch.Tensor | None = None,
    confidence: float = SELF_TRAINING_CONFIDENCE,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The early-stopped probe, refitted once with confident unlabelled cells ("self-training").

    :func:`early_stopped_probe` on the labelled ``features``; then the ``unlabelled`` cells whose
    temperature-calibrated probability (the temperature from the out-of-fold logits) is at least
    ``confidence`` join them with their predicted class, and the probe follows the same L-BFGS
    path on all of them to the same number of iterations. Returns ``(weight, bias, info)``,
    ``info`` holding ``iterations``, ``pseudo_labelled`` (cells added) and ``out_of_fold`` (the
    labelled cells' out-of-fold logits).
    """
    from ._confidence import fit_temperature

    iterations, weight, bias, out_of_fold = early_stopped_probe(features, labels, n_classes, penalty, seed)
    info = dict(iterations=iterations, pseudo_labelled=0, out_of_fold=out_of_fold)
    if unlabelled is None or not len(unlabelled):
        return weight, bias, info
    temperature = fit_temperature(out_of_fold, labels)
    probabilities = torch.softmax((unlabelled @ weight.T + bias) / temperature, dim=1)
    best, predicted = probabilities.max(1)
    keep = best >= confidence
    if keep.any():
        steps = tuple(g for g in PROBE_ITERATION_GRID if g <= iterations)
        weight, bias = logistic_path(
            torch.cat([features, unlabelled[keep]]),
            torch.cat([torch.as_tensor(labels).long(), predicted[keep]]),
            n_classes,
            penalty,
            steps,
        )[-1]
    info["pseudo_labelled"] = int(keep.sum())
    return weight, bias, info


def readout_features(
    head: CellTypeClassifier,
    cell_embedding: torch.Tensor,
    expression: torch.Tensor,
    missing: torch.Tensor | None,
    log_depth: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The standardised inputs of ``head``'s fitted paths, side by side: ``(cells, features)``.

    ``[cell embedding | expression | depth]`` (depth only with a
    :class:`~schyena_tools.nn.DoubletClassifier` and ``log_depth``), standardised with the
    head's buffers; the features the probe's logistic regression reads.
    """
    device = head.cell_linear.weight.device
    with torch.no_grad():
        cells, genes = head.standardized_inputs(
            cell_embedding.float().to(device),
            expression.float().to(device),
            None if missing is None else missing.to(device),
        )
        parts = [cells, genes]
        if log_depth is not None and isinstance(head, DoubletClassifier):
            parts.append(head.standardized_depth(log_depth.to(device)))
        # A plain tensor (the features may come from inference mode) for the solver.
        return torch.cat(parts, dim=1).to("cpu", dtype).clone()


def set_readout_standardization(
    head: CellTypeClassifier,
    cell_embedding: torch.Tensor,
    expression: torch.Tensor,
    missing: torch.Tensor | None,
    log_depth: torch.Tensor | None = None,
) -> None:
    """Fill ``head``'s standardisation buffers from these cells (missing genes left out)."""
    cell_embedding, expression = cell_embedding.float().cpu(), expression.float().cpu()
    measured_expression = expression
    if missing is not None:
        measured_expression = expression.masked_fill(missing.cpu().expand_as(expression), float("nan"))
    device = head.cell_linear.weight.device
    head_cpu = head.to("cpu")
    head_cpu.set_standardization(cell_embedding, measured_expression)
    if log_depth is not None and isinstance(head, DoubletClassifier):
        head_cpu.set_depth_standardization(log_depth)
    head.to(device)


def write_readout_weights(head: CellTypeClassifier, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Write a solved ``(weight, bias)`` (columns as :func:`readout_features`) into ``head``.

    The contextualised gene-state path (``gene_linear``) is set to zero: fine-tuning learns it
    from there.
    """
    d_model = head.cell_linear.in_features
    n_genes = head.expression_linear.in_features
    weight, bias = weight.to(head.cell_linear.weight.device), bias.to(head.cell_linear.weight.device)
    with torch.no_grad():
        head.cell_linear.weight.copy_(weight[:, :d_model])
        head.cell_linear.bias.copy_(bias)
        head.expression_linear.weight.copy_(weight[:, d_model : d_model + n_genes])
        head.gene_linear.weight.zero_()
        if isinstance(head, DoubletClassifier):
            depth = weight[:, d_model + n_genes :]
            head.depth_linear.weight.copy_(
                depth if depth.shape[1] else torch.zeros_like(head.depth_linear.weight)
            )


def fit_linear_readout(
    head: CellTypeClassifier,
    cell_embedding: torch.Tensor,
    expression: torch.Tensor,
    missing: torch.Tensor | None,
    labels: torch.Tensor,
    penalty: float = 1.0,
    max_iter: int = 500,
    log_depth: torch.Tensor | None = None,
) -> float:
    """Fit ``head``'s standardisation, cell and expression weights and bias; returns the loss.

    Minimises ``sum_i CE(logits_i, y_i) + penalty / 2 * (|W_cell|^2 + |W_expr|^2)`` (the bias is
    not penalised) in float64 with L-BFGS and a strong-Wolfe line search (:func:`solve_logistic`),
    then writes the result into ``head`` (float32). The contextualised gene-state path
    (``gene_linear``) is set to zero: fine-tuning learns it from there.

    Parameters
    ----------
    head
        The classifier head to fit, in place.
    cell_embedding
        ``(cells, d_model)`` embeddings of the training cells from the frozen encoder.
    expression
        ``(cells, genes)`` log-normalised expression in vocabulary order.
    missing
        ``(genes,)`` or ``(cells, genes)`` bool, True for genes not measured; or ``None``.
    labels
        ``(cells,)`` class indices in ``[0, head.out_features)``.
    penalty
        L2 penalty (scikit-learn's ``1 / C``).
    max_iter
        L-BFGS iterations at most.
    log_depth
        ``(cells,)`` ``log1p`` total counts, read by a
        :class:`~schyena_tools.nn.DoubletClassifier` (ignored by other heads).

    """
    check_number(penalty, "penalty", minimum=0, exclusive_minimum=True)
    set_readout_standardization(head, cell_embedding, expression, missing, log_depth)
    features = readout_features(head, cell_embedding, expression, missing, log_depth)
    weight, bias, final = solve_logistic(features, labels, head.out_features, penalty, max_iter)
    write_readout_weights(head, weight, bias)
    return final


def cross_fitted_logits(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    penalty: float,
    n_folds: int = 5,
    seed: int = 0,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Out-of-fold logits: each cell's from a readout fitted on the other ``n_folds - 1`` folds.

    What the probe would say of cells it never saw, without holding any cell back from the
    final fit (it calibrates the probe's confidence; :func:`~._confidence.fit_temperature`).
    ``init``: the solution on all cells, as each fold's start (much faster than zeros).
    """
    labels = torch.as_tensor(labels).long()
    fold = np.random.default_rng(seed).permutation(np.arange(len(labels)) % n_folds)
    logits = torch.empty(len(labels), n_classes, dtype=features.dtype)
    for k in range(n_folds):
        held_out = torch.from_numpy(fold == k)
        if not held_out.any() or held_out.all():
            continue
        weight, bias, _ = solve_logistic(
            features[~held_out], labels[~held_out], n_classes, penalty, init=init
        )
        logits[held_out] = features[held_out] @ weight.T + bias
    return logits
