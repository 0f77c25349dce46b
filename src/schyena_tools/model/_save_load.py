"""Saving and loading: the one owner of the model-folder format.

A model folder holds scvi-tools' ``model.pt`` (weights, the registration, the saved attributes,
``var_names``). :meth:`SaveLoadMixin.save` writes it atomically; :func:`read_saved_model` is the
single place that reads and checks one, used by :meth:`SaveLoadMixin.load`,
:func:`schyena_tools.pretrained.load_model` and the command line.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

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
        saved = torch.load(model_file, map_location="cpu", weights_only=False, mmap=True)
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


class SaveLoadMixin:
    """``save``, ``load`` and ``check_saved_model`` of :class:`~schyena_tools.SCHyena`."""

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
        panel). Other arguments as in
        :meth:`scvi.model.base.BaseModelClass.load`; ``adata`` is checked like in
        :meth:`setup_anndata`.
        """
        if backup_url is None:
            saved = read_saved_model(dir_path, prefix, model_name=cls.__name__)
            if adata is not None:  # the genes are checked now, not at the model's first use
                problem = gene_mismatch(saved["var_names"], adata.var_names)
                if problem:
                    raise ValueError(f"cannot load {str(dir_path)!r} onto this AnnData: {problem}")
        # scvi-tools logs "File .../model.pt already downloaded" for every local load: not news.
        download_logger = logging.getLogger("scvi.data._download")
        level = download_logger.level
        download_logger.setLevel(max(level, logging.WARNING))
        try:
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
