"""scvi-tools module: registered tensors -> normalisation, masking, network, losses."""

from ._module import SCHyenaModule, align_to_vocabulary, log_normalize, sample_expression_mask

__all__ = ["SCHyenaModule", "align_to_vocabulary", "log_normalize", "sample_expression_mask"]
