"""Pre-training on a corpus: several h5ad files with their own gene panels, read from disk."""

import textwrap
import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from lightning.pytorch.callbacks import Callback

import schyena_tools as st
from schyena_tools import cli
from schyena_tools.dataloaders import (
    BlockShuffleSampler,
    CorpusDataModule,
    corpus_vocabulary,
    cut_into_blocks,
)

from ._helpers import TINY, run_script


# ---------------------------------------------------------------- data on disk
@pytest.fixture(scope="module")
def _zeisel():
    return st.datasets.zeisel_brain()


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _write(adata, path, layer=None, csc=False):
    adata = adata.copy()
    counts = sp.csc_matrix(adata.X) if csc else sp.csr_matrix(adata.X)
    if layer is None:
        adata.X = counts
    else:
        adata.layers[layer] = counts
        adata.X = sp.csr_matrix(adata.shape, dtype=np.float32)
    adata.write_h5ad(path)
    return path


@pytest.fixture
def panels(_zeisel, tmp_path):
    """Three real datasets with overlapping gene panels: two files (one with counts in a layer,
    genes in another order) and one in-memory AnnData."""
    a = _write(_zeisel[:40, :300], tmp_path / "a.h5ad")
    b_data = _zeisel[40:76, 100:400]
    b_data = b_data[:, b_data.var_names[::-1]]  # another gene order
    b = _write(b_data, tmp_path / "b.h5ad", layer="counts")
    c = _zeisel[76:100, 50:350].copy()
    return a, b, c


def _corpus(panels, **kwargs):
    a, b, c = panels
    defaults = dict(layer=[None, "counts", None], batch_size=8, block_size=4)
    return CorpusDataModule([a, b, c], **{**defaults, **kwargs})


# ---------------------------------------------------------------- vocabulary
def test_vocabulary_union_min_datasets_case_and_list():
    one, two, three = pd.Index(["g1", "g2", "g3"]), pd.Index(["G3", "g4", "g2"]), pd.Index(["g2", "g5"])
    assert corpus_vocabulary([one, two, three]).tolist() == ["g1", "g2", "g3", "G3", "g4", "g5"]
    assert corpus_vocabulary([one, two, three], case_insensitive=True).tolist() == [
        "g1",
        "g2",
        "g3",
        "g4",
        "g5",
    ]
    assert corpus_vocabulary([one, two, three], min_datasets=2, case_insensitive=True).tolist() == [
        "g2",
        "g3",
    ]
    assert corpus_vocabulary([one, two], vocabulary=["g4", "g1"]).tolist() == ["g4", "g1"]
    with pytest.raises(ValueError, match="only 1 genes are measured in at least 3"):
        corpus_vocabulary([one, two, three], min_datasets=3)
    with pytest.raises(ValueError, match="min_datasets must be"):
        corpus_vocabulary([one, two], min_datasets=3)
    with pytest.raises(ValueError, match="names genes twice"):
        corpus_vocabulary([one], vocabulary=["g1", "g1"])


def test_each_dataset_is_checked_up_front_and_named(_zeisel, tmp_path):
    good = _write(_zeisel[:20, :50], tmp_path / "good.h5ad")
    cases = {}
    cases["missing.h5ad"] = (tmp_path / "missing.h5ad", "does not exist")
    (tmp_path / "text.h5ad").write_text("not hdf5")
    cases["text.h5ad"] = (tmp_path / "text.h5ad", "cannot be read as an h5ad file")
    duplicated = _zeisel[:20, :50].copy()
    duplicated.var_names = ["same"] * 2 + list(duplicated.var_names[2:])
    cases["duplicated.h5ad"] = (_write(duplicated, tmp_path / "duplicated.h5ad"), "more than once")
    scaled = _zeisel[:20, :50].copy()
    x = np.log1p(_dense(scaled.X))
    scaled.X = (x - x.mean(0)) / (x.std(0) + 1)  # sc.pp.scale's output
    cases["scaled.h5ad"] = (_write(scaled, tmp_path / "scaled.h5ad"), "negative")
    cases["csc.h5ad"] = (_write(_zeisel[:20, :50], tmp_path / "csc.h5ad", csc=True), "stored by gene")
    cases["empty.h5ad"] = (_write(_zeisel[:0, :50], tmp_path / "empty.h5ad"), "empty")
    for name, (path, problem) in cases.items():
        with pytest.raises(ValueError, match=rf"^{name}: .*{problem}"):
            CorpusDataModule([good, path])
    with pytest.raises(ValueError, match=r"^good.h5ad: it has no layer 'counts'"):
        CorpusDataModule([good], layer="counts")
    view = _zeisel[:10]
    with pytest.raises(ValueError, match="is a view"):
        CorpusDataModule([good, view])
    with pytest.raises(ValueError, match="none of its 3 genes"):
        CorpusDataModule(
            [good, ad.AnnData(np.ones((3, 3), dtype=np.float32))], vocabulary=list(_zeisel.var_names[:5])
        )


