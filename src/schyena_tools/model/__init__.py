"""User-facing model classes."""

from ._model import SCHyena

__all__ = ["SCHyena"]
