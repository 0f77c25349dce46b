"""How the linear probe of ``train_classifier`` should weigh the encoder's features: a screen.

The default classifier (``train_classifier()``) is an early-stopped logistic regression on the
standardised cell embedding (``d_model`` columns) beside the standardised expression of every
gene (~20,000 columns). With that many expression columns the 32 embedding columns barely move
the fit: with weight 1, a random-weights encoder scored the same as a pre-trained one on the
2-fold transfer rows. This screen asks two things on **inner** validation splits of the first
outer training fold of each transfer target of ``downstream.py``, of Zeisel 550 (the
reference's own cells) and of Zeisel 3005's two label levels (read, as in ``downstream.py``,
by a reference pre-trained on all of Zeisel 3005's cells without labels; 47 classes: those of
at least 10 cells); the outer test folds of ``downstream.py`` are never scored here:

- ``embedding_weight``: the embedding columns multiplied by ``w`` before the early-stopped
  L-BFGS path (equivalent to a ``w ** 2``-times weaker L2 penalty on them and a faster start
  along them), ``w`` in 1 (the default until round 9), 2, 3, 5 (``--weights``);
- the early stopping itself (``--stops``, with its own ``--out``): the same L-BFGS path scored
  at every number of iterations the cross-validated stop chooses from (5 ... 500; 500 is about
  the converged fit of the logistic-regression baseline), to see what the choice costs;
- ``self_training`` (``--self-training``, off by default: it lowered every weight on La Manno's
  first split, round 9): after the probe, the unlabelled cells of the registered data whose
  calibrated confidence is at least 0.9 join the training cells with their predicted labels
  and the probe is fitted again (scANVI uses its unlabelled cells too).

Each encoder's features of every cell are computed once per target (one forward pass); every
variant is then L-BFGS fits (6 iteration counts x 5 folds, then the final fit). Encoders
(``--encoders``): the pre-trained reference (``"Zeisel 550 reference"``: the full-length
Zeisel-550 reference of the transfer rows, 2 epochs; for Zeisel 3005's targets their own), the same
architecture with random weights (the "no pre-training" rows) and the bundled model (whose
corpus holds La Manno's and Campbell's cells, unlabelled: its rows on those two are
transductive, as scANVI's).

``python benchmarks/probe_readout.py --encoders "Zeisel 550 reference" "random weights"`` (about
two hours on one CPU core, most of it Campbell's 21,000 cells; ``--targets`` and ``--out`` split
it over two processes, ``--reference-cache`` shares the reference) writes
``docs/benchmarks/probe_readout.csv``; the decision is on the "Fine-tuning recipe" page.
"""

import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedShuffleSplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _downstream_baselines as baselines  # noqa: E402
import downstream  # noqa: E402

OUT = downstream.DOCS / "probe_readout.csv"
#: Inner 75/25 splits of the first outer training fold per target.
N_SPLITS = 5
EMBEDDING_WEIGHTS = (1.0, 2.0, 3.0, 5.0)
#: The transfer targets, then Zeisel 550 itself (the reference's own cells, as its row of
#: ``downstream.py``): (name, file, label column, case-insensitive genes, labels dropped).
SCREEN_SETS = (
    *downstream.TRANSFER_SETS,
    ("Zeisel 550", downstream.ZEISEL_550, "subclass", False, ()),
    ("Zeisel 3005, 7 classes", downstream.ZEISEL_3005, "level1class", False, ()),
    ("Zeisel 3005, 47 classes", downstream.ZEISEL_3005, "level2class", False, ()),
)
#: Targets pre-trained on their own data set, as their rows of ``downstream.py`` are (Zeisel
#: 3005: all 3,005 cells, its 4,000 genes, labels unused); every other target reads the
#: Zeisel-550 reference.
OWN_REFERENCE = {"Zeisel 3005, 7 classes": "Zeisel 3005", "Zeisel 3005, 47 classes": "Zeisel 3005"}
#: Smallest class kept, where ``downstream.py`` keeps fewer classes than ``read_target`` (5 cells).
MIN_CLASS_CELLS = {"Zeisel 3005, 47 classes": 10}
#: Data of each reference: (file, any label column; the labels are not used).
REFERENCE_DATA = {
    "Zeisel 550": (downstream.ZEISEL_550, "subclass"),
    "Zeisel 3005": (downstream.ZEISEL_3005, "level1class"),
}
log = logging.getLogger("probe_readout")


