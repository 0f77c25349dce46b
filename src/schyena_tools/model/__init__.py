"""The user-facing model: :class:`SCHyena` and the parts it is made of (one job per file)."""

from ._linear_readout import fit_linear_readout
from ._model import SCHyena
from ._save_load import convert_trusted_model_file
from ._training_plan import SCHyenaTrainingPlan
from ._vocabulary import gene_index_for, match_genes_to_vocabulary, output_columns

__all__ = [
    "SCHyena",
    "SCHyenaTrainingPlan",
    "convert_trusted_model_file",
    "fit_linear_readout",
    "gene_index_for",
    "match_genes_to_vocabulary",
    "output_columns",
]