# ---------------------------------------------------------------- minibatches
def test_minibatches_hold_each_dataset_in_vocabulary_order(panels, _zeisel):
    # an explicit vocabulary: every dataset has genes outside it (they count for the library
    # size) and misses some of it (marked missing)
    vocabulary = list(_zeisel.var_names[250:350]) + ["not_measured"]
    corpus = _corpus(panels, vocabulary=vocabulary)
    sources = [_zeisel[:40], _zeisel[40:76, 100:400], _zeisel[76:100, 50:350]]
    batch = corpus.dataset.__getitems__(np.arange(corpus.n_obs)[::-1])  # any order
    counts, missing, library = (batch[k].numpy() for k in ("X", "missing_genes", "library_size"))
    row = 0
    for source, panel in zip(sources[::-1], ([50, 350], [100, 400], [0, 300]), strict=True):
        for cell in range(source.n_obs - 1, -1, -1):
            genes = _zeisel.var_names[panel[0] : panel[1]]
            expected = _zeisel[source.obs_names[cell]]
            measured = np.array([g in genes for g in vocabulary])
            np.testing.assert_array_equal(missing[row], ~measured)
            values = _dense(expected[:, [g for g in vocabulary if g in genes]].X).ravel()
            np.testing.assert_array_equal(counts[row, measured], values)
            assert (counts[row, ~measured] == 0).all()
            assert library[row, 0] == pytest.approx(float(_dense(expected[:, genes].X).sum()))
            row += 1
    assert corpus.summary["vocabulary_genes_measured"].tolist() == [50, 100, 100]


def test_reader_processes_give_the_same_minibatches(panels):
    def minibatches(num_workers):
        loader = _corpus(panels, num_workers=num_workers).train_dataloader()
        return [(batch["X"].sum().item(), batch["missing_genes"].sum().item()) for batch in loader]

    assert minibatches(2) == minibatches(0)  # each worker opens the files itself
    # at most one file open at a time: the same minibatches, files closed and reopened
    corpus = _corpus(panels)
    corpus.dataset.max_open_files = 1
    batches = [(b["X"].sum().item(), b["missing_genes"].sum().item()) for b in corpus.train_dataloader()]
    assert batches == minibatches(0)
    assert sum(source._handle is not None for source in corpus.sources) <= 1


