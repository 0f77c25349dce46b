"""Width, depth and length of the bundled model, chosen by held-out figures at CPU compute.

Each configuration ``WIDTHxDEPTH:EPOCHS`` (``d_model`` x Hyena blocks : passes over the corpus)
is pre-trained exactly as the shipped model is (``tools/pretrain_bundled_model.py``: the
corpus of the five shippable full-length brain sets, 20,149-gene vocabulary, batch 8, learning
rate 1e-3, seed 0, masked expression modelling, no labels) and scored on the held-out protocol
of ``tools/evaluate_bundled_model.py`` (Zeisel cells outside pre-training, Darmanis human
cortex, Camp human fetal cortex; a stratified ``--max-cells`` per set): zero-shot 10-NN label
agreement and few-shot annotation with ``train_classifier()``'s defaults, beside PCA of 2,000
HVGs and logistic regression on the same cells and split. The validation loss (the corpus's
held-back 10% of blocks, the same for every configuration) and the training time are read from
each model's card. The shipped model is scored as its own row (``shipped``).

Run ``python benchmarks/bundled_model_sweep.py --configs 64x2:2 32x4:2`` (configurations one
after another; start a second process with other configurations to use a second core).
Training runs with one thread per process; a ``32x2`` epoch takes about 12 minutes on one idle
core, ``64x2`` and ``32x4`` about twice that. Rows go to
``docs/benchmarks/bundled_model_sweep.csv`` (one per configuration and held-out set, replaced
when re-run); models and checkpoints stay in ``--work`` (default: the temp folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tools"))
import evaluate_bundled_model as held_out  # noqa: E402
from _results_csv import replace_rows  # noqa: E402

import schyena_tools as st  # noqa: E402

OUT = ROOT / "docs" / "benchmarks" / "bundled_model_sweep.csv"
SHIPPED = "shipped"
#: What the table says beside a configuration: the model shipped when the row was scored.
NOTES = {
    SHIPPED: " (shipped)",
    "32x2:4": " (bundled until 2026-12-02)",
    "32x2:8": " (bundled now)",
    "32x2:4:multinomial:10": ", multinomial cell head x10 (val. loss not comparable)",
}


def parse_config(text: str) -> tuple[int, int, int, str, float]:
    """``"64x2:2"`` -> (d_model 64, 2 blocks, 2 epochs, cell objective "mse", cell weight 1).

    An optional tail sets the cell head's objective and weight (``SCHyena.train``'s
    ``cell_objective``, the loss's ``cell_weight``): ``"32x2:8:multinomial:10"``.
    """
    try:
        shape, epochs, *cell = text.split(":")
        width, depth = shape.split("x")
        objective = cell[0] if cell else "mse"
        weight = float(cell[1]) if len(cell) > 1 else 1.0
        if objective not in ("mse", "multinomial") or len(cell) > 2:
            raise ValueError(objective)
        return int(width), int(depth), int(epochs), objective, weight
    except ValueError:
        raise SystemExit(
            f"configuration {text!r}: write WIDTHxDEPTH:EPOCHS[:mse|multinomial[:CELL_WEIGHT]], e.g. 64x2:2"
        ) from None


def pretrain(config: str, work: Path) -> Path:
    """Pre-train one configuration with the bundled model's own tool; returns the model folder."""
    width, depth, epochs, objective, weight = parse_config(config)
    folder = work / config.replace(":", "_")
    if (folder / "model_card.json").exists():
        return folder  # trained by an earlier run of this study
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [
        sys.executable,
        str(ROOT / "tools" / "pretrain_bundled_model.py"),
        f"--out={folder}",
        f"--d-model={width}",
        f"--n-layers={depth}",
        f"--epochs={epochs}",
        f"--cell-objective={objective}",
        f"--cell-weight={weight}",
        f"--checkpoint-dir={work / (folder.name + '_checkpoints')}",
    ]
    if (work / (folder.name + "_checkpoints")).exists():
        command.append("--resume")
    subprocess.run(command, env=env, check=True)
    return folder


def held_out_sets(training_cells: list[str], max_cells: int, per_class: int) -> list[tuple]:
    """Each held-out set once per run: its cells, few-shot split and the baselines' figures."""
    sets = []
    for name, file, label, case_insensitive, dropped in held_out.HELD_OUT:
        adata = held_out.held_out_set(file, label, dropped, max_cells, training_cells)
        train, test = held_out.few_shot_split(adata.obs["label"].to_numpy(), per_class)
        sets.append(
            (name, adata, case_insensitive, train, test, held_out.baseline_figures(adata, train, test))
        )
    return sets


