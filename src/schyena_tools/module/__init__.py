"""scvi-tools module: registered tensors -> normalisation, masking, network, losses."""

from ._module import (
    LIBRARY_KEY,
    MISSING_KEY,
    SCHyenaModule,
    add_thinned_copies,
    align_to_vocabulary,
    log_normalize,
    sample_expression_mask,
)

__all__ = [
    "LIBRARY_KEY",
    "MISSING_KEY",
    "SCHyenaModule",
    "add_thinned_copies",
    "align_to_vocabulary",
    "log_normalize",
    "sample_expression_mask",
]
