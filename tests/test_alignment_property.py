"""Property test of gene-vocabulary alignment: any vocabulary, any data panel.

A model reads data columns by gene name: ``gene_index_for`` maps each vocabulary gene to its
column in the data (or -1), and ``align_to_vocabulary`` gathers the columns.
For random vocabularies and random panels (subsets, supersets, permutations, disjoint sets), the
aligned column of every vocabulary gene must be the data column of the same name, and the
missing positions exactly the vocabulary genes the data lacks.
"""

import anndata as ad
import numpy as np
import pandas as pd
import torch
from hypothesis import given, settings
from hypothesis import strategies as strategies

from schyena_tools.model import gene_index_for
from schyena_tools.module import align_to_vocabulary

GENE_POOL = [f"gene{i}" for i in range(40)]


@strategies.composite
def vocabulary_and_panel(draw):
    """A vocabulary and a data panel drawn from one pool of names, each in random order."""
    vocabulary = draw(
        strategies.lists(strategies.sampled_from(GENE_POOL), min_size=1, max_size=25, unique=True)
    )
    kind = draw(strategies.sampled_from(["subset", "superset", "permutation", "any"]))
    if kind == "subset":
        panel = draw(strategies.lists(strategies.sampled_from(vocabulary), min_size=1, unique=True))
    elif kind == "superset":
        extra = draw(strategies.lists(strategies.sampled_from(GENE_POOL), max_size=15, unique=True))
        panel = list(dict.fromkeys(vocabulary + extra))
        panel = draw(strategies.permutations(panel))
    elif kind == "permutation":
        panel = list(draw(strategies.permutations(vocabulary)))
    else:
        panel = draw(
            strategies.lists(strategies.sampled_from(GENE_POOL), min_size=1, max_size=25, unique=True)
        )
    n_cells = draw(strategies.integers(1, 4))
    return vocabulary, list(panel), n_cells


@settings(max_examples=200, deadline=None)
@given(vocabulary_and_panel())
def test_aligned_columns_are_the_data_columns_of_the_same_gene(case):
    vocabulary, panel, n_cells = case
    # Distinct values everywhere, so that a wrong column cannot match by accident.
    counts = torch.arange(1, n_cells * len(panel) + 1, dtype=torch.float32).reshape(n_cells, len(panel))
    adata = ad.AnnData(counts.numpy(), var=pd.DataFrame(index=panel))
    gene_index = gene_index_for(pd.Index(vocabulary), adata.var_names)
    aligned, missing = align_to_vocabulary(
        counts, None if gene_index is None else torch.from_numpy(gene_index)
    )

    assert aligned.shape == (n_cells, len(vocabulary))
    expected_missing = np.array([gene not in panel for gene in vocabulary])
    if missing is None:  # identity: the panel is the vocabulary, in order
        assert panel == vocabulary
        expected_missing_positions = np.zeros(len(vocabulary), dtype=bool)
    else:
        expected_missing_positions = missing.numpy()
    np.testing.assert_array_equal(expected_missing_positions, expected_missing)
    for position, gene in enumerate(vocabulary):
        if gene in panel:
            torch.testing.assert_close(aligned[:, position], counts[:, panel.index(gene)], rtol=0, atol=0)
        else:
            assert (aligned[:, position] == 0).all()
