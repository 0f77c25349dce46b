"""scvi-tools module: registered tensors -> normalisation, masking, network, losses."""

from ._module import SCHyenaModule, log_normalize, sample_expression_mask

__all__ = ["SCHyenaModule", "log_normalize", "sample_expression_mask"]
