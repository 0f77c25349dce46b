"""Input checks run before any work, and a safe way to write results into an AnnData."""

from ._validation import (
    BACKED_SAMPLE_ROWS,
    CountsSummary,
    CountsWarning,
    MissingKeyError,
    check_anndata,
    check_batch_size,
    check_counts,
    write_results,
)

__all__ = [
    "BACKED_SAMPLE_ROWS",
    "CountsSummary",
    "CountsWarning",
    "MissingKeyError",
    "check_anndata",
    "check_batch_size",
    "check_counts",
    "write_results",
]
