"""Sharing a trained model the scverse way: a :class:`scvi.hub.HubModel` folder with a model card.

scvi-tools shares models through ``scvi.hub``: a folder holding ``model.pt``, the required
metadata (``_scvi_required_metadata.json``: scvi-tools and anndata versions, the class name and
the module to import it from) and a model card (``README.md``). :meth:`HubMixin.save_hub_folder`
writes one for an SCHyena, with ``model_parent_module="schyena_tools"`` so that
``HubModel(folder).load_model(adata)`` finds the class; pushing the folder to the Hugging Face
Hub (``hub_model.push_to_huggingface_hub(...)``) needs the network and an account, everything
else works offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The module ``scvi.hub`` imports the model class from.
PARENT_MODULE = "schyena_tools"

_DESCRIPTION = (
    "scHyena (Oh et al., 2023, arXiv:2310.02713) for full-length single-cell RNA-seq: every gene "
    "of the vocabulary is one token, mixed by bidirectional Hyena operators. Trained with "
    "schyena-tools; load it with `scvi.hub.HubModel(folder).load_model(adata)` or, for data with "
    "another gene panel, `schyena_tools.pretrained.load_model(folder, adata)`."
)
_REFERENCES = (
    "Oh, Choi, Jung & Ye (2023). scHyena: Foundation Model for Full-Length Single-Cell RNA-Seq "
    "Analysis in Brain. arXiv:2310.02713."
)


def _scvi_hub():
    try:
        from scvi import hub
    except ImportError as error:  # scvi.hub needs huggingface_hub and mudata
        raise ImportError(
            f"sharing through scvi.hub needs the optional packages huggingface_hub and mudata "
            f"({error}); install them with pip install 'schyena-tools[hub]'."
        ) from error
    return hub


class HubMixin:
    """``save_hub_folder`` of :class:`~schyena_tools.SCHyena`."""

    def save_hub_folder(
        self,
        dir_path: str | os.PathLike,
        license_info: str = "mit",
        description: str | None = None,
        training_data: str | None = None,
        metrics: Mapping[str, object] | None = None,
        references: str | None = None,
        tissues: Sequence[str] = ("brain",),
        training_code_url: str | None = None,
        save_anndata: bool = False,
        overwrite: bool = False,
    ):
        """Save the model as a :class:`scvi.hub.HubModel` folder with a model card.

        Parameters
        ----------
        dir_path
            Folder to write (the model files, ``_scvi_required_metadata.json``, ``README.md``).
        license_info
            Licence of the model (a Hugging Face licence identifier, e.g. ``"mit"``, ``"cc-by-4.0"``).
            The model's licence must allow what the training data's licences allow.
        description
            What the model is, for the card; a description of scHyena by default.
        training_data
            What the model was trained on (data sets, cells, citation), added to the card.
        metrics
            Figures to report on the card (e.g. ``{"10-NN agreement, major class": 0.92}``),
            written as ``metrics.json`` and shown in the card.
        references
            References for the card; scHyena's paper by default.
        tissues
            Tissues of the training data (a tag on the card).
        training_code_url
            Link to the code that trained the model.
        save_anndata
            Also save the registered AnnData (``adata.h5ad``), so that ``load_model()`` needs no
            ``adata`` argument. Mind the data's licence before sharing it.
        overwrite
            Replace a model saved in ``dir_path`` before.

        Returns
        -------
        The :class:`scvi.hub.HubModel` of the folder.
        ``hub_model.push_to_huggingface_hub(repo_name, repo_token)`` shares it (network
        needed); ``scvi.hub.HubModel(dir_path).load_model(adata)`` loads it back, from this
        folder or from a downloaded one.

        """
        import anndata
        import scvi

        hub = _scvi_hub()
        folder = Path(dir_path)
        self.save(folder, overwrite=overwrite, save_anndata=save_anndata)
        if metrics:
            (folder / "metrics.json").write_text(json.dumps(dict(metrics), indent=1, default=float))
        metadata = hub.HubMetadata(
            scvi_version=scvi.__version__,
            anndata_version=anndata.__version__,
            model_cls_name=type(self).__name__,
            model_parent_module=PARENT_MODULE,
        )
        card = self._model_card(
            license_info, description, training_data, metrics, references, tissues, training_code_url
        )
        hub_model = hub.HubModel(str(folder), metadata=metadata, model_card=card)
        hub_model.save(overwrite=True)
        return hub_model

    def _model_card(self, license_info, description, training_data, metrics, references, tissues, code_url):
        """The card (``README.md``) in the layout of scvi-tools' hub cards, for an SCHyena.

        scvi-tools' ``HubModelCardHelper`` writes cards for its own classes only, so the card is
        built here: the Hugging Face header (licence, ``library_name: scvi-tools``, the tags
        scvi.hub uses), then what the model is, its training data, its figures, its settings and
        how to load it.
        """
        import anndata
        import scvi
        from huggingface_hub import ModelCard, ModelCardData

        name = type(self).__name__
        tags = [
            f"model_cls_name:{name}",
            f"scvi_version:{scvi.__version__}",
            f"anndata_version:{anndata.__version__}",
            "modality:rna",
            *(f"tissue:{tissue}" for tissue in tissues),
            f"annotated:{self.module.classifier is not None}",
        ]
        header = ModelCardData(license=license_info, library_name="scvi-tools", tags=tags).to_yaml()
        figures = "\n".join(f"| {key} | {value} |" for key, value in (metrics or {}).items())
        settings = {
            k: v for k, v in self.init_params_.get("non_kwargs", {}).items() if k != "gene_vocabulary"
        }
        setup_args = self.adata_manager.registry.get("setup_args", {})
        sections = [
            f"---\n{header}\n---",
            f"# {name} (schyena-tools)",
            description or _DESCRIPTION,
            f"## Training data\n\n{training_data or 'Not given by the uploader.'}",
            "## Figures\n\n| metric | value |\n| --- | --- |\n" + figures
            if figures
            else "## Figures\n\nNone given.",
            f"## Model\n\n{len(self.gene_vocabulary):,} genes per cell as tokens; settings:\n\n"
            f"```json\n{json.dumps(settings, indent=1, default=str)}\n```\n\n"
            f"setup_anndata arguments:\n\n```json\n{json.dumps(setup_args, indent=1, default=str)}\n```",
            "## Load it\n\n```python\nimport scvi\nimport schyena_tools as st\n\n"
            "hub_model = scvi.hub.HubModel(folder)  # or scvi.hub.HubModel.pull_from_huggingface_hub(repo)\n"
            "hub_model.load_model(adata)           # adata with the model's genes\n"
            "model = st.pretrained.load_model(folder, adata)  # any gene panel\n```",
            f"## Training code\n\n{code_url or 'Not given by the uploader.'}",
            f"## References\n\n{references or _REFERENCES}",
        ]
        return ModelCard("\n\n".join(sections) + "\n")