def test_sampler_shuffles_blocks_each_epoch_and_shards_them_evenly():
    blocks = cut_into_blocks([10, 7], block_size=3)
    assert blocks.tolist() == [[0, 3], [3, 6], [6, 9], [9, 10], [10, 13], [13, 16], [16, 17]]
    sampler = BlockShuffleSampler(blocks, buffer_blocks=2, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(17)) and len(sampler) == 17
    assert list(sampler) == first  # same epoch, same order (a resumed run repeats it)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(17))
    assert list(BlockShuffleSampler(blocks, shuffle=False)) == list(range(17))
    # two processes: the same number of cells each, together every cell of the epoch
    shares = [list(BlockShuffleSampler(blocks, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 8
    assert len(set(shares[0]) | set(shares[1])) >= 15


def _peak_while_streaming(path, n_batches=60) -> int:
    """Peak bytes allocated (tracemalloc) while ``n_batches`` minibatches of 16 are read."""
    loader = CorpusDataModule([path], batch_size=16, train_size=1.0).train_dataloader()
    tracemalloc.start()
    for n_batches_read, batch in enumerate(loader, start=1):
        assert batch["X"].shape == (16, 2000)
        if n_batches_read == n_batches:
            break
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_memory_is_bounded_by_the_cache_not_the_number_of_cells(_zeisel, tmp_path):
    # files of 5,000 and 20,000 real cells (resampled, thinned to vary): 300 to 1,250 minibatches
    rng = np.random.default_rng(0)
    source = sp.csr_matrix(_zeisel.X[:, :2000])
    peaks, stored = {}, {}
    for n_cells in (5_000, 20_000):
        cells = source[rng.integers(0, source.shape[0], n_cells)]
        cells.data = rng.binomial(cells.data.astype(np.int64), 0.7).astype(np.float32)
        cells.eliminate_zeros()
        path = tmp_path / f"cells_{n_cells}.h5ad"
        ad.AnnData(cells, var=pd.DataFrame(index=_zeisel.var_names[:2000])).write_h5ad(path)
        stored[n_cells] = cells.data.nbytes + cells.indices.nbytes
        peaks[n_cells] = _peak_while_streaming(path)
    # 4x the cells, same memory (the block cache: 2 x 16 blocks of 32 cells, and one minibatch)
    assert peaks[20_000] < 1.2 * peaks[5_000] + 2**20, peaks
    assert peaks[20_000] < stored[20_000] / 10, (peaks, stored)


# ---------------------------------------------------------------- the model
def test_a_corpus_model_reads_a_dataset_as_its_query_model_does(panels):
    corpus = _corpus(panels)
    model = st.SCHyena.from_corpus(corpus, **TINY)
    b = ad.read_h5ad(panels[1])
    st.SCHyena.setup_anndata(b, layer="counts")
    query = st.SCHyena.load_query_data(b, model)
    expected = query.get_latent_representation(progress_bar=False)
    model.module.eval()
    with torch.inference_mode():
        batch = corpus.dataset.__getitems__(np.arange(40, 76))
        got = model.module.inference(batch["X"], batch["missing_genes"], batch["library_size"])
    np.testing.assert_allclose(got["cell_embedding"].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_pretraining_on_datasets_with_different_panels(panels, tmp_path):
    corpus = _corpus(panels)
    assert corpus.n_vars == 400 and corpus.n_obs == 100 and corpus.n_val > 0
    model = st.SCHyena.from_corpus(corpus, **TINY)
    token = model.module.encoder.missing_token.detach().clone()
    with pytest.raises(ValueError, match=r"\['batch_size'\] belong to the corpus"):
        model.train(max_epochs=1, batch_size=4)
    model.train(max_epochs=2, enable_progress_bar=False)
    assert np.isfinite(model.history["train_loss"].to_numpy(dtype=float)).all()
    assert len(model.history["validation_loss"]) == 2
    # every dataset misses part of the union: the missing token is trained
    assert not torch.equal(token, model.module.encoder.missing_token.detach())
    assert model.corpus_summary_["dataset"] == ["a.h5ad", "b.h5ad", "an in-memory AnnData"]
    with pytest.raises(ValueError, match="no cells of its own.*load_query_data"):
        model.get_latent_representation()
    with pytest.raises(ValueError, match="no cells of its own"):
        model.train_imputer(max_epochs=1)
    model.save(tmp_path / "model")
    # onto one dataset of the corpus, or a new one (another panel)
    new = panels[2][:, 20:].copy()
    loaded = st.pretrained.load_model(tmp_path / "model", new)
    embedding = loaded.get_latent_representation(progress_bar=False)
    assert embedding.shape == (24, 8)
    # SCHyena.load maps a corpus model by gene name too (it has no one panel to match)
    again = st.SCHyena.load(tmp_path / "model", adata=panels[2][:, 20:].copy())
    np.testing.assert_allclose(again.get_latent_representation(progress_bar=False), embedding, rtol=1e-5)
    other = CorpusDataModule([panels[0]], block_size=4)
    with pytest.raises(ValueError, match="vocabulary is not this model's"):
        model.train(max_epochs=3, datamodule=other)


def test_multinomial_cell_head_on_a_corpus_scores_measured_genes_only(panels):
    model = st.SCHyena.from_corpus(_corpus(panels), **TINY)
    model.train(max_epochs=1, cell_objective="multinomial", enable_progress_bar=False)
    kl = model.history["cell_kl_train"].to_numpy(dtype=float)
    assert np.isfinite(kl).all() and (kl >= 0).all()
    # the data-dependent start put the head at the log of each gene's mean share of the counts
    bias = model.module.cell_expression_head.decoder.bias.detach()
    assert bias.max() < 0 and torch.isfinite(bias).all()


class _Crash(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


class _Cells(Callback):
    def __init__(self):
        self.first = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.first.append(batch["X"][:, :50].sum().item())


def test_an_interrupted_corpus_run_resumes(panels, tmp_path):
    kwargs = dict(max_epochs=2, enable_progress_bar=False, checkpoint_dir=tmp_path / "ckpt")
    scvi.settings.seed = 0
    whole = _Cells()
    st.SCHyena.from_corpus(_corpus(panels), **TINY).train(
        callbacks=[whole], **{**kwargs, "checkpoint_dir": None}
    )
    crashed = st.SCHyena.from_corpus(_corpus(panels), **TINY)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train(callbacks=[_Crash()], **kwargs)
    scvi.settings.seed = 0
    resumed = st.SCHyena.from_corpus(_corpus(panels), **TINY)
    cells = _Cells()
    resumed.train(resume_from=tmp_path / "ckpt", callbacks=[cells], **kwargs)
    assert len(resumed.history["train_loss"]) == 2
    assert cells.first == whole.first[1:], "the resumed epoch reads the cells in the same order"


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import scvi, torch
    import schyena_tools as st
    out, a, b = sys.argv[1:4]
    scvi.settings.seed = 0
    torch.set_num_threads(1)
    corpus = st.dataloaders.CorpusDataModule([a, b], layer=[None, "counts"], batch_size=4, block_size=4)
    model = st.SCHyena.from_corpus(corpus, **{tiny})
    model.train(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False)
    trainer = model.trainer
    if trainer.is_global_zero:
        json.dump({{"world_size": trainer.world_size, "train_batches": int(trainer.num_training_batches),
                    "n_train": corpus.n_train}}, open(out + "/result.json", "w"))
    """
)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_corpus_pretraining_on_two_ddp_processes(panels, tmp_path):
    report = run_script(DDP_SCRIPT.format(tiny=repr(TINY)), tmp_path, panels[0], panels[1])
    assert report["world_size"] == 2
    # each process gets half of the training cells, in minibatches of 4
    assert report["train_batches"] == -(-(report["n_train"] // 2) // 4), report


# ---------------------------------------------------------------- command line
def test_cli_pretrains_one_model_on_several_files(panels, tmp_path):
    a, b, _ = panels
    a_counts = ad.read_h5ad(a)
    a_counts.layers["counts"] = a_counts.X.copy()
    a_counts.write_h5ad(a)
    out = tmp_path / "embedded"
    out.mkdir()
    common = ["--max-epochs", "1", "--d-model", "8", "--n-layers", "1", "--quiet", "--layer", "counts"]
    vocabulary = tmp_path / "genes.txt"
    vocabulary.write_text("# genes\n" + "\n".join(ad.read_h5ad(b).var_names[:150]) + "\n")
    argv = ["pretrain", str(a), str(b), "--model-out", str(tmp_path / "m"), "-o", str(out)]
    assert cli.main([*argv, *common, "--vocabulary", str(vocabulary)]) == 0
    saved = st.pretrained.load_model(tmp_path / "m")
    assert saved.gene_vocabulary.tolist() == list(ad.read_h5ad(b).var_names[:150])
    for name, n_cells in (("a.h5ad", 40), ("b.h5ad", 36)):
        assert ad.read_h5ad(out / name).obsm["X_schyena"].shape == (n_cells, 8)
    assert cli.main([*argv, *common, "--vocabulary", str(tmp_path / "nope.txt"), "--overwrite"]) == 2
    assert (
        cli.main(["pretrain", str(a), str(b), "--model-out", str(tmp_path / "m2"), "-o", str(a), *common])
        == 2
    )
