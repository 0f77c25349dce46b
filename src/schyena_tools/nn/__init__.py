"""Plain-PyTorch scHyena network: no AnnData, no scvi-tools, testable on random tensors."""

from .attention import BidirectionalAttentionMixer
from .encoder import EncoderOutput, SCHyenaEncoder, compile_encoder
from .hyena import (
    BidirectionalHyenaOperator,
    HyenaBlock,
    ImplicitLongFilter,
    bidirectional_fft_conv,
    depthwise_short_conv,
    direct_conv_reference,
    fast_fft_size,
    fft_conv_with_spectrum,
    filter_spectrum,
    long_convolution,
    pad_filters,
)

__all__ = [
    "BidirectionalAttentionMixer",
    "BidirectionalHyenaOperator",
    "EncoderOutput",
    "HyenaBlock",
    "ImplicitLongFilter",
    "SCHyenaEncoder",
    "bidirectional_fft_conv",
    "compile_encoder",
    "depthwise_short_conv",
    "direct_conv_reference",
    "fast_fft_size",
    "fft_conv_with_spectrum",
    "filter_spectrum",
    "long_convolution",
    "pad_filters",
]