def inner_splits(labels: np.ndarray, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner-training and inner-validation cells of the first outer training fold (75/25)."""
    outer_train, _ = downstream.folds(labels, 1)[0]
    splitter = StratifiedShuffleSplit(n_splits=n_splits, test_size=0.25, random_state=downstream.SEED)
    return [
        (np.sort(outer_train[a]), np.sort(outer_train[b]))
        for a, b in splitter.split(np.zeros(outer_train.size), labels[outer_train])
    ]


def encoder_outputs(model, adata) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell embedding, classifier expression and its missing mask of every registered cell."""
    embeddings, values, missing = [], [], None
    for _, out in model._inference_batches(adata, None, 32):
        embeddings.append(out["cell_embedding"].float().cpu())
        values.append(out["classifier_expression"].float().cpu())
        missing = out["classifier_unseen"]
    return torch.cat(embeddings), torch.cat(values), missing


def build_model(encoder: str, fold, reference, bundled, case_insensitive: bool):
    import schyena_tools as st

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if encoder == "Zeisel 550 reference":
            return st.SCHyena.load_query_data(fold, reference, case_insensitive=case_insensitive)
        if encoder == "random weights":
            vocabulary = downstream._query_vocabulary(fold, reference, case_insensitive)
            return st.SCHyena(fold, **downstream.ARCH, gene_vocabulary=vocabulary)
        return st.SCHyena.load_query_data(fold, bundled, case_insensitive=True)


def main():
    import argparse

    import scvi

    import schyena_tools as st
    from schyena_tools.model._linear_readout import (
        PROBE_ITERATION_GRID,
        logistic_path,
        readout_features,
        self_trained_probe,
        set_readout_standardization,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--encoders", nargs="+", default=["Zeisel 550 reference", "random weights", "bundled model"]
    )
    parser.add_argument(
        "--self-training", action="store_true", help="also score each weight with self-training"
    )
    parser.add_argument("--weights", nargs="+", type=float, default=list(EMBEDDING_WEIGHTS))
    parser.add_argument(
        "--stops",
        action="store_true",
        help="score the L-BFGS path at every stop the early stopping chooses from, instead of its choice",
    )
    parser.add_argument("--resume", action="store_true", help="keep --out's rows; skip what they hold")
    parser.add_argument("--reference-cache", type=Path, help="save / reuse the pre-trained reference here")
    parser.add_argument("--targets", nargs="+", default=[t[0] for t in SCREEN_SETS])
    parser.add_argument("--out", type=Path, default=OUT, help="CSV to write (two runs can share the cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    scvi.settings.seed = downstream.SEED
    references: dict[str, object] = {}

    def reference_for(target: str):
        """The pre-trained reference of ``target`` (pre-trained once, or read from the cache)."""
        name = OWN_REFERENCE.get(target, "Zeisel 550")
        if name not in references:
            started = time.perf_counter()
            cache = args.reference_cache
            if cache is not None and name != "Zeisel 550":
                cache = cache.with_name(f"{cache.name}-{name.replace(' ', '_')}")
            if cache and cache.exists():
                references[name] = st.SCHyena.load(str(cache))
            else:
                references[name] = downstream.schyena_pretrain(
                    downstream.read(*REFERENCE_DATA[name]), downstream.MODES["default"]["pretrain_epochs"]
                )
                if cache:
                    references[name].save(str(cache), save_anndata=True)
            log.info("%s reference ready in %.0f s", name, time.perf_counter() - started)
        return name, references[name]

    bundled = None
    if "bundled model" in args.encoders:
        bundled = st.pretrained.load_zeisel_brain_model()
    rows = (
        pd.read_csv(args.out, keep_default_na=False).to_dict("records")
        if args.resume and args.out.exists()
        else []
    )
    done = {(row["target"], row["encoder"]) for row in rows}
    for name, path, label, case_insensitive, dropped in SCREEN_SETS:
        if name not in args.targets:
            continue
        target = downstream.read_target(path, label, dropped)
        counts = target.obs["label"].map(target.obs["label"].value_counts())
        target = target[(counts >= MIN_CLASS_CELLS.get(name, 5)).to_numpy()].copy()
        labels = target.obs["label"].to_numpy()
        splits = inner_splits(labels, N_SPLITS)
        log_target = baselines.log_normalize(target.X)
        for split, (train, val) in enumerate(splits):
            if (name, "") in done:
                break
            predicted = baselines.logistic_regression(log_target, labels, train, val)
            rows.append(score(name, "logistic regression (all genes)", "", split, labels[val], predicted))
        outer_train = np.sort(np.concatenate(splits[0]))
        for encoder in args.encoders:
            reference_name, reference = reference_for(name) if encoder != "bundled model" else (None, None)
            if encoder == "Zeisel 550 reference":
                build, encoder = encoder, f"{reference_name} reference"
            else:
                build = encoder
            if (name, encoder) in done:
                continue
            scvi.settings.seed = downstream.SEED
            fold = downstream.labelled_fold(target, labels, outer_train)
            model = build_model(build, fold, reference, bundled, case_insensitive)
            started = time.perf_counter()
            embedding, expression, missing = encoder_outputs(model, model.adata)
            log.info("%s | %s: features in %.0f s", name, encoder, time.perf_counter() - started)
            classes = np.asarray(model._label_classes(), dtype=object)
            codes = pd.Categorical(labels, categories=classes).codes
            head = model.module.classifier
            d_model = embedding.shape[1]
            for split, (train, val) in enumerate(splits):
                set_readout_standardization(head, embedding[train], expression[train], missing)
                features = readout_features(head, embedding, expression, missing)
                unlabelled = np.setdiff1d(outer_train, train)  # the inner-validation cells
                for w in args.weights:
                    scaled = features.clone()
                    scaled[:, :d_model] *= w
                    if args.stops:
                        path = logistic_path(
                            scaled[train],
                            torch.as_tensor(codes[train]).long(),
                            head.out_features,
                            1.0,
                            PROBE_ITERATION_GRID,
                        )
                        for stop, (weight, bias) in zip(PROBE_ITERATION_GRID, path, strict=True):
                            logits = scaled[val] @ weight.T + bias
                            rows.append(
                                score(
                                    name,
                                    f"probe, embedding weight {w:g}, stopped at {stop}",
                                    encoder,
                                    split,
                                    labels[val],
                                    classes[logits.argmax(1).numpy()],
                                    iterations=stop,
                                )
                            )
                        continue
                    for self_training in (False, True) if args.self_training else (False,):
                        weight, bias, info = self_trained_probe(
                            scaled[train],
                            torch.as_tensor(codes[train]).long(),
                            head.out_features,
                            1.0,
                            unlabelled=scaled[unlabelled] if self_training else None,
                            seed=downstream.SEED,
                        )
                        logits = scaled[val] @ weight.T + bias
                        method = f"probe, embedding weight {w:g}" + (
                            ", self-training" if self_training else ""
                        )
                        rows.append(
                            score(
                                name,
                                method,
                                encoder,
                                split,
                                labels[val],
                                classes[logits.argmax(1).numpy()],
                                iterations=info["iterations"],
                                pseudo_labelled=info["pseudo_labelled"],
                            )
                        )
            pd.DataFrame(rows).to_csv(args.out, index=False)
            log.info("%s | %s done", name, encoder)
    frame = pd.DataFrame(rows)
    frame.to_csv(args.out, index=False)
    summary = frame.groupby(["encoder", "method", "target"], sort=False)["macro_f1"].mean().unstack("target")
    summary["mean"] = summary.mean(axis=1)
    print(summary.round(3).to_markdown())


def score(target, method, encoder, split, truth, predicted, **info) -> dict:
    row = dict(
        target=target,
        encoder=encoder,
        method=method,
        split=split,
        macro_f1=round(f1_score(truth, predicted, average="macro"), 4),
        accuracy=round(accuracy_score(truth, predicted), 4),
        **info,
    )
    log.info("%s", row)
    return row


if __name__ == "__main__":
    main()
