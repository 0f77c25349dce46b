"""Input checks on the user's AnnData and arguments, run before any work."""

from ._checks import (
    BACKED_SAMPLE_ROWS,
    CountsSummary,
    CountsWarning,
    MissingKeyError,
    check_anndata,
    check_batch_size,
    check_counts,
    check_number,
)

__all__ = [
    "BACKED_SAMPLE_ROWS",
    "CountsSummary",
    "CountsWarning",
    "MissingKeyError",
    "check_anndata",
    "check_batch_size",
    "check_counts",
    "check_number",
]
