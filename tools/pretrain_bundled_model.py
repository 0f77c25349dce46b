"""Pre-train the scHyena bundled with the package (``st.pretrained.load_zeisel_brain_model``).

Reproduce it from a checkout::

    python tools/pretrain_bundled_model.py            # about 20 CPU minutes on 2 cores

What it does: pre-trains ``SCHyena(d_model=32, n_layers=2)`` by masked expression modelling
(no labels) on the full-length MIT-licensed mouse brain data bundled with the package: the 550
cells x 19,972 genes of ``st.datasets.zeisel_brain_all_genes()`` (whose genes are the model's
vocabulary) and the 243 midbrain cells x 18,219 genes of
``st.datasets.lamanno_midbrain_dopaminergic()`` (its genes matched to the vocabulary by name;
vocabulary genes it lacks get the missing token). Each round is one epoch on each data set, the
weights carried from one to the other. The other 2,455 cells of ``st.datasets.zeisel_brain()``
are left out on purpose: they measure only 4,000 genes, would cost as much as full-length cells
(every vocabulary gene is a token), and they are the cells the benchmarks and the annotation
tutorial evaluate on. It saves into ``src/schyena_tools/pretrained/_files/zeisel_brain/``
(``model.pt``) and writes ``model_card.json`` beside it: the settings, the training time, the
losses, the neighbour label agreement of its embedding, and which cells of
``st.datasets.zeisel_brain()`` (the 3,005-cell release of the same study) it was pre-trained
on, so that evaluations can leave them out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import scvi
import torch

import schyena_tools as st
from schyena_tools.demo import embedding_label_agreement

DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "src" / "schyena_tools" / "pretrained" / "_files" / "zeisel_brain"
)


def cells_shared_with_zeisel_3005(all_genes, release_3005) -> list[str]:
    """``obs_names`` of ``zeisel_brain()`` cells that are also in ``zeisel_brain_all_genes()``.

    The two releases name cells differently; a cell is matched when its counts on the 4,000
    shared genes are identical (the data's SOURCES.md documents that all 550 cells match).
    """
    genes = release_3005.var_names.intersection(all_genes.var_names)
    a = all_genes[:, genes].X.toarray()
    b = release_3005[:, genes].X.toarray()
    index = {row.tobytes(): name for row, name in zip(b, release_3005.obs_names, strict=True)}
    return sorted(index[row.tobytes()] for row in a if row.tobytes() in index)


def _last(history: dict | None, key: str) -> float | None:
    """Last value of a metric in an scvi-tools history dict (None when it was not logged)."""
    if not history or key not in history:
        return None
    return round(float(history[key].iloc[-1, 0]), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one epoch on each data set")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=25.0, help="start no new round after this long")
    args = parser.parse_args()

    scvi.settings.seed = args.seed
    adata = st.datasets.zeisel_brain_all_genes()
    st.SCHyena.setup_anndata(adata)  # no labels: self-supervised pre-training only
    model = st.SCHyena(adata, d_model=args.d_model, n_layers=args.n_layers)
    print(model, flush=True)
    midbrain = st.datasets.lamanno_midbrain_dopaminergic()
    st.SCHyena.setup_anndata(midbrain)
    midbrain_model = st.SCHyena.load_query_data(midbrain, model)
    # It continues the reference's pre-training: no data-dependent start of its own (that runs
    # once, at the first model.train() below, from the Zeisel cells).
    midbrain_model.is_trained_ = True

    train_kwargs = dict(
        max_epochs=1, batch_size=args.batch_size, plan_kwargs={"lr": args.lr}, enable_progress_bar=False
    )
    start = time.perf_counter()
    rounds_done = 0
    losses = []
    for _ in range(args.rounds):
        if time.perf_counter() - start > 60 * args.max_minutes:
            break
        # One epoch on each data set; the weights go from one model to the other (same vocabulary,
        # same architecture, only the measured genes differ).
        model.train(**train_kwargs)
        losses.append({"zeisel": _last(model.history, "validation_loss")})
        midbrain_model.module.load_state_dict(model.module.state_dict())
        midbrain_model.train(**train_kwargs)
        losses[-1]["lamanno"] = _last(midbrain_model.history, "validation_loss")
        model.module.load_state_dict(midbrain_model.module.state_dict())
        rounds_done += 1
        print(f"round {rounds_done}: validation loss {losses[-1]} after {time.perf_counter() - start:.0f} s")
    train_seconds = time.perf_counter() - start
    print(f"trained in {train_seconds:.0f} s", flush=True)

    start = time.perf_counter()
    embedding = model.get_latent_representation(batch_size=16)
    embed_seconds = time.perf_counter() - start
    history = model.phase_history_["pretrain"]

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(str(args.out), overwrite=True, save_anndata=False)
    size_mb = sum(f.stat().st_size for f in args.out.iterdir()) / 1e6

    card = {
        "name": "zeisel-brain",
        "trained_on": "st.datasets.zeisel_brain_all_genes(): Zeisel et al. 2015, 550 cells x 19,972 genes, "
        "mouse somatosensory cortex and CA1 hippocampus; and st.datasets.lamanno_midbrain_dopaminergic(): "
        "La Manno et al. 2016, 243 mouse midbrain dopaminergic neurons x 18,219 genes; labels NOT used",
        "objective": "masked expression modelling (15% of non-zero values, 1.5% of zeros hidden) "
        "+ cell-embedding expression head",
        "settings": {
            "d_model": args.d_model,
            "n_layers": args.n_layers,
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "train_size": 0.9,
            "seed": args.seed,
            "max_minutes": args.max_minutes,
        },
        "epochs_completed": rounds_done,
        "epochs_explained": "rounds completed; each round is one epoch on each of the two data sets",
        "validation_loss_per_round": losses,
        "parameters": int(sum(p.numel() for p in model.module.parameters())),
        "train_seconds": round(train_seconds, 1),
        "embed_seconds_550_cells": round(embed_seconds, 1),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU "
        "(a shared 2-core machine)",
        "final_train_loss": _last(history, "train_loss"),
        "final_validation_loss": _last(history, "validation_loss"),
        "final_validation_masked_mse": _last(history, "masked_mse_validation"),
        "final_validation_cell_mse": _last(history, "cell_mse_validation"),
        "knn10_label_agreement_subclass": round(
            embedding_label_agreement(embedding, adata.obs["cell_type"]), 3
        ),
        "knn10_label_agreement_major_class": round(
            embedding_label_agreement(embedding, adata.obs["major_class"]), 3
        ),
        "zeisel_brain_cells_in_training": cells_shared_with_zeisel_3005(adata, st.datasets.zeisel_brain()),
        "torch": torch.__version__,
        "scvi_tools": scvi.__version__,
        "schyena_tools": st.__version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%d"),
        "size_mb": round(size_mb, 2),
    }
    (args.out / "model_card.json").write_text(json.dumps(card, indent=1) + "\n")
    shown = {k: v for k, v in card.items() if k != "zeisel_brain_cells_in_training"}
    shown["zeisel_brain_cells_in_training"] = len(card["zeisel_brain_cells_in_training"])
    print(json.dumps(shown, indent=1))


if __name__ == "__main__":
    main()
