"""scHyena for scverse: a full-length single-cell foundation model built on bidirectional Hyena."""

__version__ = "0.1.0"
