"""Pre-trained scHyena models shipped with the package, and loading saved models onto new data."""

from ._bundled import ZEISEL_BRAIN_MODEL_DIR, load_zeisel_brain_model, zeisel_brain_model_card
from ._load import load_model

__all__ = ["ZEISEL_BRAIN_MODEL_DIR", "load_model", "load_zeisel_brain_model", "zeisel_brain_model_card"]
