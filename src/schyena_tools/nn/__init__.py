"""Plain-PyTorch scHyena network: no AnnData, no scvi-tools, testable on random tensors.

- :mod:`._fftconv`: the FFT kernels (one convolution step, its autograd function, the reference);
- :mod:`._hyena`: the bidirectional Hyena operator and block;
- :mod:`._attention`: exact attention with the operator's interface (the speed baseline);
- :mod:`._encoder`: the encoder (adaptor, gene embedding, blocks, pooling);
- :mod:`._heads`: the heads on the encoder's output.
"""

from ._attention import BidirectionalAttentionMixer
from ._encoder import EncoderOutput, SCHyenaEncoder, compile_encoder, cpu_cells_per_chunk
from ._fftconv import (
    bidirectional_fft_conv,
    direct_conv_reference,
    fast_fft_size,
    fft_backend,
    fft_dtype,
    fftconv,
    long_convolution,
    pad_filters,
    use_fft_backend,
)
from ._heads import CellExpressionHead, CellStandardize, CellTypeClassifier, DoubletClassifier
from ._hyena import (
    BidirectionalHyenaOperator,
    HyenaBlock,
    ImplicitLongFilter,
    depthwise_short_conv,
    short_convolution,
)

__all__ = [
    "BidirectionalAttentionMixer",
    "BidirectionalHyenaOperator",
    "CellExpressionHead",
    "CellStandardize",
    "CellTypeClassifier",
    "DoubletClassifier",
    "EncoderOutput",
    "HyenaBlock",
    "ImplicitLongFilter",
    "SCHyenaEncoder",
    "bidirectional_fft_conv",
    "compile_encoder",
    "cpu_cells_per_chunk",
    "depthwise_short_conv",
    "direct_conv_reference",
    "fast_fft_size",
    "fft_dtype",
    "fftconv",
    "fft_backend",
    "use_fft_backend",
    "long_convolution",
    "pad_filters",
    "short_convolution",
]
