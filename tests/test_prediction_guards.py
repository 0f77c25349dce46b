"""Guards of prediction and of queries with another gene panel."""

import pytest

import schyena_tools as st

from ._helpers import registered, unregistered_copy


def test_prediction_guards(classifier_once):
    model = classifier_once
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.predict(batch_size=0)
    # A label the reference never saw: an error naming it, not a silent re-coding.
    query = unregistered_copy(model.adata)
    query.obs["cell_type"] = query.obs["cell_type"].cat.add_categories(["alien"])
    query.obs.loc[query.obs_names[:3], "cell_type"] = "alien"
    with pytest.raises(ValueError, match="alien"):
        model.predict(query)


def test_query_without_shared_genes_is_an_error(classifier_once):
    model = classifier_once
    query = unregistered_copy(model.adata)
    query.var_names = [f"unrelated{i}" for i in range(query.n_vars)]
    with pytest.raises(ValueError, match="none of the query's 200 genes .* is in the reference vocabulary"):
        st.SCHyena.load_query_data(query, model)
    assert not registered(query)
