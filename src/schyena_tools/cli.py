"""Command line: ``schyena-tools <command>``, for pipelines that pass h5ad files.

Every command reads an h5ad of raw counts and writes a new h5ad holding the input plus its
results under the documented keys (``obsm["X_schyena"]``, ``obs["schyena_prediction"]``,
``obs["schyena_confidence"]``, ``layers["schyena_imputed"]``). Bad arguments (a missing file, an
unknown key) stop with a one-line error and exit code 2 before any work is done.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

#: Name under which ``--model`` finds the model shipped with the package.
BUNDLED_MODEL_NAME = "zeisel-brain"


class UsageError(Exception):
    """A problem with the command's arguments or input files, reported in one line."""


# ---------------------------------------------------------------------- helpers
def _say(message: str, args: argparse.Namespace) -> None:
    if not getattr(args, "quiet", False):
        print(f"[schyena-tools {args.command}] {message}", file=sys.stderr, flush=True)


def _check_input(path: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"input file {path!r} does not exist")
    if file.suffix != ".h5ad":
        raise UsageError(f"input file {path!r} is not an .h5ad file")
    return file


def _check_output(path: str) -> Path:
    file = Path(path)
    if file.suffix != ".h5ad":
        raise UsageError(f"output {path!r} must end in .h5ad")
    if not file.parent.exists():
        raise UsageError(f"the folder of output {path!r} does not exist")
    return file


def _check_model(name_or_folder: str) -> Path:
    """The model folder ``--model`` names (a folder or the bundled model's name), checked."""
    from schyena_tools import SCHyena
    from schyena_tools.pretrained import ZEISEL_BRAIN_MODEL_DIR

    folder = Path(name_or_folder)
    if not folder.exists() and name_or_folder == BUNDLED_MODEL_NAME:
        folder = ZEISEL_BRAIN_MODEL_DIR
    if not folder.exists():
        raise UsageError(
            f"model {name_or_folder!r} is neither a folder written by 'schyena-tools pretrain' / model.save "
            f"nor the bundled model's name {BUNDLED_MODEL_NAME!r}"
        )
    try:
        SCHyena.check_saved_model(folder)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"model {name_or_folder!r}: {error}") from error
    return folder


def _read(path: Path, args: argparse.Namespace):
    import anndata as ad

    _say(f"reading {path}", args)
    adata = ad.read_h5ad(path)
    layer = getattr(args, "layer", None)
    if layer is not None and layer not in adata.layers:
        raise UsageError(f"{path} has no layer {layer!r}; layers: {list(adata.layers)}")
    for option in ("labels_key", "batch_key"):
        key = getattr(args, option, None)
        if key is not None and key not in adata.obs:
            raise UsageError(
                f"{path} has no obs column {key!r} (--{option.replace('_', '-')}); "
                f"columns: {list(adata.obs.columns)}"
            )
    return adata


def _check_counts(adata, args: argparse.Namespace) -> None:
    """The counts of the file as read (not of the working copy, which has no layers to offer),
    with the fix named as this command's option (``--layer counts``).
    """
    from schyena_tools.validation import check_anndata

    check_anndata(adata, layer=getattr(args, "layer", None), layer_fix=lambda name: f"--layer {name}")


def _working_copy(adata, args: argparse.Namespace, keep_obs: tuple[str | None, ...] = ()):
    """A light AnnData for the model (counts and the needed obs columns only).

    scvi-tools adds bookkeeping columns to the data it registers; working on this copy keeps
    them out of the user's output file.
    """
    from anndata import AnnData

    layer = getattr(args, "layer", None)
    counts = adata.X if layer is None else adata.layers[layer]
    obs = adata.obs[[key for key in keep_obs if key is not None]].copy()
    return AnnData(X=counts, obs=obs, var=adata.var[[]].copy())


def _trainer_kwargs(args: argparse.Namespace) -> dict:
    return {
        "max_epochs": args.max_epochs,
        "batch_size": args.batch_size,
        "accelerator": args.accelerator,
        "devices": args.devices,
        "enable_progress_bar": not args.quiet,
    }


