"""scHyena for scverse: a full-length single-cell foundation model built on bidirectional Hyena.

The submodules and :class:`SCHyena` are imported on first use (PEP 562), so that
``import schyena_tools`` and the command line's ``--help`` / ``--version`` do not pay for
PyTorch and scvi-tools; ``import schyena_tools as st; st.SCHyena`` works as usual.
"""

from importlib import import_module
from importlib.metadata import version as _version

__version__ = _version("schyena-tools")

_SUBMODULES = ("dataloaders", "datasets", "demo", "model", "module", "nn", "pl", "pretrained", "validation")
__all__ = [
    "SCHyena",
    "dataloaders",
    "datasets",
    "demo",
    "nn",
    "pl",
    "pretrained",
    "validation",
    "__version__",
]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name == "SCHyena":
        return import_module(".model", __name__).SCHyena
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
