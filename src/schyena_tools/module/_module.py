"""The scvi-tools module around the scHyena network: normalisation, gene alignment, masking, losses.

This is the layer between registered tensors and the plain-PyTorch network
(:class:`~schyena_tools.nn.SCHyenaEncoder`). It knows the scvi-tools tensor dictionary and the
training objectives; it knows nothing about AnnData.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from schyena_tools.nn import CellExpressionHead, CellTypeClassifier, DoubletClassifier, SCHyenaEncoder

OBJECTIVES = ("pretrain", "classify", "impute", "doublet")

#: What the cell-embedding head is scored on in pre-training (``cell_objective`` of the loss).
CELL_OBJECTIVES = ("mse", "multinomial")

#: Target index that cross-entropy ignores: cells with the unlabeled category.
IGNORE_LABEL = -100

#: Optional tensors of a minibatch, as a corpus data module
#: (:class:`schyena_tools.dataloaders.CorpusDataModule`) sends them: ``(cells, genes)`` True where
#: the cell's dataset did not measure the gene, and ``(cells, 1)`` total counts of the cell over
#: all its dataset's genes (also those outside the vocabulary).
MISSING_KEY = "missing_genes"
LIBRARY_KEY = "library_size"


def log_normalize(
    counts: torch.Tensor, target_sum: float, library: torch.Tensor | None = None
) -> torch.Tensor:
    """Library-size normalise each cell to ``target_sum`` and apply ``log1p``.

    The same function runs at training and at inference, so a model never sees its input
    scaled two different ways. Cells with no counts stay at zero (no division by zero).
    ``library``: each cell's total counts when ``counts`` holds only part of its genes
    (default: the sum of ``counts``).
    """
    library = counts.sum(dim=1, keepdim=True) if library is None else library.reshape(-1, 1).to(counts)
    return torch.log1p(counts / library.clamp_min(1e-8) * target_sum)


def align_to_vocabulary(
    values: torch.Tensor, gene_index: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Data columns -> vocabulary order, and which vocabulary genes the data did not measure.

    ``gene_index`` holds the data column of each vocabulary gene, -1 where absent (see
    :func:`schyena_tools.model.gene_index_for`); ``None`` means the columns are the vocabulary.
    Returns the aligned ``(cells, vocabulary)`` values (zero at missing genes) and the
    ``(vocabulary,)`` missing mask (``None`` when nothing is missing or reordered).
    """
    if gene_index is None:
        return values, None
    index = gene_index.to(values.device)
    missing = index < 0
    return values[:, index.clamp_min(0)].masked_fill(missing, 0.0), missing


def with_missing_genes(
    missing: torch.Tensor | None, missing_genes: torch.Tensor | None
) -> torch.Tensor | None:
    """The alignment's ``(genes,)`` missing mask joined with a minibatch's ``(cells, genes)`` one."""
    if missing_genes is None:
        return missing
    missing_genes = missing_genes.to(dtype=torch.bool)
    return missing_genes if missing is None else missing.to(missing_genes.device) | missing_genes


def sample_expression_mask(
    values: torch.Tensor,
    nonzero_ratio: float,
    zero_ratio: float,
    missing: torch.Tensor | None = None,
) -> torch.Tensor:
    """Choose the entries hidden from the network in masked expression modelling.

    A fraction ``nonzero_ratio`` of each cell's non-zero values and a (smaller) fraction
    ``zero_ratio`` of its zeros are masked, independently per entry. Zeros are masked too so
    the network learns when a gene is really off; fewer of them, because they dominate
    (about 85% of a full-length cell) and would otherwise swamp the loss. Missing genes are never
    masked, because there is no value to score.
    """
    probability = torch.where(values > 0, nonzero_ratio, zero_ratio)
    masked = torch.rand_like(values) < probability
    if missing is not None:
        masked = masked & ~missing
    return masked


