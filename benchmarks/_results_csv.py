"""One home for how a benchmark that runs in pieces keeps its results table.

Several studies run one part per process (a data set, a configuration) so that two parts can
share the machine; each part replaces its own rows of one CSV and leaves the others.
"""

from __future__ import annotations

import fcntl
import tempfile
from pathlib import Path

import pandas as pd


def replace_rows(path: Path, rows: list[dict], keys: list[str]) -> pd.DataFrame:
    """Write ``rows`` into the CSV at ``path``, replacing rows with the same ``keys`` values.

    Safe with another part of the same study writing beside it (an exclusive lock in the temp
    folder, named after the CSV). Returns the table as written.
    """
    lock_path = Path(tempfile.gettempdir()) / f"schyena_{path.stem}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        new = pd.DataFrame(rows)
        if path.exists():
            old = pd.read_csv(path)
            keep = ~old.set_index(keys).index.isin(new.set_index(keys).index)
            new = pd.concat([old[keep], new], ignore_index=True)
        new.to_csv(path, index=False)
    return new
