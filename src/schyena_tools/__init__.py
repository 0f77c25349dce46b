"""scHyena for scverse: a full-length single-cell foundation model built on bidirectional Hyena."""

from . import datasets, nn, pl, pretrained
from .model import SCHyena

__version__ = "0.1.0"

__all__ = ["SCHyena", "datasets", "nn", "pl", "pretrained", "__version__"]
