"""Pooling of the bundled model's final token states, compared on the embedding tuning sets.

The cell embedding is the expression-weighted mean of the final gene-token states. Does
another pooling of the *same* states close the gap to PCA of HVGs? Variants, all from the
bundled model read through ``load_query_data`` at full length (no training): ``current`` (the
default), ``z`` (weights = the gene's standardised expression over the data set's cells,
clipped at 10, signed), ``hvg`` / ``hvg_z`` (the same restricted to the set's 2,000 HVGs),
``mean`` (plain mean over measured genes); each scored by 10-NN label agreement as is and with
every dimension standardised, beside PCA of 2,000 HVGs. Tuning sets of
``embedding_recipe.py`` (Campbell 2017, La Manno 2016); labels score only.

Run ``python benchmarks/embedding_pooling.py`` (about 5 minutes on 2 CPU cores); it writes
``docs/benchmarks/embedding_pooling.csv``.
"""

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _embedding_scores as es  # noqa: E402
import downstream  # noqa: E402

import schyena_tools as st  # noqa: E402
from schyena_tools.demo import embedding_label_agreement  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
#: Tuning sets: (file under downstream.DATA, label column).
SETS = {
    "Campbell 2017": ("campbell2017_sctk/campbell2017_sctk.h5ad", "clust_all"),
    "La Manno 2016": ("lamanno2016_DA_mapscvi/lamanno_DA_243x18219_counts.h5ad", "Cell_type"),
}
BATCH = 16


def pooled_variants(model, data) -> dict[str, np.ndarray]:
    """Every pooling of the model's final token states of ``data``'s cells."""
    module = model.module.eval()
    counts = torch.tensor(data.X.toarray(), dtype=torch.float32)
    with torch.no_grad():
        values, missing = module.normalize_and_align(counts)
    measured = torch.ones(values.shape[1], dtype=torch.bool) if missing is None else ~missing
    mean, std = values.mean(0), values.std(0)
    varies = measured & (std > 0)
    hvg = sc.pp.highly_variable_genes(data, n_top_genes=2000, flavor="seurat_v3", inplace=False)
    hvg_columns = torch.tensor(hvg["highly_variable"].to_numpy()[None, :], dtype=torch.float32)
    in_hvg = module.align_to_vocabulary(hvg_columns)[0][0] > 0
    pooled = {name: [] for name in ("current", "z", "hvg", "hvg_z", "mean")}
    with torch.no_grad():
        for start in range(0, len(values), BATCH):
            batch = values[start : start + BATCH]
            hidden = module.encoder(batch, missing=missing).hidden

            def pool(weights, hidden=hidden):
                total = weights.abs().sum(1, keepdim=True).clamp_min(1e-12)
                return (torch.einsum("bl,bld->bd", weights, hidden) / total).numpy()

            z = ((batch - mean) / std.clamp_min(1e-6)).clamp(-10, 10) * varies
            pooled["current"].append(pool(batch.clamp_min(0) * measured))
            pooled["z"].append(pool(z))
            pooled["hvg"].append(pool(batch.clamp_min(0) * in_hvg))
            pooled["hvg_z"].append(pool(z * in_hvg))
            pooled["mean"].append(pool(measured.float().expand_as(batch)))
    return {name: np.concatenate(parts) for name, parts in pooled.items()}


def main():
    reference = st.pretrained.load_zeisel_brain_model()
    rows = []
    for name, (path, label) in SETS.items():
        data = downstream.read_target(path, label)
        labels = data.obs["label"].to_numpy()
        query = data.copy()
        st.SCHyena.setup_anndata(query)
        started = time.perf_counter()
        embeddings = pooled_variants(st.SCHyena.load_query_data(query, reference), data)
        print(name, f"encoded in {time.perf_counter() - started:.0f} s", flush=True)
        embeddings["PCA of 2,000 HVG"] = es.pca_of_hvgs(data)
        for pooling, embedding in embeddings.items():
            standardised = (embedding - embedding.mean(0)) / (embedding.std(0) + 1e-8)
            rows.append(
                dict(
                    dataset=name,
                    pooling=pooling,
                    knn_agreement=embedding_label_agreement(embedding, labels),
                    knn_agreement_standardised_dims=embedding_label_agreement(standardised, labels),
                )
            )
            print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(downstream.DOCS / "embedding_pooling.csv", index=False)


if __name__ == "__main__":
    main()
