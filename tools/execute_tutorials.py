"""Execute the tutorials in place with their full settings, so the docs render fresh outputs.

    python tools/execute_tutorials.py                      # every notebook in tutorials/
    python tools/execute_tutorials.py 02_annotation        # the ones whose name contains this

    python tools/execute_tutorials.py --tidy-only          # clean the stored outputs, no run

Each notebook runs in a temporary working folder (models it saves land there, not in the
repository) and is written back with its outputs, tidied (:func:`tidy`): library log lines and
warnings that name files on this machine are dropped, and the paths that remain are made
relative, so the stored outputs show what a reader's run shows of the package itself. The
docs never execute notebooks (``nb_execution_mode = "off"``); the test suite runs the quick
start in its quick mode.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"

#: Stream lines that are other libraries' chatter, not the tutorial's output.
NOISE = (
    "site-packages",
    "Seed set to",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip",
    "`Trainer.fit` stopped",
    "already downloaded",
    "from .autonotebook import",
)
#: The start of one drawing of a tqdm bar ("Embedding:  40%|").
BAR_STATE = re.compile(r"[A-Z][\w ,:-]*?:\s+\d+%\|")
#: Absolute paths of the machine that ran the notebook (its working folder, the checkout, home).
LOCAL_PATH = re.compile(
    r"(/tmp/schyena_tutorial_[^/\s]*/|/work/[^\s'\"]*/|/root/[^\s'\"]*/|/home/[^\s'\"]*/)"
)


def _tidy_text(text: str) -> str:
    kept, skip_source = [], False
    # split on newlines only: str.splitlines would also split at the "\r" of a redrawn bar
    parts = text.split("\n")
    for line in [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else []):
        if any(marker in line for marker in NOISE):
            # a Python warning is followed by the indented source line that raised it
            skip_source = "Warning" in line or "site-packages" in line
            continue
        if skip_source and line.startswith("  "):
            continue
        skip_source = False
        if "\r" in line:  # a progress bar redrawn in place: keep its final state only
            line = line.rsplit("\r", 1)[-1]
        states = list(BAR_STATE.finditer(line))
        if len(states) > 1:  # redraws whose "\r" an earlier tidy dropped: the last one
            line = line[states[-1].start() :]
        kept.append(LOCAL_PATH.sub("", line))
    return "".join(kept)


def tidy(nb) -> None:
    """Drop other libraries' log lines and local paths from the stored stream outputs."""
    for cell in nb.cells:
        merged = []  # a progress bar arrives as one stream output per redraw: join them first
        for output in cell.get("outputs", []):
            previous = merged[-1] if merged else None
            if (
                output.get("output_type") == "stream"
                and previous is not None
                and previous.get("output_type") == "stream"
                and previous.get("name") == output.get("name")
            ):
                previous["text"] = previous.get("text", "") + output.get("text", "")
            else:
                merged.append(output)
        outputs = []
        for output in merged:
            if output.get("output_type") == "stream":
                output["text"] = _tidy_text(output.get("text", ""))
                if not output["text"].strip():
                    continue
            outputs.append(output)
        if "outputs" in cell:
            cell["outputs"] = outputs


def execute(notebook: Path, timeout: int) -> float:
    """Run ``notebook`` top to bottom and store its outputs in the file; return the seconds taken."""
    nb = nbformat.read(notebook, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="schyena_tutorial_") as workdir:
        client = nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": workdir}}
        )
        client.execute()
    tidy(nb)
    nbformat.write(nb, notebook)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only notebooks whose file name contains one of these")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per cell")
    parser.add_argument("--tidy-only", action="store_true", help="tidy the stored outputs without running")
    args = parser.parse_args()
    notebooks = sorted(TUTORIALS.glob("*.ipynb"))
    if args.names:
        notebooks = [n for n in notebooks if any(name in n.name for name in args.names)]
    for notebook in notebooks:
        if args.tidy_only:
            nb = nbformat.read(notebook, as_version=4)
            tidy(nb)
            nbformat.write(nb, notebook)
            print(f"{notebook.name}: tidied", flush=True)
            continue
        print(f"{notebook.name}: running...", flush=True)
        print(f"{notebook.name}: done in {execute(notebook, args.timeout):.0f} s", flush=True)


if __name__ == "__main__":
    main()
