"""Applying a pre-trained scHyena to data with another gene panel (mixin of :class:`SCHyena`)."""

from __future__ import annotations

import logging
import warnings

import pandas as pd
from anndata import AnnData

from ._vocabulary import match_genes_to_vocabulary, naming_hint

logger = logging.getLogger(__name__)


class QueryMixin:
    """``load_query_data`` for :class:`~schyena_tools.SCHyena`: a new dataset, another gene panel."""

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference_model,
        case_insensitive: bool = False,
    ):
        """Build a model for ``adata`` (any gene panel) from a trained reference model.

        The query model keeps the reference's gene vocabulary and architecture and starts from
        its weights: the encoder (and pre-training heads) always, the classification head only
        when the query's label categories are those of the reference (or the query has no
        labels, see below). Vocabulary genes that the query did not measure get the learned
        missing token: they are left out of the cell embedding and never scored in any loss.
        Query genes outside the vocabulary are not read by the encoder (one warning says how
        many); the cell-type classifier reads them, after the vocabulary's genes, in its
        expression path (as a logistic regression on the query's genes would). Then
        fine-tune it (:meth:`train`, :meth:`train_classifier`, :meth:`train_imputer`) or use it
        as it is.

        Parameters
        ----------
        adata
            Query AnnData of raw counts. If it is not registered yet, it is registered with the
            reference's ``setup_anndata`` arguments (layer, labels_key, batch_key,
            unlabeled_category); register it yourself with ``SCHyena.setup_anndata`` to use
            other keys. When the reference's ``labels_key`` column is absent from ``adata.obs``,
            it is added, filled with the unlabeled category and carrying the reference's
            categories (as scvi-tools does for scANVI queries), so that the reference's
            classifier predicts on the query directly.
        reference_model
            A trained :class:`~schyena_tools.SCHyena`.
        case_insensitive
            Also match gene names ignoring case (exact matches first), e.g. mouse ``Gapdh`` to
            human ``GAPDH``. The query model's vocabulary then spells matched genes as the query
            does, so it saves and loads with the query's ``var_names``.

        Returns
        -------
        A new model registered on ``adata``.

        """
        if not isinstance(reference_model, cls):
            raise TypeError(f"reference_model must be a {cls.__name__}, got {type(reference_model).__name__}")
        if not isinstance(adata, AnnData):
            raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}")
        vocabulary = pd.Index(reference_model.gene_vocabulary, dtype=str)
        query_genes = pd.Index(adata.var_names, dtype=str)
        matched = match_genes_to_vocabulary(vocabulary, query_genes, case_insensitive)
        n_matched = int(matched.notna().sum())
        if n_matched == 0:
            hint = naming_hint(vocabulary, query_genes) or (
                ""
                if case_insensitive
                else " If only the case differs (mouse vs human), use case_insensitive=True."
            )
            raise ValueError(
                f"none of the query's {len(query_genes)} genes (e.g. {query_genes[:3].tolist()}) is in the "
                f"reference vocabulary of {len(vocabulary)} genes (e.g. {vocabulary[:3].tolist()}).{hint}"
            )
        n_dropped = len(query_genes) - n_matched
        n_missing = len(vocabulary) - n_matched
        # Warn when query genes are ignored, or when most of the vocabulary is missing: the
        # cells are then read mostly from the missing token.
        if n_dropped or n_missing > len(vocabulary) / 2:
            hint = naming_hint(vocabulary, query_genes)
            if not case_insensitive and not hint:
                by_case = (
                    int(match_genes_to_vocabulary(vocabulary, query_genes, True).notna().sum()) - n_matched
                )
                if by_case > 0:
                    hint = (
                        f" {by_case} of them differ from a vocabulary gene only by case (e.g. mouse "
                        "'Gad1' vs human 'GAD1'): pass case_insensitive=True to match them."
                    )
            ignored = (
                f"{n_dropped} of the query's {len(query_genes)} genes are not in the reference vocabulary "
                f"and are not read by the encoder (the cell-type classifier reads them); "
                if n_dropped
                else f"all {len(query_genes)} of the query's genes are in the reference vocabulary, but "
            )
            warnings.warn(
                f"{ignored}{n_missing} of the {len(vocabulary)} vocabulary genes are missing from the query "
                f"and get the missing token.{hint}",
                UserWarning,
                stacklevel=2,
            )
        # The query vocabulary: the reference's genes, in the reference's order, spelled as the
        # query spells them where matched (so exact matching reproduces the mapping on load).
        query_vocabulary = [q if q is not None else v for v, q in zip(vocabulary, matched, strict=True)]
        if pd.Index(query_vocabulary).has_duplicates:
            raise ValueError(
                "case-insensitive matching renamed a vocabulary gene onto another one; "
                "use case_insensitive=False."
            )

        if cls._get_most_recent_anndata_manager(adata) is None:
            cls._setup_query_like_reference(adata, reference_model)

        init_params = dict(reference_model.init_params_.get("non_kwargs", {}))
        init_params.update(reference_model.init_params_.get("kwargs", {}))
        init_params["gene_vocabulary"] = query_vocabulary
        query_model = cls(adata, **init_params)

        reference_state = reference_model.module.state_dict()
        same_classes = (
            query_model.module.classifier is not None
            and reference_model.module.classifier is not None
            and query_model._label_classes() == reference_model._label_classes()
        )
        transferred = {
            key: _vocabulary_part(key, value, len(vocabulary))
            for key, value in reference_state.items()
            if same_classes or not key.startswith("classifier.")
        }
        missing_keys, unexpected = query_model.module.load_state_dict(transferred, strict=False)
        unexplained = [k for k in missing_keys if not k.startswith("classifier.")]
        if unexplained or unexpected:
            raise RuntimeError(
                f"weights do not transfer: missing {unexplained}, unexpected {list(unexpected)}"
            )
        query_model.is_trained_ = reference_model.is_trained_
        query_model.is_classifier_trained_ = same_classes and getattr(
            reference_model, "is_classifier_trained_", False
        )
        if query_model.is_classifier_trained_:
            # The classifier's calibration and its unknown-type reference come with it; the
            # reference's own extra genes (outside the vocabulary) do not, so an unknown-type
            # reference fitted on them does not either (train_classifier() refits it).
            names = ["classifier_temperature_"]
            if reference_model.module.n_extra_genes == 0:
                names.append("unknown_reference_")
            for name in names:
                if hasattr(reference_model, name):
                    setattr(query_model, name, getattr(reference_model, name))
        if getattr(reference_model, "is_doublet_detector_trained_", False):
            for name in ("is_doublet_detector_trained_", "doublet_prior_shift_", "expected_doublet_rate_"):
                setattr(query_model, name, getattr(reference_model, name))
        query_model.n_vocabulary_genes_measured_ = n_matched
        logger.info(
            "query model: %d of %d vocabulary genes measured; classifier %s",
            n_matched,
            len(vocabulary),
            "transferred" if same_classes else "re-initialised",
        )
        return query_model

    @classmethod
    def _setup_query_like_reference(cls, adata: AnnData, reference_model) -> None:
        """Register ``adata`` with the reference's ``setup_anndata`` arguments."""
        args = dict(reference_model.adata_manager.registry.get("setup_args", {}))
        layer = args.get("layer")
        if layer is not None and layer not in adata.layers:
            raise ValueError(
                f"the reference read counts from layer {layer!r}, which the query lacks; register the "
                "query first with SCHyena.setup_anndata(adata, layer=...)."
            )
        batch_key = args.get("batch_key")
        if batch_key is not None and batch_key not in adata.obs:
            batch_key = None
        labels_key = args.get("labels_key")
        unlabeled = args.get("unlabeled_category", "Unknown")
        if labels_key is not None and labels_key not in adata.obs:
            classes = reference_model._label_classes()
            warnings.warn(
                f"the query has no labels column {labels_key!r}; adding it, filled with the unlabeled "
                f"category {unlabeled!r}, so the reference's classifier applies.",
                UserWarning,
                stacklevel=3,
            )
            adata.obs[labels_key] = pd.Categorical(
                [unlabeled] * adata.n_obs, categories=[*classes, unlabeled]
            )
        cls.setup_anndata(
            adata, layer=layer, labels_key=labels_key, batch_key=batch_key, unlabeled_category=unlabeled
        )


#: Classifier tensors whose last axis runs over the expression path's inputs.
_EXPRESSION_INPUTS = (
    "classifier.expression_linear.weight",
    "classifier.expression_mean",
    "classifier.expression_scale",
)


def _vocabulary_part(key: str, value, n_vocabulary: int):
    """A reference classifier's expression tensors cut to the vocabulary's genes.

    The columns after them read the reference data's own genes outside the vocabulary, which
    are not the query's; the query head starts its own extra genes at neutral values.
    """
    if key in _EXPRESSION_INPUTS and value.shape[-1] > n_vocabulary:
        return value[..., :n_vocabulary].clone()
    return value