def cell_head_start_values(values: torch.Tensor, cell_objective: str, target_sum: float) -> torch.Tensor:
    """What the data-dependent start of the cell head averages over cells, per gene.

    ``values``: log-normalised expression. ``"mse"``: the values themselves (the head starts
    at each gene's mean); ``"multinomial"``: each gene's share of the cell's counts (the head
    starts at the log of its mean share). See :meth:`SCHyenaModule.initialize_cell_head`.
    """
    if cell_objective not in CELL_OBJECTIVES:
        raise ValueError(f"unknown cell_objective {cell_objective!r}; expected one of {CELL_OBJECTIVES}")
    return values if cell_objective == "mse" else torch.expm1(values) / target_sum


def add_thinned_copies(
    counts: torch.Tensor, library: torch.Tensor | None, min_keep: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Append one binomially thinned copy of each cell: the same cell, sequenced less deeply.

    Each cell's counts are thinned by keeping every molecule independently with one probability
    per cell, drawn uniformly from ``[min_keep, 1]`` (binomial thinning is what a shallower
    sequencing of the same library gives). Returns the ``(2 * cells, genes)`` counts, originals
    first, and the library sizes of both halves (a copy's library scaled by the fraction of its
    counts kept; ``None`` stays ``None``).
    """
    keep = torch.empty(counts.shape[0], 1, device=counts.device).uniform_(min_keep, 1.0)
    thinned = torch.binomial(counts, keep.expand_as(counts).contiguous())
    if library is not None:
        library = library.reshape(-1, 1).to(counts)
        kept = thinned.sum(1, keepdim=True) / counts.sum(1, keepdim=True).clamp_min(1e-8)
        library = torch.cat([library, library * kept])
    return torch.cat([counts, thinned]), library


def add_artificial_doublets(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append one artificial doublet per cell: the summed counts of two different cells.

    As scrublet and scvi-tools' SOLO make them: the raw counts of two cells drawn at random
    (here: a random pairing of the minibatch's cells, each cell in two pairs) are added, so a
    doublet has the mixed profile and about twice the depth of a captured cell. Returns the
    ``(2 * cells, genes)`` counts and the ``(2 * cells,)`` targets (0 real, 1 doublet). A
    minibatch of one cell gets no doublet.
    """
    n_cells = counts.shape[0]
    if n_cells < 2:
        return counts, torch.zeros(n_cells, dtype=torch.long, device=counts.device)
    order = torch.randperm(n_cells, device=counts.device)
    doublets = counts[order] + counts[order.roll(1)]
    targets = torch.cat(
        [
            torch.zeros(n_cells, dtype=torch.long, device=counts.device),
            torch.ones(n_cells, dtype=torch.long, device=counts.device),
        ]
    )
    return torch.cat([counts, doublets]), targets


class SCHyenaModule(BaseModuleClass):
    """scvi-tools module for scHyena.

    Parameters
    ----------
    n_genes
        Size of the model's gene vocabulary.
    d_model, n_layers, order, mlp_ratio, filter_hidden_dim, dropout, gradient_checkpointing
        Network size; see :class:`~schyena_tools.nn.SCHyenaEncoder`.
    target_sum
        Counts per cell after library-size normalisation (before ``log1p``).
    n_labels
        Number of cell-type classes of the classification head (the unlabeled category not
        counted); 0 builds no head.
    gene_index
        Column of the registered data for each vocabulary gene, -1 where the data did not
        measure it (see :func:`schyena_tools.model.gene_index_for`); ``None`` when the data
        columns are the vocabulary, in order.
    extra_gene_index
        Columns of the registered data whose genes are not in the vocabulary. The encoder never
        reads them; the cell-type classifier's expression path does, after the vocabulary's
        genes (a query panel's own genes count for its annotation). ``None``: none.

    Notes
    -----
    What a forward pass does is set by its arguments only: the masking of
    :meth:`inference` (``mask_ratio``, ``dropout_ratio``, ``mask_zeros``) and the ``objective``
    of :meth:`loss`. A training phase passes them through its training plan
    (:class:`schyena_tools.model.SCHyenaTrainingPlan`); nothing flips the module's mode from
    outside.

    """

    def __init__(
        self,
        n_genes: int,
        d_model: int = 64,
        n_layers: int = 2,
        order: int = 2,
        mlp_ratio: int = 2,
        filter_hidden_dim: int = 32,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
        target_sum: float = 1e4,
        n_labels: int = 0,
        gene_index: torch.Tensor | None = None,
        extra_gene_index: torch.Tensor | None = None,
    ):
        super().__init__()
        self.n_genes = n_genes
        self.target_sum = target_sum
        self.encoder = SCHyenaEncoder(
            n_genes,
            d_model=d_model,
            n_layers=n_layers,
            order=order,
            mlp_ratio=mlp_ratio,
            filter_hidden_dim=filter_hidden_dim,
            dropout=dropout,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.cell_expression_head = CellExpressionHead(d_model, n_genes)
        self.n_labels = n_labels
        if extra_gene_index is not None:
            extra_gene_index = torch.as_tensor(extra_gene_index, dtype=torch.long).reshape(-1)
        self.n_extra_genes = 0 if extra_gene_index is None else int(extra_gene_index.numel())
        self.classifier = (
            CellTypeClassifier(d_model, n_genes, n_labels, n_extra_genes=self.n_extra_genes)
            if n_labels > 0
            else None
        )
        self.doublet_classifier = DoubletClassifier(d_model, n_genes)
        if gene_index is not None:
            gene_index = torch.as_tensor(gene_index, dtype=torch.long)
            if gene_index.shape != (n_genes,):
                raise ValueError(f"gene_index must have one entry per vocabulary gene ({n_genes})")
        # Not in the state dict: it describes the data the model is registered on, not the model.
        self.register_buffer("gene_index", gene_index, persistent=False)
        self.register_buffer("extra_gene_index", extra_gene_index, persistent=False)

    @property
    def embedding_dim(self) -> int:
        """Size of the cell embedding."""
        return self.encoder.d_model

    @torch.no_grad()
    def initialize_cell_head(self, mean_values: torch.Tensor, cell_objective: str = "mse") -> None:
        """Start the cell head at the data's mean, as its ``cell_objective`` reads its output.

        ``mean_values``: the per-gene mean of :func:`cell_head_start_values` over the data.
        """
        start = mean_values if cell_objective == "mse" else torch.log(mean_values.clamp_min(1e-8))
        self.cell_expression_head.initialize_gene_means(start)

    def align_to_vocabulary(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reorder data columns into vocabulary order; see :func:`align_to_vocabulary`."""
        return align_to_vocabulary(counts, self.gene_index)

    def normalize_and_align(
        self,
        counts: torch.Tensor,
        missing_genes: torch.Tensor | None = None,
        library_size: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw counts of the registered genes -> log-normalised values in vocabulary order.

        Library size over the genes the data measured, before alignment, so that a gene panel
        that misses part of the vocabulary is not normalised as if the missing genes were zero.
        Returns the values (zero at missing genes) and the missing-gene mask (None if none).
        ``missing_genes`` and ``library_size``: a corpus minibatch's (see :meth:`inference`).
        """
        values, missing = self.align_to_vocabulary(log_normalize(counts, self.target_sum, library_size))
        return values, with_missing_genes(missing, missing_genes)

    def classifier_inputs(
        self, normalized: torch.Tensor, values: torch.Tensor, unseen: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The expression and unseen mask the cell-type classifier reads: vocabulary, then extras.

        ``normalized``: the log-normalised values in data-column order (before alignment);
        ``values``/``unseen``: the vocabulary-ordered values and the genes the encoder did not
        read (``(genes,)`` or ``(cells, genes)``); the extra genes (``extra_gene_index``) are
        appended and always seen.
        """
        if not self.n_extra_genes:
            return values, unseen
        extra = normalized[:, self.extra_gene_index.to(normalized.device)]
        expression = torch.cat([values, extra.to(values.dtype)], dim=1)
        if unseen is None:
            return expression, None
        seen = unseen.new_zeros((*unseen.shape[:-1], self.n_extra_genes))
        return expression, torch.cat([unseen, seen], dim=-1)

    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        return {
            "counts": tensors[REGISTRY_KEYS.X_KEY],
            "missing_genes": tensors.get(MISSING_KEY),
            "library_size": tensors.get(LIBRARY_KEY),
        }

    @auto_move_data
    def inference(
        self,
        counts: torch.Tensor,
        missing_genes: torch.Tensor | None = None,
        library_size: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        zero_mask_ratio: float = 0.0,
        dropout_ratio: float | None = None,
        mask_zeros: bool = False,
        zero_score_ratio: float | None = None,
        add_doublets: bool = False,
        depth_augmentation: float | None = None,
    ) -> dict:
        """Normalise, align to the vocabulary, optionally mask, and encode.

        Parameters
        ----------
        counts
            ``(cells, genes of the registered data)`` raw counts.
        missing_genes
            ``(cells, genes)``, True where the cell's dataset did not measure the gene (a
            corpus minibatch, already in vocabulary order): those genes get the missing token.
        library_size
            ``(cells, 1)`` total counts per cell over all its dataset's genes (a corpus
            minibatch holds the vocabulary's genes only); default: the sum of ``counts``.
            Pre-training reads it; the simulated dropout of imputer training does not.
        mask_ratio
            Hide this random fraction of each cell's non-zero values, and ``zero_mask_ratio`` of
            its zeros (masked expression modelling). Only pre-training steps ask for it;
            embeddings and predictions never mask at random (``None``).
        zero_mask_ratio
            Fraction of zeros hidden along with ``mask_ratio``.
        dropout_ratio
            Imputer training: set this random fraction of each cell's non-zero counts to zero
            *before* normalisation (as a real dropout would), then treat every zero as unknown
            (``mask_zeros``). The original values of the dropped entries are returned as
            ``dropout_targets`` for :meth:`imputation_loss`. ``None``: no simulated dropout.
        mask_zeros
            Replace every measured zero by the mask token: a zero is either a dropout or a gene
            that is off, so the network is told "unknown" and predicts the value from the rest of
            the cell. Imputation uses it.
        zero_score_ratio
            Imputer training with ``dropout_ratio``: score only this random fraction of the genes
            that really read zero, pooled with the dropped entries in one mean (scMamba's
            imputation recipe: 40% of non-zeros, 4% of zeros). The chosen zeros are returned as
            ``scored_zeros``. ``None``: every true zero is scored, as its own group.
        add_doublets
            Doublet-detector training: append one artificial doublet per cell to the minibatch
            (:func:`add_artificial_doublets`); the outputs then cover ``2 * cells`` rows and
            ``doublet_targets`` says which are doublets.
        depth_augmentation
            Pre-training: append a binomially thinned copy of each cell, keeping each count with
            a per-cell probability drawn from ``[depth_augmentation, 1]``
            (:func:`add_thinned_copies`). The outputs cover ``2 * cells`` rows, originals first;
            ``n_originals`` says where the copies start (the loss ties each copy's embedding to
            its original's). ``None``: no copies.

        """
        counts = counts.float()
        doublet_targets = None
        n_originals = None
        if depth_augmentation is not None:
            n_originals = counts.shape[0]
            if missing_genes is not None:
                missing_genes = torch.cat([missing_genes, missing_genes])
            counts, library_size = add_thinned_copies(counts, library_size, depth_augmentation)
        if add_doublets:
            counts, doublet_targets = add_artificial_doublets(counts)
        log_depth = torch.log1p(counts.sum(dim=1))
        dropped = None
        if dropout_ratio is not None:
            dropped = (counts > 0) & (torch.rand_like(counts) < dropout_ratio)
            observed_counts = counts.masked_fill(dropped, 0.0)
            # Targets on the scale the network sees: normalised by the library left after the
            # dropout, so a perfect imputer would put the hidden count back exactly.
            library = observed_counts.sum(dim=1, keepdim=True).clamp_min(1e-8)
            dropout_targets = torch.log1p(counts / library * self.target_sum)
            scored_zeros = None
            if zero_score_ratio is not None:
                scored_zeros = (counts == 0) & (torch.rand_like(counts) < zero_score_ratio)
            counts = observed_counts
            mask_zeros = True
        library = library_size if dropout_ratio is None else None
        normalized = log_normalize(counts, self.target_sum, library)  # once: encoder's and classifier's
        values, missing = self.align_to_vocabulary(normalized)
        missing = with_missing_genes(missing, missing_genes)
        if mask_ratio is not None:
            masked = sample_expression_mask(values, mask_ratio, zero_mask_ratio, missing)
        elif mask_zeros:
            masked = values == 0
            if missing is not None:
                masked = masked & ~missing
        else:
            masked = None
        out = self.encoder(values, masked=masked, missing=missing)
        cell_prediction = self.cell_expression_head(out.cell_embedding)
        result = {
            "values": values,
            "masked": masked,
            "missing": missing,
            "predicted_expression": out.predicted_expression,
            "cell_embedding": out.cell_embedding,
            "cell_predicted_expression": cell_prediction,
            "log_depth": log_depth,
        }
        if doublet_targets is not None:
            result["doublet_targets"] = doublet_targets
        if n_originals is not None:
            result["n_originals"] = n_originals
        if dropped is not None:
            dropped_aligned, _ = self.align_to_vocabulary(dropped.float())
            targets_aligned, _ = self.align_to_vocabulary(dropout_targets)
            result["dropped"] = dropped_aligned > 0
            result["dropout_targets"] = targets_aligned
            if scored_zeros is not None:
                scored_aligned, _ = self.align_to_vocabulary(scored_zeros.float())
                result["scored_zeros"] = scored_aligned > 0
        if self.classifier is not None:
            # The expression path reads what the encoder read: masked values count as unseen.
            unseen = missing if masked is None else (masked if missing is None else masked | missing)
            expression, unseen = self.classifier_inputs(normalized, values, unseen)
            result["classifier_expression"], result["classifier_unseen"] = expression, unseen
            result["logits"] = self.classifier(out.cell_embedding, out.hidden, expression, unseen)
        if masked is None:  # the doublet detector reads every value
            result["doublet_logits"] = self.doublet_classifier(
                out.cell_embedding, out.hidden, values, missing, log_depth
            )
        return result

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return {}

    def generative(self, **kwargs) -> dict:
        """Not generative; kept because scvi-tools' forward calls it."""
        return {}

    def loss(
        self,
        tensors,
        inference_outputs,
        generative_outputs,
        objective: str = "pretrain",
        label_smoothing: float = 0.0,
        consistency_weight: float = 1.0,
        cell_objective: str = "mse",
        cell_weight: float = 1.0,
        **kwargs,
    ) -> LossOutput:
        """Loss of the training ``objective``: ``"pretrain"``, ``"classify"``, ``"impute"`` or ``"doublet"``.

        ``label_smoothing`` applies to ``"classify"`` (see :func:`torch.nn.functional.cross_entropy`);
        ``consistency_weight`` (with depth augmentation), ``cell_objective`` and ``cell_weight`` to
        ``"pretrain"`` (see :meth:`masked_expression_loss`).
        """
        if objective == "pretrain":
            if cell_objective == "multinomial":  # the originals' counts, only where they are scored
                counts = tensors[REGISTRY_KEYS.X_KEY].float().to(inference_outputs["values"].device)
                inference_outputs = {**inference_outputs, "cell_counts": self.align_to_vocabulary(counts)[0]}
            return self.masked_expression_loss(
                inference_outputs, consistency_weight, cell_objective, cell_weight
            )
        if objective == "classify":
            return self.classification_loss(tensors, inference_outputs, label_smoothing)
        if objective == "impute":
            return self.imputation_loss(inference_outputs)
        if objective == "doublet":
            return self.doublet_loss(inference_outputs)
        raise ValueError(f"unknown training objective {objective!r}; expected one of {OBJECTIVES}")

    @staticmethod
    def masked_expression_loss(
        inference_outputs: dict,
        consistency_weight: float = 1.0,
        cell_objective: str = "mse",
        cell_weight: float = 1.0,
    ) -> LossOutput:
        """Masked expression modelling loss, per cell, on the log-normalised scale.

        The sum of two terms: the mean squared error of the per-gene head on the masked entries
        (the paper's objective), and a term of the cell-embedding head on every measured gene
        (so that the cell embedding summarises the whole cell; see
        :class:`~schyena_tools.nn.CellExpressionHead`), chosen by ``cell_objective``:

        - ``"mse"``: mean squared error of the head's output against the log-normalised values
          (logged as ``cell_mse``);
        - ``"multinomial"``: the head's output is read as logits over the measured genes, and
          the cell's counts are scored as a multinomial draw from their softmax, as scVI's
          decoder scores them with the library size given: the loss per cell is the
          Kullback-Leibler divergence from the observed proportions to the predicted ones
          (logged as ``cell_kl``; zero for a perfect fit). Depth is then not something the
          embedding has to describe: a shallower read of the same cell has the same expected
          proportions.

        The cell term counts ``cell_weight`` times. The masked term is logged as ``masked_mse``.

        With depth augmentation (``n_originals`` in the outputs, from ``depth_augmentation`` of
        :meth:`inference`), a thinned copy's cell head is scored against its *original's*
        values (the embedding of a shallow read of a cell should describe the cell), and
        ``consistency_weight`` times a consistency term is added: the squared distance between
        a copy's embedding and its original's, divided by the minibatch's mean squared distance
        of embeddings from their mean (scale-free, so it cannot be lowered by shrinking every
        embedding; logged as ``consistency``). Copies count as cells of the minibatch.
        """
        masked = inference_outputs["masked"]
        if masked is None:
            raise RuntimeError("masked expression loss needs masked values; pass mask_ratio to inference")
        values = inference_outputs["values"]
        masked_weights = masked.float()
        token_error = F.mse_loss(inference_outputs["predicted_expression"], values, reduction="none")
        masked_mse = (token_error * masked_weights).sum(1) / masked_weights.sum(1).clamp_min(1.0)

        missing = inference_outputs["missing"]
        measured = torch.ones_like(values) if missing is None else (~missing).expand_as(values).float()
        n_originals = inference_outputs.get("n_originals")
        if cell_objective not in CELL_OBJECTIVES:
            raise ValueError(f"unknown cell_objective {cell_objective!r}; expected one of {CELL_OBJECTIVES}")
        cell_prediction = inference_outputs["cell_predicted_expression"]
        if cell_objective == "mse":
            cell_targets = values
            if n_originals is not None:
                cell_targets = torch.cat([values[:n_originals], values[:n_originals]])
            cell_error = F.mse_loss(cell_prediction, cell_targets, reduction="none")
            cell_term = (cell_error * measured).sum(1) / measured.sum(1).clamp_min(1.0)
        else:
            counts = inference_outputs["cell_counts"]  # the originals' (copies are scored on them)
            if n_originals is not None:
                counts = torch.cat([counts[:n_originals], counts[:n_originals]])
            counts = counts * measured
            observed = counts / counts.sum(1, keepdim=True).clamp_min(1e-8)
            log_predicted = torch.log_softmax(cell_prediction.masked_fill(measured == 0, -torch.inf), dim=1)
            log_predicted = log_predicted.masked_fill(measured == 0, 0.0)
            cell_term = (torch.xlogy(observed, observed) - observed * log_predicted).sum(1)
        per_cell = masked_mse + cell_weight * cell_term
        extra = {("cell_mse" if cell_objective == "mse" else "cell_kl"): cell_term.mean().detach()}
        if n_originals is not None:
            embedding = inference_outputs["cell_embedding"]
            spread = (embedding - embedding.mean(0)).pow(2).sum(1).mean().clamp_min(1e-8)
            distance = (embedding[:n_originals] - embedding[n_originals:]).pow(2).sum(1) / spread
            consistency = torch.cat([distance, distance])  # both rows of a pair share it
            per_cell = per_cell + consistency_weight * consistency
            extra["consistency"] = distance.mean().detach()
        return LossOutput(
            loss=per_cell.mean(),
            reconstruction_loss=per_cell,
            extra_metrics={
                "masked_mse": masked_mse.mean().detach(),
                "masked_fraction": masked_weights.mean().detach(),
                **extra,
            },
        )

    def classification_loss(
        self, tensors: dict, inference_outputs: dict, label_smoothing: float = 0.0
    ) -> LossOutput:
        """Cross-entropy of the classification head; unlabelled cells are left out.

        scvi-tools' labels-with-unlabelled field codes the unlabeled category as the last index,
        ``n_labels``; those cells get the ignored target. A minibatch of unlabelled cells only
        contributes a zero loss (with a graph, so the optimiser step stays valid).
        """
        if self.classifier is None:
            raise RuntimeError("this module has no classification head (n_labels=0)")
        logits = inference_outputs["logits"]
        labels = tensors[REGISTRY_KEYS.LABELS_KEY].reshape(-1).long().to(logits.device)
        labelled = labels < self.n_labels
        targets = labels.masked_fill(~labelled, IGNORE_LABEL)
        if labelled.any():
            per_cell = F.cross_entropy(
                logits, targets, ignore_index=IGNORE_LABEL, reduction="none", label_smoothing=label_smoothing
            )
            loss = per_cell.sum() / labelled.sum()
            accuracy = (logits.argmax(1)[labelled] == labels[labelled]).float().mean()
        else:
            per_cell = logits.sum(1) * 0.0
            loss = per_cell.sum()
            accuracy = torch.tensor(float("nan"), device=logits.device)
        return LossOutput(
            loss=loss,
            reconstruction_loss=per_cell,
            extra_metrics={"accuracy": accuracy.detach(), "labelled_fraction": labelled.float().mean()},
        )

    @staticmethod
    def doublet_loss(inference_outputs: dict) -> LossOutput:
        """Cross-entropy of the doublet head on real cells (0) and artificial doublets (1).

        Needs ``add_doublets=True`` in :meth:`inference`; logs ``doublet_accuracy``.
        """
        targets = inference_outputs.get("doublet_targets")
        if targets is None:
            raise RuntimeError("doublet loss needs artificial doublets; pass add_doublets=True to inference")
        logits = inference_outputs["doublet_logits"]
        per_cell = F.cross_entropy(logits, targets.to(logits.device), reduction="none")
        accuracy = (logits.argmax(1) == targets.to(logits.device)).float().mean()
        return LossOutput(
            loss=per_cell.mean(),
            reconstruction_loss=per_cell,
            extra_metrics={"doublet_accuracy": accuracy.detach()},
        )

    @staticmethod
    def imputation_loss(inference_outputs: dict) -> LossOutput:
        """Dropout-recovery loss on the log-normalised scale, per cell.

        Three mean squared errors of the per-gene head, each averaged over its own entries so
        that no group swamps the others: ``dropout_mse`` on the counts set to zero by the
        simulated dropout (target: their original value), ``zero_mse`` on the genes that really
        read zero (target: 0) and ``observed_mse`` on the values left visible (target: the
        value). Seen from the network, a dropped gene and an unexpressed gene look the same (the
        mask token), so the first two terms together teach it to tell them apart from context.
        Missing genes are never scored.

        With ``scored_zeros`` in the outputs (``zero_score_ratio`` of :meth:`inference`), the
        loss is instead scMamba's: one mean squared error pooled over the dropped entries and
        the sampled true zeros; ``observed_mse`` is still logged but not trained on.
        """
        dropped = inference_outputs.get("dropped")
        if dropped is None:
            raise RuntimeError("imputation loss needs simulated dropout; pass dropout_ratio to inference")
        values = inference_outputs["values"]
        prediction = inference_outputs["predicted_expression"]
        missing = inference_outputs["missing"]
        measured = (
            torch.ones_like(values, dtype=torch.bool) if missing is None else (~missing).expand_as(values)
        )
        true_zero = (values == 0) & ~dropped & measured
        visible = (values > 0) & measured
        targets = torch.where(dropped, inference_outputs["dropout_targets"], values)
        error = (prediction - targets) ** 2

        def mean_over(selection: torch.Tensor) -> torch.Tensor:
            weights = selection.float()
            return (error * weights).sum(1) / weights.sum(1).clamp_min(1.0)

        dropout_mse = mean_over(dropped & measured)
        zero_mse = mean_over(true_zero)
        observed_mse = mean_over(visible)
        scored_zeros = inference_outputs.get("scored_zeros")
        if scored_zeros is None:
            per_cell = dropout_mse + zero_mse + observed_mse
        else:
            per_cell = mean_over((dropped | scored_zeros) & measured)
        return LossOutput(
            loss=per_cell.mean(),
            reconstruction_loss=per_cell,
            extra_metrics={
                "dropout_mse": dropout_mse.mean().detach(),
                "zero_mse": zero_mse.mean().detach(),
                "observed_mse": observed_mse.mean().detach(),
            },
        )
