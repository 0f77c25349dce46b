"""Plain-PyTorch scHyena network: no AnnData, no scvi-tools, testable on random tensors."""

from .encoder import EncoderOutput, SCHyenaEncoder
from .hyena import (
    BidirectionalHyenaOperator,
    HyenaBlock,
    ImplicitLongFilter,
    bidirectional_fft_conv,
    direct_conv_reference,
    fast_fft_size,
)

__all__ = [
    "BidirectionalHyenaOperator",
    "EncoderOutput",
    "HyenaBlock",
    "ImplicitLongFilter",
    "SCHyenaEncoder",
    "bidirectional_fft_conv",
    "direct_conv_reference",
    "fast_fft_size",
]
