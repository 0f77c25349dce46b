"""Time the README demo before and after a change, side by side in one run.

One command::

    python benchmarks/demo_time.py                 # before = BEFORE_COMMIT of speed.py, 1 epoch

The demo (``schyena_tools.demo.run_demo``: pre-train on the bundled 550 cells x 19,972 genes,
embed, UMAP) runs in fresh processes, alternately with the package of ``--before-commit``
(``src/schyena_tools`` extracted with ``git archive``) and with this checkout, ``--rounds``
times each. Writes ``docs/benchmarks/speed_demo.{md,json}``: seconds per training epoch and
embedding cells/s of every run, and the ratios of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from speed import BEFORE_COMMIT, device_description, extract_commit  # noqa: E402

RUNNER = """
import json, sys
sys.path.insert(0, sys.argv[1]) if sys.argv[1] != "-" else None
import torch
if int(sys.argv[4]):
    torch.set_num_threads(int(sys.argv[4]))
from schyena_tools.demo import run_demo
summary = run_demo(out_dir=sys.argv[2], max_epochs=int(sys.argv[3]), progress=False)
import schyena_tools
summary["threads"] = torch.get_num_threads()
summary["package"] = schyena_tools.__file__
print("RESULT " + json.dumps(summary))
"""


def run_once(source: str | None, epochs: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, source or "-", out, str(epochs), str(threads)],
            capture_output=True,
            text=True,
            cwd=out,  # never import the checkout's package by accident
        )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"status": "error", "message": (proc.stderr or proc.stdout)[-800:]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before-commit", default=BEFORE_COMMIT)
    p.add_argument("--max-epochs", type=int, default=1, help="training epochs of each demo run")
    p.add_argument("--rounds", type=int, default=1, help="before/after pairs (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks"))
    args = p.parse_args(argv)
    before_src = extract_commit(args.before_commit, "src/schyena_tools")
    after_src = os.path.join(ROOT, "src")
    runs: dict[str, list] = {"before": [], "after": []}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    for _ in range(args.rounds):
        for name, source in (("before", before_src), ("after", after_src)):
            result = run_once(source, args.max_epochs, args.threads)
            runs[name].append(result)
            shown = {k: result.get(k) for k in ("seconds_per_epoch", "embed_cells_per_second", "package")}
            print(name, shown, flush=True)
    meta = dict(
        device=device_description("cpu"),
        before_commit=args.before_commit,
        max_epochs=args.max_epochs,
        rounds=args.rounds,
        started=started,
        finished=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    payload = {"meta": meta, "runs": runs}
    with open(os.path.join(args.out, "speed_demo.json"), "w") as fh:
        json.dump(payload, fh, indent=1)
    md = markdown(payload)
    with open(os.path.join(args.out, "speed_demo.md"), "w") as fh:
        fh.write(md)
    print(md)


def markdown(payload) -> str:
    meta, runs = payload["meta"], payload["runs"]

    def median(name, key):
        values = [r[key] for r in runs[name] if key in r]
        return statistics.median(values) if values else None

    lines = [
        "# README demo, before and after (same run, alternating fresh processes)",
        "",
        f"Device: {meta['device']}. `before`: the package of commit {meta['before_commit']}; "
        f"`after`: this checkout. {meta['max_epochs']} training epoch(s) per run, "
        f"{meta['rounds']} round(s); run {meta['started']} - {meta['finished']}.",
        "",
        "| | before | after | ratio |",
        "|---|---:|---:|---:|",
    ]
    for key, label, faster in (
        ("seconds_per_epoch", "training, s per epoch (550 cells)", "lower"),
        ("embed_cells_per_second", "embedding, cells/s", "higher"),
        ("knn_agreement_major_class", "10-NN agreement, major class", None),
    ):
        b, a = median("before", key), median("after", key)
        if b is None or a is None:
            lines.append(f"| {label} | {b} | {a} | |")
            continue
        ratio = "" if faster is None else f"**{(b / a if faster == 'lower' else a / b):.2f}x**"
        lines.append(f"| {label} | {b:.3g} | {a:.3g} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