def _integer(minimum: int):
    """An argparse type: an integer of at least ``minimum``, else a usage error at parse time."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value:g}")
    return value


def _devices(text: str):
    """``--devices``: "auto", a count ("2") or a list of ids ("0,1")."""
    if text == "auto":
        return text
    if "," in text:
        return [int(part) for part in text.split(",") if part]
    return int(text)


def _load_model_onto(model_folder: Path, work, args: argparse.Namespace):
    from schyena_tools.pretrained import load_model

    _say(f"loading model {model_folder}", args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        model = load_model(model_folder, work, accelerator="cpu")
    for warning in caught:
        if "vocabulary" in str(warning.message):
            _say(str(warning.message), args)
    return model


def _run_on_file(
    args: argparse.Namespace,
    work_on,
    keep_obs: tuple[str | None, ...] = (),
    check_input=None,
    **setup_kwargs,
):
    """The skeleton of every file command: check, read, copy, set up, (load), run, write.

    ``check_input(adata)``, if given, checks the data as read before any work.
    ``work_on(adata, work, model)`` runs the command on the working copy ``work`` and writes its
    results into ``adata`` (the user's data as read); ``model`` is the model loaded from
    ``args.model``, or None for commands without one. ``setup_kwargs`` go to
    ``SCHyena.setup_anndata`` of the working copy.
    """
    source, output = _check_input(args.input), _check_output(args.output)
    model_folder = _check_model(args.model) if getattr(args, "model", None) else None
    started = time.perf_counter()
    adata = _read(source, args)
    _check_counts(adata, args)
    if check_input is not None:
        check_input(adata)
    import scvi

    from schyena_tools import SCHyena

    if hasattr(args, "seed"):
        scvi.settings.seed = args.seed
    from schyena_tools.validation import CountsWarning

    work = _working_copy(adata, args, keep_obs)
    with warnings.catch_warnings():
        # _check_counts showed them already, for the file as read
        warnings.simplefilter("ignore", CountsWarning)
        SCHyena.setup_anndata(work, **setup_kwargs)
    model = _load_model_onto(model_folder, work, args) if model_folder is not None else None
    work_on(adata, work, model)
    _say(f"writing {output}", args)
    adata.write_h5ad(output, compression="gzip")
    _say(f"done in {time.perf_counter() - started:.0f} s", args)


# ---------------------------------------------------------------------- commands
def _demo(args: argparse.Namespace) -> None:
    from schyena_tools.demo import run_demo

    run_demo(
        out_dir=args.out,
        max_epochs=args.max_epochs,
        d_model=args.d_model,
        n_layers=args.n_layers,
        batch_size=args.batch_size,
        n_cells=args.n_cells,
        seed=args.seed,
        progress=not args.quiet,
    )


def _pretrain(args: argparse.Namespace) -> None:
    model_out = Path(args.model_out)
    if model_out.exists() and any(model_out.iterdir()) and not args.overwrite:
        raise UsageError(
            f"model folder {args.model_out!r} exists and is not empty; pass --overwrite to replace it"
        )
    if len(args.input) > 1 or args.output is None or args.vocabulary != "union":
        _pretrain_on_corpus(args, model_out)
        return
    args.input, args.output = args.input[0], str(_check_output(args.output))

    def work_on(adata, work, _):
        from schyena_tools import SCHyena

        model = SCHyena(work, d_model=args.d_model, n_layers=args.n_layers)
        _say(
            f"SCHyena with {len(model.gene_vocabulary)} gene tokens per cell, d_model={args.d_model}, "
            f"n_layers={args.n_layers}. Pre-training on {work.n_obs} cells.",
            args,
        )
        model.train(mask_ratio=args.mask_ratio, **_trainer_kwargs(args))
        _say(f"saving model to {model_out}", args)
        model.save(str(model_out), overwrite=True)
        _say("embedding cells", args)
        adata.obsm["X_schyena"] = model.get_latent_representation(
            batch_size=args.batch_size, progress_bar=not args.quiet
        )

    _run_on_file(args, work_on, keep_obs=(args.batch_key,), batch_key=args.batch_key)


def _read_vocabulary(text: str):
    """``--vocabulary``: "union", or a text file with one gene name per line."""
    if text == "union":
        return text
    file = Path(text)
    if not file.is_file():
        raise UsageError(f"--vocabulary {text!r} is neither 'union' nor a file of gene names (one per line)")
    genes = [line.strip() for line in file.read_text().splitlines()]
    return [gene for gene in genes if gene and not gene.startswith("#")]


def _pretrain_on_corpus(args: argparse.Namespace, model_out: Path) -> None:
    """Several inputs (or no output file): one model pre-trained on all of them, read from disk.

    With ``-o`` and several inputs, ``-o`` is a folder: each input is written there, under its
    own name, with ``obsm["X_schyena"]`` added.
    """
    inputs = [_check_input(path) for path in args.input]
    if len({path.name for path in inputs}) < len(inputs):
        raise UsageError("two inputs have the same file name; rename one (outputs are named after inputs)")
    out_folder = None
    if args.output is not None and len(inputs) > 1:
        out_folder = Path(args.output)
        if not out_folder.is_dir():
            raise UsageError(
                f"with several inputs, -o is a folder for the embedded copies; {args.output!r} is not one"
            )
    elif args.output is not None:
        _check_output(args.output)
    if args.batch_key is not None:
        raise UsageError("--batch-key is for a single input file; a corpus registers no batches")
    vocabulary = _read_vocabulary(args.vocabulary)
    import scvi

    from schyena_tools import SCHyena
    from schyena_tools.dataloaders import CorpusDataModule

    scvi.settings.seed = args.seed
    _say(f"checking {len(inputs)} input files", args)
    corpus = CorpusDataModule(
        inputs,
        layer=args.layer,
        vocabulary=vocabulary,
        min_datasets=args.min_datasets,
        case_insensitive=args.case_insensitive,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    _say(str(corpus), args)
    model = SCHyena.from_corpus(corpus, d_model=args.d_model, n_layers=args.n_layers)
    trainer = _trainer_kwargs(args)
    del trainer["batch_size"]
    model.train(
        mask_ratio=args.mask_ratio,
        checkpoint_dir=args.checkpoint_dir,
        resume_from=args.resume_from,
        **trainer,
    )
    _say(f"saving model to {model_out}", args)
    model.save(str(model_out), overwrite=True)
    if args.output is None:
        return
    for path in inputs:
        target = out_folder / path.name if out_folder is not None else Path(args.output)
        one = argparse.Namespace(
            **{**vars(args), "input": str(path), "output": str(target), "model": str(model_out)}
        )
        _embed(one)


def _embed(args: argparse.Namespace) -> None:
    def work_on(adata, work, model):
        _say(f"embedding {work.n_obs} cells", args)
        adata.obsm["X_schyena"] = model.get_latent_representation(
            batch_size=args.batch_size, progress_bar=not args.quiet
        )

    _run_on_file(args, work_on)


def _annotate(args: argparse.Namespace) -> None:
    def work_on(adata, work, model):
        labels = work.obs[args.labels_key].astype(str)
        labelled = labels[labels != args.unlabeled_category]
        _say(f"training a classifier on {len(labelled)} labelled cells", args)
        model.train_classifier(**_trainer_kwargs(args))
        _say(f"predicting {work.n_obs} cells", args)
        predicted, confidence, unknown = model.predict(
            batch_size=args.batch_size,
            return_confidence=True,
            return_unknown_score=True,
            unknown_threshold=args.unknown_threshold,
            progress_bar=not args.quiet,
        )
        adata.obs["schyena_prediction"] = predicted.astype(str)
        adata.obs["schyena_prediction"] = adata.obs["schyena_prediction"].astype("category")
        adata.obs["schyena_confidence"] = confidence.astype("float32")
        adata.obs["schyena_unknown_score"] = unknown.astype("float32")
        if args.unknown_threshold is not None:
            _say(f"{int((predicted == 'unknown').sum())} cells labelled 'unknown'", args)
        if args.model_out:
            model.save(args.model_out, overwrite=True)

    def check_labels(adata):
        labels = adata.obs[args.labels_key].astype(str)
        if labels[labels != args.unlabeled_category].nunique() < 2:
            raise UsageError(
                f"obs column {args.labels_key!r} needs at least two labelled cell types "
                f"(cells labelled {args.unlabeled_category!r} are the ones to predict)"
            )

    _run_on_file(
        args,
        work_on,
        keep_obs=(args.labels_key,),
        check_input=check_labels,
        labels_key=args.labels_key,
        unlabeled_category=args.unlabeled_category,
    )


def _impute(args: argparse.Namespace) -> None:
    def work_on(adata, work, model):
        if args.max_epochs > 0:
            _say(f"fine-tuning for imputation on {work.n_obs} cells", args)
            model.train_imputer(**_trainer_kwargs(args))
        _say(f"imputing {work.n_obs} cells", args)
        # One column per gene of the input: genes outside the model's vocabulary keep their
        # observed log-normalised values, and var["schyena_imputed"] says which were imputed.
        imputed = model.get_imputed_expression(
            batch_size=args.batch_size,
            keep_observed=not args.denoise,
            all_genes=True,
            return_numpy=True,
            progress_bar=not args.quiet,
        )
        adata.layers["schyena_imputed"] = imputed
        adata.var["schyena_imputed"] = adata.var_names.isin(model.gene_vocabulary)
        adata.uns["schyena_imputed"] = {
            "scale": f"log1p(counts / library size * {model.module.target_sum:g})",
            "observed_values_kept": not args.denoise,
            "genes_imputed": int(adata.var["schyena_imputed"].sum()),
        }

    _run_on_file(args, work_on)


def _doublets(args: argparse.Namespace) -> None:
    def work_on(adata, work, model):
        _say(f"training the doublet detector on {work.n_obs} cells and as many artificial doublets", args)
        model.train_doublet_detector(
            expected_doublet_rate=args.expected_doublet_rate,
            max_epochs=args.max_epochs or None,
            batch_size=args.batch_size,
            accelerator=args.accelerator,
            devices=args.devices,
            progress_bar=not args.quiet,
        )
        scores = model.predict_doublets(threshold=args.threshold, progress_bar=not args.quiet)
        adata.obs["schyena_doublet_score"] = scores["doublet_score"].to_numpy()
        adata.obs["schyena_predicted_doublet"] = scores["predicted_doublet"].to_numpy()
        _say(
            f"{int(scores['predicted_doublet'].sum())} of {work.n_obs} cells called doublets "
            f"(score > {args.threshold})",
            args,
        )

    _run_on_file(args, work_on)


# ---------------------------------------------------------------------- parser
def _add_training_options(parser: argparse.ArgumentParser, max_epochs: int, what: str) -> None:
    # Pre-training needs at least one epoch; fine-tuning commands accept 0 (the model as it is).
    parser.add_argument(
        "--max-epochs",
        type=_integer(min(max_epochs, 1)),
        default=max_epochs,
        help=f"{what} (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=_integer(1), default=16, help="cells per minibatch (default: %(default)s)"
    )
    parser.add_argument("--accelerator", default="auto", help="'cpu', 'gpu' or 'auto' (default: %(default)s)")
    parser.add_argument(
        "--devices", type=_devices, default="auto", help="'auto', a number of devices or ids like '0,1'"
    )
    parser.add_argument("--seed", type=_integer(0), default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages or bars")


def _add_io(parser: argparse.ArgumentParser, model: bool) -> None:
    if model:
        parser.add_argument(
            "model",
            help=f"model folder (from 'schyena-tools pretrain' or model.save), or {BUNDLED_MODEL_NAME!r}",
        )
    parser.add_argument("input", help="h5ad file of raw counts (cells x genes)")
    parser.add_argument(
        "-o", "--output", required=True, help="h5ad file to write (the input plus the results)"
    )
    parser.add_argument("--layer", default=None, help="layer holding the raw counts (default: X)")


def build_parser() -> argparse.ArgumentParser:
    from schyena_tools import __version__
    from schyena_tools.demo import DEMO_SETTINGS

    parser = argparse.ArgumentParser(
        prog="schyena-tools",
        description="scHyena: full-length single-cell foundation model (every gene is a token). "
        "Each command reads an h5ad of raw counts and writes an h5ad with its results.",
        epilog=f"The bundled model pre-trained on mouse brain is called {BUNDLED_MODEL_NAME!r}.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    formatter = argparse.RawDescriptionHelpFormatter

    demo = commands.add_parser(
        "demo",
        help="pre-train on bundled full-length brain data, embed and plot a UMAP",
        description="Pre-train a small scHyena on the bundled Zeisel 2015 data (550 cells x 19,972 genes), "
        "embed the cells and write umap.png, an h5ad with obsm['X_schyena'] and the model.",
        epilog="example: schyena-tools demo --out schyena_demo_output",
    )
    demo.add_argument("--out", default="schyena_demo_output", help="output folder (default: %(default)s)")
    for flag, key, what in (
        ("--max-epochs", "max_epochs", "pre-training epochs"),
        ("--d-model", "d_model", "width of the network"),
        ("--n-layers", "n_layers", "Hyena blocks"),
        ("--batch-size", "batch_size", "cells per minibatch"),
    ):
        demo.add_argument(
            flag, type=_integer(1), default=DEMO_SETTINGS[key], help=f"{what} (default: %(default)s)"
        )
    demo.add_argument(
        "--n-cells",
        type=_integer(1),
        default=None,
        help="use a random subset of cells (quick check; default: all 550)",
    )
    demo.add_argument("--seed", type=_integer(0), default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(handler=_demo)

    pretrain = commands.add_parser(
        "pretrain",
        help="pre-train a new model on an h5ad (masked expression modelling) and embed its cells",
        formatter_class=formatter,
        description="Pre-train scHyena from scratch on the cells of INPUT (every gene is a token) and save "
        "the model folder. One INPUT with -o OUTPUT.h5ad: OUTPUT is INPUT plus obsm['X_schyena'] (cell "
        "embeddings). Several INPUTs (each with its own gene panel): one model for all, its vocabulary the "
        "union of their genes (or --vocabulary FILE), cells read from disk in minibatches and shuffled "
        "across files; -o FOLDER also writes each input's embedded copy there.",
        epilog="examples:\n  schyena-tools pretrain brain.h5ad -o brain_embedded.h5ad "
        "--model-out brain_model --max-epochs 20\n  schyena-tools pretrain atlas1.h5ad atlas2.h5ad "
        "atlas3.h5ad --model-out brain_model --layer counts --checkpoint-dir ckpt\n  then: "
        "schyena-tools embed brain_model other.h5ad -o other_embedded.h5ad",
    )
    pretrain.add_argument(
        "input", nargs="+", help="h5ad files of raw counts (cells x genes), any gene panels"
    )
    pretrain.add_argument(
        "-o",
        "--output",
        default=None,
        help="one input: h5ad file to write (the input plus obsm['X_schyena']); several inputs: a folder "
        "to write each input's embedded copy into (optional)",
    )
    pretrain.add_argument(
        "--layer", default=None, help="layer holding the raw counts, in every input (default: X)"
    )
    pretrain.add_argument("--model-out", required=True, help="folder to save the trained model in")
    pretrain.add_argument(
        "--vocabulary",
        default="union",
        help="the model's genes: 'union' of the inputs' genes (default), or a file of names, one per line",
    )
    pretrain.add_argument(
        "--min-datasets",
        type=_integer(1),
        default=None,
        help="with --vocabulary union: keep genes measured in at least this many inputs",
    )
    pretrain.add_argument(
        "--case-insensitive", action="store_true", help="match gene names across inputs ignoring case"
    )
    pretrain.add_argument(
        "--num-workers",
        type=_integer(0),
        default=0,
        help="processes reading the files (default: %(default)s)",
    )
    pretrain.add_argument("--checkpoint-dir", default=None, help="write a checkpoint here after every epoch")
    pretrain.add_argument(
        "--resume-from",
        default=None,
        help="continue an interrupted run from this checkpoint (or --checkpoint-dir)",
    )
    pretrain.add_argument("--overwrite", action="store_true", help="replace an existing --model-out folder")
    pretrain.add_argument("--batch-key", default=None, help="obs column of batches (registered, optional)")
    pretrain.add_argument(
        "--d-model", type=_integer(1), default=64, help="channels per gene token (default: %(default)s)"
    )
    pretrain.add_argument(
        "--n-layers", type=_integer(1), default=2, help="Hyena blocks (default: %(default)s)"
    )
    pretrain.add_argument(
        "--mask-ratio",
        type=_fraction,
        default=0.15,
        help="fraction of non-zero values hidden (default: %(default)s)",
    )
    _add_training_options(pretrain, 10, "passes over the cells")
    pretrain.set_defaults(handler=_pretrain)

    embed = commands.add_parser(
        "embed",
        help="embed cells with a trained model (any gene panel)",
        formatter_class=formatter,
        description="Embed the cells of INPUT with a trained model and write OUTPUT: INPUT plus "
        "obsm['X_schyena']. Genes are matched to the model's vocabulary by name; genes the model "
        "knows but INPUT lacks are treated as missing.",
        epilog=f"example:\n  schyena-tools embed {BUNDLED_MODEL_NAME} cortex.h5ad -o cortex_embedded.h5ad\n"
        "  then in Python: sc.pp.neighbors(adata, use_rep='X_schyena')",
    )
    _add_io(embed, model=True)
    embed.add_argument(
        "--batch-size", type=_integer(1), default=16, help="cells per minibatch (default: %(default)s)"
    )
    embed.add_argument("--quiet", action="store_true", help="no progress messages")
    embed.set_defaults(handler=_embed)

    annotate = commands.add_parser(
        "annotate",
        help="train a cell-type classifier on labelled cells and predict every cell",
        formatter_class=formatter,
        description="Start from a trained model, train a classifier (a linear probe on the model's features, "
        "then --max-epochs of fine-tuning) on the cells of INPUT whose "
        "--labels-key is set (cells labelled --unlabeled-category are not trained on), predict every "
        "cell and write OUTPUT: INPUT plus obs['schyena_prediction'], obs['schyena_confidence'] "
        "(calibrated probability of the predicted type) and obs['schyena_unknown_score'] (near 1: "
        "unlike every labelled type).",
        epilog=f"example:\n  schyena-tools annotate {BUNDLED_MODEL_NAME} query.h5ad --labels-key cell_type "
        "--unlabeled-category Unknown -o query_annotated.h5ad",
    )
    _add_io(annotate, model=True)
    annotate.add_argument("--labels-key", required=True, help="obs column of cell-type labels")
    annotate.add_argument(
        "--unlabeled-category", default="Unknown", help="label of cells to predict (default: %(default)s)"
    )
    annotate.add_argument("--model-out", default=None, help="also save the fine-tuned model in this folder")
    annotate.add_argument(
        "--unknown-threshold",
        type=_fraction,
        default=None,
        help="label 'unknown' the cells whose obs['schyena_unknown_score'] is above this (e.g. 0.95); "
        "default: every cell gets a known type",
    )
    _add_training_options(
        annotate,
        0,
        "epochs of fine-tuning after the linear probe; 0 fits the probe alone (the default recipe)",
    )
    annotate.set_defaults(handler=_annotate)

    impute = commands.add_parser(
        "impute",
        help="impute dropouts (zeros) with a trained model",
        formatter_class=formatter,
        description="Impute every zero of INPUT with a trained model (optionally fine-tuned for imputation "
        "first) and write OUTPUT: INPUT plus layers['schyena_imputed'] on the log-normalised scale "
        "(log1p of counts per 10,000). Genes outside the model's vocabulary keep their observed values; "
        "var['schyena_imputed'] marks the imputed genes.",
        epilog=f"example:\n  schyena-tools impute {BUNDLED_MODEL_NAME} cortex.h5ad -o cortex_imputed.h5ad "
        "--max-epochs 5",
    )
    _add_io(impute, model=True)
    impute.add_argument(
        "--denoise", action="store_true", help="replace every value by the model's (not only the zeros)"
    )
    _add_training_options(impute, 0, "epochs of imputation fine-tuning; 0 uses the model as it is")
    impute.set_defaults(handler=_impute)

    doublets = commands.add_parser(
        "doublets",
        help="score every cell for being a doublet (two cells captured as one)",
        formatter_class=formatter,
        description="Train a doublet detector on artificial doublets made from the cells of INPUT (summed "
        "counts of two random cells), score every cell and write OUTPUT: INPUT plus "
        "obs['schyena_doublet_score'] (probability of being a doublet at --expected-doublet-rate) and "
        "obs['schyena_predicted_doublet'] (score > --threshold).",
        epilog=f"example:\n  schyena-tools doublets {BUNDLED_MODEL_NAME} cortex.h5ad -o cortex_doublets.h5ad",
    )
    _add_io(doublets, model=True)
    doublets.add_argument(
        "--expected-doublet-rate",
        type=_fraction,
        default=0.05,
        help="fraction of doublets expected in the data (default: %(default)s)",
    )
    doublets.add_argument(
        "--threshold",
        type=_fraction,
        default=0.5,
        help="score above which a cell is called a doublet (default: %(default)s)",
    )
    _add_training_options(
        doublets, 0, "epochs of fine-tuning after the linear probe; 0 fits the probe alone (the default)"
    )
    doublets.set_defaults(handler=_doublets)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``schyena-tools`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (UsageError, ValueError, KeyError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"schyena-tools {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
