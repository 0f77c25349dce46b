"""Pre-train the scHyena bundled with the package (``st.pretrained.load_zeisel_brain_model``).

Reproduce it from a checkout with ``../shared/data`` beside it (``SCHYENA_DATA`` overrides)::

    python tools/pretrain_bundled_model.py            # about 40 CPU minutes on 2 cores

What it does: pre-trains ``SCHyena(d_model=32, n_layers=2)`` by masked expression modelling
(no labels) on one corpus (:class:`schyena_tools.dataloaders.CorpusDataModule`) of every
full-length brain data set beside the checkout that may be shipped (MIT / BSD, see
``SOURCES.md`` there): Zeisel 2015 (550 cells x 19,972 genes, ``st.datasets.zeisel_brain_all_genes()``),
La Manno 2016 midbrain (243 x 18,219), Campbell 2017 hypothalamus (200 x 26,774), BICAN human
caudate (390 x 25,697) and Hochgerner 2018 dentate gyrus (100 x 13,913): 1,483 cells, shuffled
across data sets in every epoch. Genes are matched ignoring case (mouse ``Gapdh`` = human
``GAPDH``) and the vocabulary keeps the genes measured in at least two of the five sets, in
order of first appearance (Zeisel's genes first): a gene only one set measures costs every
user a token per cell and is learnt from a few hundred cells. The GPL and unlicensed sets
(Camp, scCB2, Darmanis) are never used, and the other 2,455 cells of ``st.datasets.zeisel_brain()``
are left out on purpose: they measure only 4,000 genes and are the cells the benchmarks and the
annotation tutorial evaluate on. It saves into ``src/schyena_tools/pretrained/_files/zeisel_brain/``
(``model.pt``) and writes ``model_card.json`` beside it: the settings, the training time, the
losses, the corpus, and which cells of ``st.datasets.zeisel_brain()`` (the 3,005-cell release of
the same study) it was pre-trained on, so that evaluations can leave them out. Held-out figures
are added by ``tools/evaluate_bundled_model.py``.
"""

from __future__ import annotations

import argparse
import json
import os
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


#: The shippable full-length brain sets beside the checkout: (name, file under DATA, citation).
CORPUS = (
    (
        "Zeisel 2015 cortex + hippocampus",
        "zeisel2015_gpsFISH/zeisel_550x19972_counts.h5ad",
        "Zeisel et al. 2015",
    ),
    (
        "La Manno 2016 midbrain",
        "lamanno2016_DA_mapscvi/lamanno_DA_243x18219_counts.h5ad",
        "La Manno et al. 2016",
    ),
    ("Campbell 2017 hypothalamus", "campbell2017_sctk/campbell2017_sctk.h5ad", "Campbell et al. 2017"),
    (
        "BICAN human caudate",
        "bican_human_caudate_dropsift/bican_human_caudate_dropsift.h5ad",
        "BICAN / DropSift",
    ),
    (
        "Hochgerner 2018 dentate gyrus",
        "hochgerner2018_dg_scvelo100/hochgerner2018_dg_scvelo100.h5ad",
        "Hochgerner 2018",
    ),
)
DATA = Path(os.environ.get("SCHYENA_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8, help="passes over the corpus")
    parser.add_argument(
        "--min-datasets", type=int, default=2, help="vocabulary: genes in at least this many sets"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("bundled_model_checkpoints"))
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    parser.add_argument(
        "--cell-objective", choices=["mse", "multinomial"], default="mse", help="see SCHyena.train"
    )
    parser.add_argument(
        "--cell-weight", type=float, default=1.0, help="weight of the cell head's term in the loss"
    )
    args = parser.parse_args()

    scvi.settings.seed = args.seed
    paths = [DATA / file for _, file, _ in CORPUS]
    corpus = st.dataloaders.CorpusDataModule(
        paths,
        names=[name for name, _, _ in CORPUS],
        vocabulary="union",
        min_datasets=args.min_datasets,
        case_insensitive=True,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(corpus, corpus.summary, sep="\n", flush=True)
    model = st.SCHyena.from_corpus(corpus, d_model=args.d_model, n_layers=args.n_layers)
    print(model, flush=True)
    start = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        cell_objective=args.cell_objective,
        plan_kwargs={"lr": args.lr, "cell_weight": args.cell_weight},
        enable_progress_bar=False,
        checkpoint_dir=args.checkpoint_dir,
        resume_from=args.checkpoint_dir if args.resume else None,
    )
    train_seconds = time.perf_counter() - start
    print(f"trained in {train_seconds:.0f} s", flush=True)
    history = model.phase_history_["pretrain"]

    zeisel = st.datasets.zeisel_brain_all_genes()
    query = st.SCHyena.load_query_data(zeisel, model)
    start = time.perf_counter()
    embedding = query.get_latent_representation(batch_size=16, progress_bar=False)
    embed_seconds = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(str(args.out), overwrite=True, save_anndata=False)
    size_mb = sum(f.stat().st_size for f in args.out.iterdir() if f.name == "model.pt") / 1e6
    summary = corpus.summary.drop(columns="file")
    card = {
        "name": "zeisel-brain",
        "trained_on": "one corpus of the five full-length brain data sets that may be shipped (MIT/BSD): "
        + "; ".join(
            f"{name} ({cite}), {n} cells" for (name, _, cite), n in zip(CORPUS, summary["cells"], strict=True)
        )
        + "; labels NOT used",
        "corpus": summary.reset_index().to_dict(orient="records"),
        "vocabulary": f"{len(model.gene_vocabulary)} genes measured in at least {args.min_datasets} of the "
        "5 sets, matched ignoring case, in order of first appearance (Zeisel's genes first)",
        "objective": "masked expression modelling (15% of non-zero values, 1.5% of zeros hidden) "
        f"+ cell-embedding expression head ({args.cell_objective}, weight {args.cell_weight:g})",
        "settings": {
            "d_model": args.d_model,
            "n_layers": args.n_layers,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "train_size": corpus.train_size,
            "block_size": corpus.block_size,
            "seed": args.seed,
            "cell_objective": args.cell_objective,
            "cell_weight": args.cell_weight,
        },
        "epochs_completed": int(len(history["train_loss"])),
        "train_loss_per_epoch": [round(float(v), 4) for v in history["train_loss"].iloc[:, 0]],
        "validation_loss_per_epoch": [round(float(v), 4) for v in history["validation_loss"].iloc[:, 0]],
        "parameters": int(sum(p.numel() for p in model.module.parameters())),
        "train_seconds": round(train_seconds, 1),
        "embed_seconds_550_cells": round(embed_seconds, 1),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU "
        "(a shared 2-core machine)",
        "final_train_loss": _last(history, "train_loss"),
        "final_validation_loss": _last(history, "validation_loss"),
        "final_validation_masked_mse": _last(history, "masked_mse_validation"),
        "final_validation_cell_mse": _last(history, "cell_mse_validation"),
        "final_validation_cell_kl": _last(history, "cell_kl_validation"),
        "knn10_label_agreement_subclass": round(
            embedding_label_agreement(embedding, zeisel.obs["cell_type"]), 3
        ),
        "knn10_label_agreement_major_class": round(
            embedding_label_agreement(embedding, zeisel.obs["major_class"]), 3
        ),
        "knn10_explained": "on the 550 Zeisel training cells (not held out; held-out figures: 'held_out')",
        "zeisel_brain_cells_in_training": cells_shared_with_zeisel_3005(zeisel, st.datasets.zeisel_brain()),
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
