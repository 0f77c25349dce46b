"""scvi-tools module: registered tensors -> normalisation, masking, network, losses."""

from ._module import (
    CELL_OBJECTIVES,
    LIBRARY_KEY,
    MISSING_KEY,
    SCHyenaModule,
    add_thinned_copies,
    align_to_vocabulary,
    cell_head_start_values,
    log_normalize,
    sample_expression_mask,
)

__all__ = [
    "CELL_OBJECTIVES",
    "LIBRARY_KEY",
    "MISSING_KEY",
    "SCHyenaModule",
    "add_thinned_copies",
    "align_to_vocabulary",
    "cell_head_start_values",
    "log_normalize",
    "sample_expression_mask",
]
