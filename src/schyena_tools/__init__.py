"""scHyena for scverse: a full-length single-cell foundation model built on bidirectional Hyena."""

from importlib.metadata import version as _version

from . import datasets, demo, nn, pl, pretrained, validation
from .model import SCHyena

__version__ = _version("schyena-tools")

__all__ = ["SCHyena", "datasets", "demo", "nn", "pl", "pretrained", "validation", "__version__"]
