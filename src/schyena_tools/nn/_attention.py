"""Exact multi-head softmax attention as a drop-in mixer: the quadratic baseline for scHyena.

:class:`BidirectionalAttentionMixer` has the interface of
:class:`~schyena_tools.nn.BidirectionalHyenaOperator` (``(batch, L, d_model)`` in and out),
so ``SCHyenaEncoder(..., mixer="attention")`` is the same encoder with every Hyena operator
replaced by full, non-causal attention over all genes. It exists to measure what the Hyena
operator buys at full length (``benchmarks/speed.py``); its cost grows as ``L^2`` in time, and in
memory too wherever the fused kernels of :func:`torch.nn.functional.scaled_dot_product_attention`
cannot be used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BidirectionalAttentionMixer(nn.Module):
    """Multi-head self-attention over all tokens, no causal mask, no positional bias.

    Genes carry their identity in the encoder's gene embedding, so no positional encoding is
    added here, exactly as for the Hyena operator.

    Parameters
    ----------
    d_model
        Channel width (divisible by ``n_heads``).
    n_heads
        Number of attention heads.
    dropout
        Attention-weight dropout in training.

    """

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u``: ``(batch, L, d_model)`` -> ``(batch, L, d_model)``."""
        batch, length, _ = u.shape
        head_dim = self.d_model // self.n_heads
        qkv = self.qkv(u).view(batch, length, 3, self.n_heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, head_dim)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=False
        )
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, self.d_model))


__all__ = ["BidirectionalAttentionMixer"]