def score(config: str, folder: Path, sets: list[tuple]) -> list[dict]:
    """Held-out rows of the model in ``folder``, beside the baselines on the same cells."""
    card = json.loads((folder / "model_card.json").read_text())
    settings = card["settings"]
    model = st.pretrained.load_model(folder)
    rows = []
    for name, adata, case_insensitive, train, test, baselines in sets:
        figures = held_out.model_figures(model, adata, case_insensitive, train, test)
        rows.append(
            {
                "config": config,
                "d_model": settings["d_model"],
                "n_layers": settings["n_layers"],
                "epochs": card["epochs_completed"],
                "parameters": card["parameters"],
                "size_mb": card["size_mb"],
                "train_seconds": card["train_seconds"],
                "validation_loss": card["final_validation_loss"],
                "validation_masked_mse": card["final_validation_masked_mse"],
                "set": name,
                "cells": adata.n_obs,
                "knn10": figures["knn10"],
                "pca_knn10": baselines["pca_knn10"],
                "fewshot_macro_f1": figures["fewshot_macro_f1"],
                "lr_fewshot_macro_f1": baselines["lr_fewshot_macro_f1"],
                "score_seconds": figures["seconds"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(results: pd.DataFrame) -> str:
    """Markdown: one line per configuration, held-out sets side by side, PCA / LR as the first line."""
    sets = list(dict.fromkeys(results["set"]))
    short = [name.split(" (")[0].replace(" 2015", "") for name in sets]
    head = ["configuration", "parameters", "epochs", "train min", "val. loss"]
    head += [f"10-NN {s}" for s in short] + ["10-NN mean"] + [f"few-shot {s}" for s in short]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    first = results.drop_duplicates("set").set_index("set").loc[sets]
    base = ["PCA of 2,000 HVGs / logistic regression", "", "", "", ""]
    base += [f"{v:.3f}" for v in first["pca_knn10"]] + [f"{first['pca_knn10'].mean():.3f}"]
    base += [f"{v:.3f}" for v in first["lr_fewshot_macro_f1"]]
    lines.append("| " + " | ".join(base) + " |")
    for config, rows in results.groupby("config", sort=False):
        rows = rows.set_index("set").loc[sets]
        top = rows.iloc[0]
        name = f"d_model {top['d_model']}, {top['n_layers']} blocks" + NOTES.get(config, "")
        cells = [name, f"{top['parameters'] / 1e6:.2f} M", str(top["epochs"])]
        cells += [f"{top['train_seconds'] / 60:.0f}", f"{top['validation_loss']:.3f}"]
        cells += [f"{v:.3f}" for v in rows["knn10"]] + [f"{rows['knn10'].mean():.3f}"]
        cells += [f"{v:.3f}" for v in rows["fewshot_macro_f1"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=["64x2:2", "32x4:2"], help="WIDTHxDEPTH:EPOCHS")
    parser.add_argument("--shipped", action="store_true", help="also score the shipped model")
    parser.add_argument("--max-cells", type=int, default=250, help="cells per held-out set")
    parser.add_argument("--per-class", type=int, default=10, help="labelled cells per type, few-shot")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "schyena_bundled_sweep")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table from the CSV")
    args = parser.parse_args()
    for config in args.configs:
        parse_config(config)  # every configuration checked before any training
    if not args.table_only:
        import torch

        torch.set_num_threads(1)
        args.work.mkdir(parents=True, exist_ok=True)
        jobs = [(SHIPPED, held_out.MODEL_DIR)] if args.shipped else []
        jobs += [(config, None) for config in args.configs]
        # every configuration is pre-trained on the same corpus, so the shipped card's list of
        # Zeisel training cells holds for all of them
        card = json.loads((held_out.MODEL_DIR / "model_card.json").read_text())
        sets = held_out_sets(card["zeisel_brain_cells_in_training"], args.max_cells, args.per_class)
        for config, folder in jobs:
            start = time.perf_counter()
            folder = folder or pretrain(config, args.work)
            rows = score(config, folder, sets)
            replace_rows(OUT, rows, ["config", "set"])
            print(f"{config}: {time.perf_counter() - start:.0f} s", flush=True)
    results = pd.read_csv(OUT)
    text = table(results)
    OUT.with_name(OUT.stem + "_table.md").write_text(text)
    print(text)
    print(
        "held-out 10-NN mean per configuration:", results.groupby("config")["knn10"].mean().round(3).to_dict()
    )


if __name__ == "__main__":
    main()
