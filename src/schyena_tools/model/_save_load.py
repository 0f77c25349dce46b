"""Saving and loading: the one owner of the model-folder format.

A model folder holds scvi-tools' ``model.pt`` (weights, the registration, the saved attributes,
``var_names``). :meth:`SaveLoadMixin.save` writes it atomically; :func:`read_saved_model` is the
single place that reads and checks one, used by :meth:`SaveLoadMixin.load`,
:func:`schyena_tools.pretrained.load_model` and the command line.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ._vocabulary import gene_mismatch

#: Version of the saved-model layout (attributes and state-dict keys) that :meth:`SCHyena.save`
#: writes. Bump it when a change makes older files unreadable, and say so in the CHANGELOG.
SAVE_FORMAT_VERSION = 2
#: Oldest saved-model layout this version of schyena-tools still reads.
MIN_SUPPORTED_SAVE_FORMAT = 2
#: File scvi-tools' save writes the weights and attributes to.
MODEL_FILE_NAME = "model.pt"


#: ``uns`` key marking the one-cell stand-in a model is registered on when it has no data of its own.
STANDIN_KEY = "_schyena_standin"


def standin_anndata(var_names: pd.Index, registry: dict | None = None) -> AnnData:
    """A one-cell AnnData that satisfies a registration (genes, layer, obs keys).

    scvi-tools models are registered on an AnnData; this stands in for the training data when
    there is none to hand: a model loaded from its folder alone, or one pre-trained on a corpus
    of several datasets (:meth:`SCHyena.from_corpus`). Its single cell is never used, and
    ``uns[STANDIN_KEY]`` lets the model refuse to treat it as data.
    """
    registry = registry or {}
    setup = registry.get("setup_args", {})
    fields = registry.get("field_registries", {})
    values = np.ones((1, len(var_names)), dtype=np.float32)
    obs = pd.DataFrame(index=["placeholder_cell"])
    for key, field in (("labels_key", "labels"), ("batch_key", "batch")):
        column = setup.get(key)
        if column is None:
            continue
        mapping = fields.get(field, {}).get("state_registry", {}).get("categorical_mapping")
        categories = [str(c) for c in mapping]
        obs[column] = pd.Categorical([categories[0]], categories=categories)
    placeholder = AnnData(X=values, obs=obs, var=pd.DataFrame(index=pd.Index(var_names, dtype=str)))
    if setup.get("layer") is not None:
        placeholder.layers[setup["layer"]] = values
    placeholder.uns[STANDIN_KEY] = True
    return placeholder


def safe_globals() -> list:
    """What a model file may hold besides tensors and plain containers, and nothing else.

    scvi-tools' ``model.pt`` carries, next to the weights, the registry and the training history:
    numpy arrays and pandas frames and indexes. These are the only classes and functions the
    unpickler may call; a file that names anything else (``os.system``, ``builtins.eval``, a
    class of some package...) is refused before it can run (PyTorch's ``weights_only=True``).
    """
    import numpy as np
    import pandas as pd
    from pandas._libs.internals import _unpickle_block
    from pandas.core.indexes.base import _new_Index
    from pandas.core.internals.managers import BlockManager

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    dtype_classes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGOUSV"]
    return [
        _reconstruct,
        np.ndarray,
        np.dtype,
        *dtype_classes,
        pd.DataFrame,
        pd.Index,
        _new_Index,
        BlockManager,
        _unpickle_block,
        bytes,
        dict,
        slice,
        collections.defaultdict,
    ]


@contextlib.contextmanager
def weights_only_loading():
    """Every ``torch.load`` inside, scvi-tools' own included, reads data only (``weights_only``).

    scvi-tools' loader calls ``torch.load(..., weights_only=False)``; PyTorch's
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` overrides that for the duration, with :func:`safe_globals`
    as the only classes allowed besides tensors.
    """
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(safe_globals()):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def load_data_only(path: str | os.PathLike, **kwargs):
    """``torch.load`` of a model or checkpoint file that may hold data, never code.

    Raises
    ------
    ValueError
        The file asks to run or build something outside :func:`safe_globals` (a crafted or
        foreign file): it is refused, and nothing in it has run.

    """
    try:
        with weights_only_loading():
            return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as error:
        if "defaultdict" in str(error):
            raise ValueError(
                f"{str(path)!r} was written by schyena-tools 0.1.0 in a layout that data-only "
                f"loading cannot read (scvi-tools' registry as a defaultdict). If you made or "
                f"trust this file, convert it once with "
                f"schyena_tools.model.convert_trusted_model_file({str(Path(path).parent)!r}); "
                f"nothing in it has run."
            ) from error
        raise ValueError(
            f"{str(path)!r} was refused: besides weights it asks to run or build something that a "
            f"model file never holds, so it may be crafted to execute code on load. Nothing in it "
            f"has run. Use only model files you trust; this one cannot be loaded. ({error})"
        ) from error


def package_version() -> str:
    """The installed schyena-tools version (written into every saved model)."""
    from schyena_tools import __version__

    return __version__


def read_saved_model(
    dir_path: str | os.PathLike, prefix: str | None = None, model_name: str = "SCHyena"
) -> dict:
    """Read and check a model folder written by :meth:`SCHyena.save`; the one checker of that format.

    Returns the saved payload (``attr_dict``, ``var_names``, ``model_state_dict``) without
    building a model. Used by :meth:`SCHyena.load`, :func:`schyena_tools.pretrained.load_model`
    and the command line.

    Raises
    ------
    FileNotFoundError
        The folder or its ``model.pt`` is missing.
    ValueError
        ``model.pt`` is unreadable (truncated, corrupted), holds another model class, or was
        written in a save format this version of schyena-tools does not read.

    """
    folder = Path(dir_path)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(
            f"no saved model at {str(folder)!r}: it {what}. Pass the folder given to model.save()."
        )
    model_file = folder / f"{prefix or ''}{MODEL_FILE_NAME}"
    if not model_file.is_file():
        present = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        raise FileNotFoundError(
            f"{str(model_file)!r} is missing (the folder holds {present[:10]}). If the model was "
            f"saved with a prefix, pass prefix=...; otherwise save the model again."
        )
    try:
        saved = load_data_only(model_file, mmap=True)
    except ValueError:
        raise
    except Exception as error:  # torch raises several types for a damaged file
        raise ValueError(
            f"{str(model_file)!r} cannot be read ({type(error).__name__}: {error}). The file is "
            f"truncated or corrupted (an interrupted copy?): restore it or save the model again."
        ) from error
    attributes = saved.get("attr_dict") if isinstance(saved, dict) else None
    if not isinstance(attributes, dict) or "registry_" not in attributes:
        raise ValueError(f"{str(model_file)!r} is not a model saved by scvi-tools or schyena-tools.")
    saved_name = attributes["registry_"].get("model_name")
    if saved_name is not None and saved_name != model_name:
        raise ValueError(
            f"{str(model_file)!r} holds a {saved_name} model, not a {model_name}; load it with "
            f"{saved_name}.load()."
        )
    save_format = attributes.get("save_format_version_")
    written_by = attributes.get("schyena_tools_version_", "an unknown version")
    readable = (
        f"schyena-tools {package_version()} reads save formats "
        f"{MIN_SUPPORTED_SAVE_FORMAT} to {SAVE_FORMAT_VERSION}"
    )
    if save_format is None:
        raise ValueError(
            f"{str(model_file)!r} has no save-format version, so it was not written by "
            f"schyena-tools' SCHyena.save; {readable}."
        )
    if save_format > SAVE_FORMAT_VERSION:
        raise ValueError(
            f"{str(model_file)!r} was written by schyena-tools {written_by} in save format "
            f"{save_format}, newer than this installation: {readable}. Upgrade with "
            f"`pip install -U schyena-tools`."
        )
    if save_format < MIN_SUPPORTED_SAVE_FORMAT:
        raise ValueError(
            f"{str(model_file)!r} was written by schyena-tools {written_by} in save format "
            f"{save_format}, which is no longer read: {readable}. Load it with schyena-tools "
            f"{written_by} and retrain, or install that version."
        )
    return saved


def _plain(value):
    """``value`` with every ``defaultdict`` inside dicts and lists made a plain ``dict``."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def convert_trusted_model_file(dir_path: str | os.PathLike, prefix: str | None = None) -> None:
    """Rewrite a model folder saved by schyena-tools 0.1.0 so that data-only loading reads it.

    Those files hold scvi-tools' registry as a ``collections.defaultdict``, which PyTorch's
    data-only unpickler cannot rebuild, so :meth:`SCHyena.load` refuses them. This reads the
    file with full unpickling, **which runs any code a crafted file holds: call it only on
    files you made yourself or otherwise trust**, and writes it back (atomically) with plain
    dicts. Weights and settings are unchanged.
    """
    model_file = Path(dir_path) / f"{prefix or ''}{MODEL_FILE_NAME}"
    if not model_file.is_file():
        raise FileNotFoundError(f"{str(model_file)!r} does not exist.")
    saved = torch.load(model_file, map_location="cpu", weights_only=False)
    staging = model_file.with_name(f".{model_file.name}.converting-{os.getpid()}")
    torch.save(_plain(saved), staging)
    os.replace(staging, model_file)


class SaveLoadMixin:
    """``save``, ``load`` and ``check_saved_model`` of :class:`~schyena_tools.SCHyena`."""

    def _get_user_attributes(self):
        """The saved attributes, with scvi-tools' defaultdicts as plain dicts (data-only loading)."""
        return [(name, _plain(value)) for name, value in super()._get_user_attributes()]

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs,
    ):
        """Save the model (weights, settings, gene vocabulary, history) to a folder, atomically.

        Everything is first written to a temporary folder next to ``dir_path`` and moved into
        place only once complete, so an interrupted save (error, full disk, killed process)
        never leaves a half-written model, and with ``overwrite=True`` the model already in
        ``dir_path`` stays intact until the new files replace it (each by an atomic rename,
        ``model.pt`` last). Other files in ``dir_path`` are never touched.

        The saved attributes include the schyena-tools version and a save-format version, which
        :meth:`load` checks.

        Parameters
        ----------
        dir_path
            Folder to save into; created if absent.
        prefix
            Prefix of the saved file names (several models in one folder).
        overwrite
            Replace a model saved in ``dir_path`` before. Without it an existing ``dir_path`` is
            an error.
        save_anndata
            Also save the registered AnnData (``adata.h5ad``).
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.save`.

        """
        target = Path(dir_path)
        if target.exists() and not target.is_dir():
            raise ValueError(f"dir_path={str(target)!r} is a file, not a folder; choose another dir_path.")
        if target.exists() and not overwrite:
            raise ValueError(
                f"{str(target)!r} already exists. Pass overwrite=True to replace the model saved there "
                f"(it is kept intact until the new one is completely written), or choose another dir_path."
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        # In the same parent folder, so the final moves are renames on one file system.
        staging = target.parent / f".{target.name}.saving-{os.getpid()}-{id(self):x}"
        shutil.rmtree(staging, ignore_errors=True)
        os.mkdir(staging)
        try:
            super().save(str(staging), prefix=prefix, overwrite=True, save_anndata=save_anndata, **kwargs)
            if not target.exists():
                os.replace(staging, target)
            else:
                model_file = f"{prefix or ''}{MODEL_FILE_NAME}"
                for staged in sorted(staging.iterdir(), key=lambda f: f.name == model_file):
                    os.replace(staged, target / staged.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        backup_url: str | None = None,
        **kwargs,
    ):
        """Load a model saved by :meth:`save`, after checking what is on disk.

        A missing folder or ``model.pt``, a truncated or corrupted file, a model of another
        class, and a file written by an incompatible version of schyena-tools each raise an
        error that says which, before anything is built; so does an ``adata`` whose genes are
        not the saved model's, in its order (use :meth:`load_query_data` for another gene
        panel). A model pre-trained on a corpus of datasets (:meth:`from_corpus`) has no single
        gene panel: it is mapped onto ``adata`` by gene name, as
        :func:`schyena_tools.pretrained.load_model` does. Other arguments as in
        :meth:`scvi.model.base.BaseModelClass.load`; ``adata`` is checked like in
        :meth:`setup_anndata`.
        """
        if backup_url is None:
            saved = read_saved_model(dir_path, prefix, model_name=cls.__name__)
            if adata is not None:  # the genes are checked now, not at the model's first use
                problem = gene_mismatch(saved["var_names"], adata.var_names)
                if problem and "corpus_summary_" in saved["attr_dict"] and prefix is None:
                    # Pre-trained on a corpus: no one gene panel to match, genes go by name.
                    from schyena_tools.pretrained import load_model

                    return load_model(dir_path, adata, accelerator=accelerator)
                if problem:
                    raise ValueError(f"cannot load {str(dir_path)!r} onto this AnnData: {problem}")
        # scvi-tools logs "File .../model.pt already downloaded" for every local load: not news.
        download_logger = logging.getLogger("scvi.data._download")
        level = download_logger.level
        download_logger.setLevel(max(level, logging.WARNING))
        try:
            with weights_only_loading():
                return super().load(
                    str(dir_path),
                    adata=adata,
                    accelerator=accelerator,
                    device=device,
                    prefix=prefix,
                    backup_url=backup_url,
                    **kwargs,
                )
        finally:
            download_logger.setLevel(level)

    @classmethod
    def check_saved_model(cls, dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
        """Check a saved model without building it; return its saved attributes.

        See :func:`read_saved_model` for what is checked and the errors raised.
        """
        return read_saved_model(dir_path, prefix, model_name=cls.__name__)["attr_dict"]
