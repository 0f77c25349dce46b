"""Execute the tutorials in place with their full settings, so the docs render fresh outputs.

    python tools/execute_tutorials.py                      # every notebook in tutorials/
    python tools/execute_tutorials.py 02_annotation        # the ones whose name contains this

Each notebook runs in a temporary working folder (models it saves land there, not in the
repository) and is written back with its outputs. The docs never execute notebooks
(``nb_execution_mode = "off"``); the test suite runs the quick start in its quick mode.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"


def execute(notebook: Path, timeout: int) -> float:
    """Run ``notebook`` top to bottom and store its outputs in the file; return the seconds taken."""
    nb = nbformat.read(notebook, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="schyena_tutorial_") as workdir:
        client = nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": workdir}}
        )
        client.execute()
    nbformat.write(nb, notebook)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only notebooks whose file name contains one of these")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    args = parser.parse_args()
    notebooks = sorted(TUTORIALS.glob("*.ipynb"))
    if args.names:
        notebooks = [n for n in notebooks if any(name in n.name for name in args.names)]
    for notebook in notebooks:
        print(f"{notebook.name}: running...", flush=True)
        print(f"{notebook.name}: done in {execute(notebook, args.timeout):.0f} s", flush=True)


if __name__ == "__main__":
    main()
