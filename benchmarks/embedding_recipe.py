"""Choose the data-dependent start of pre-training by zero-shot embedding quality, on tuning sets.

The README demo's embedding (Zeisel 550, all 19,972 genes) trails PCA of 2,000 HVGs in 10-NN
label agreement. Measured at stop 8: the untrained network's agreement rises with the scale of
the principal-axis loadings added to the gene embeddings (``SCHyenaEncoder.add_principal_axes``,
scale 10 by default). This script compares scales on two *tuning* sets that are neither the
demo's cells nor its tissue (Campbell 2017 hypothalamus, 200 x 26,774, ``clust_all``; La Manno
2016 midbrain, 243 x 18,219, ``Cell_type``; both MIT), untrained and after the demo's 2 epochs
of pre-training (d_model 32, 2 blocks, minibatches of 8), beside PCA of 2,000 HVGs. Labels are
used for scoring only.

Run ``python benchmarks/embedding_recipe.py`` (about 20 minutes on 2 CPU cores); it writes
``docs/benchmarks/embedding_recipe.csv``.
"""

import functools
import logging
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import downstream  # noqa: E402

SCALES = (10.0, 30.0, 100.0)
SETS = {
    "Campbell 2017": ("campbell2017_sctk/campbell2017_sctk.h5ad", "clust_all"),
    "La Manno 2016": ("lamanno2016_DA_mapscvi/lamanno_DA_243x18219_counts.h5ad", "Cell_type"),
}
OUT = downstream.DOCS / "embedding_recipe.csv"
log = logging.getLogger("embedding_recipe")


def pca_embedding(adata, n_hvg=2000, n_pcs=50):
    import scanpy as sc

    data = adata.copy()
    sc.pp.normalize_total(data, target_sum=1e4)
    sc.pp.log1p(data)
    sc.pp.highly_variable_genes(data, n_top_genes=min(n_hvg, data.n_vars))
    data = data[:, data.var["highly_variable"]].copy()
    sc.pp.scale(data, max_value=10)
    sc.tl.pca(data, n_comps=min(n_pcs, data.n_obs - 1))
    return data.obsm["X_pca"]


def main():
    import scvi

    import schyena_tools as st
    from schyena_tools.demo import embedding_label_agreement
    from schyena_tools.nn import SCHyenaEncoder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore")
    original = SCHyenaEncoder.add_principal_axes
    rows = []
    for name, (path, label) in SETS.items():
        adata = downstream.read(path, label)
        labels = adata.obs["label"].to_numpy()
        rows.append(
            dict(
                dataset=name,
                method="PCA of 2,000 HVG",
                scale=None,
                epochs=None,
                knn_agreement=embedding_label_agreement(pca_embedding(adata), labels),
            )
        )
        log.info(rows[-1])
        for scale in SCALES:
            SCHyenaEncoder.add_principal_axes = functools.partialmethod(original, scale=scale)
            try:
                scvi.settings.seed = 0
                data = adata.copy()
                st.SCHyena.setup_anndata(data)
                model = st.SCHyena(data, d_model=32, n_layers=2)
                model._initialize_from_data()  # what train() does first
                model.is_trained_ = True  # embed the untrained network without the warning
                untrained = model.get_latent_representation(batch_size=8, progress_bar=False)
                model.is_trained_ = False
                start = time.perf_counter()
                scvi.settings.seed = 0
                fresh = st.SCHyena(data, d_model=32, n_layers=2)
                fresh.train(max_epochs=2, batch_size=8, enable_progress_bar=False)
                seconds = time.perf_counter() - start
                trained = fresh.get_latent_representation(batch_size=8, progress_bar=False)
            finally:
                SCHyenaEncoder.add_principal_axes = original
            for epochs, embedding in ((0, untrained), (2, trained)):
                rows.append(
                    dict(
                        dataset=name,
                        method="scHyena",
                        scale=scale,
                        epochs=epochs,
                        knn_agreement=embedding_label_agreement(embedding, labels),
                        seconds=round(seconds, 1) if epochs else None,
                    )
                )
                log.info(rows[-1])
            pd.DataFrame(rows).to_csv(OUT, index=False)
    print(pd.DataFrame(rows).to_string())


if __name__ == "__main__":
    main()
