"""The linear probe that ``train_classifier`` starts from: a convex fit of the head's readout.

Fine-tuning a pre-trained network on a small labelled set from a random head first spends its
steps on the head while the gradients of that random head pull the encoder off its
pre-trained features; fitting the linear readout to convergence on frozen features first and
fine-tuning from there ("LP-FT", Kumar et al., ICLR 2022) avoids that. Here the probe is a
multinomial logistic regression with an L2 penalty on the standardised cell embedding and the
standardised expression of every vocabulary gene, solved by L-BFGS: the objective of
scikit-learn's ``LogisticRegression(C=1 / penalty)``, the logistic-regression baseline of
cell-type annotation (CellTypist).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..nn import CellTypeClassifier
from ..validation import check_number

#: Labelled cells the probe is fitted on at most (a random subset beyond that): the features
#: of every probed cell are held in memory, ``cells x genes`` floats.
PROBE_MAX_CELLS = 5000


def probe_cells(train_idx: np.ndarray, seed: int, max_cells: int = PROBE_MAX_CELLS) -> np.ndarray:
    """The training cells the probe sees: all of them, or ``max_cells`` drawn at random."""
    if train_idx.size <= max_cells:
        return train_idx
    return np.sort(np.random.default_rng(seed).choice(train_idx, max_cells, replace=False))


def fit_linear_readout(
    head: CellTypeClassifier,
    cell_embedding: torch.Tensor,
    expression: torch.Tensor,
    missing: torch.Tensor | None,
    labels: torch.Tensor,
    penalty: float = 1.0,
    max_iter: int = 500,
) -> float:
    """Fit ``head``'s standardisation, cell and expression weights and bias; returns the loss.

    Minimises ``sum_i CE(logits_i, y_i) + penalty / 2 * (|W_cell|^2 + |W_expr|^2)`` (the bias is
    not penalised) in float64 with L-BFGS and a strong-Wolfe line search, then writes the result
    into ``head`` (float32). The contextualised gene-state path (``gene_linear``) is set to
    zero: fine-tuning learns it from there.

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

    """
    check_number(penalty, "penalty", minimum=0, exclusive_minimum=True)
    cell_embedding, expression = cell_embedding.float().cpu(), expression.float().cpu()
    labels = labels.long().cpu()
    device = head.cell_linear.weight.device
    measured_expression = expression
    if missing is not None:
        missing = missing.cpu()
        measured_expression = expression.masked_fill(missing.expand_as(expression), float("nan"))
    head_cpu = head.to("cpu")
    head_cpu.set_standardization(cell_embedding, measured_expression)
    with torch.no_grad():
        cells, genes = head_cpu.standardized_inputs(cell_embedding, expression, missing)
    # A plain tensor (the features may come from inference mode) in float64 for the solver.
    features = torch.cat([cells, genes], dim=1).double().clone()
    n_classes = head.out_features
    weight = torch.zeros(n_classes, features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
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

    optimizer.step(objective)
    final = float(objective().detach())
    with torch.no_grad():
        d_model = cells.shape[1]
        head_cpu.cell_linear.weight.copy_(weight[:, :d_model])
        head_cpu.cell_linear.bias.copy_(bias)
        head_cpu.expression_linear.weight.copy_(weight[:, d_model:])
        head_cpu.gene_linear.weight.zero_()
    head.to(device)
    return final
