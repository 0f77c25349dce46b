"""The ``schyena-tools`` command line, on tiny settings and a small real h5ad."""

import anndata as ad
import numpy as np
import pytest

from schyena_tools import cli

TINY_CLI = ["--max-epochs", "1", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def brain_h5ad(tmp_path_factory, _zeisel_small):
    path = tmp_path_factory.mktemp("cli") / "brain.h5ad"
    adata = _zeisel_small.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def pretrained_folder(brain_h5ad):
    folder = brain_h5ad.parent / "model"
    output = brain_h5ad.parent / "pretrained.h5ad"
    argv = ["pretrain", str(brain_h5ad), "-o", str(output), "--model-out", str(folder)]
    assert cli.main([*argv, "--d-model", "8", "--n-layers", "1", *TINY_CLI]) == 0
    return folder, output


def test_pretrain_writes_model_and_embedding(pretrained_folder, brain_h5ad):
    folder, output = pretrained_folder
    assert (folder / "model.pt").is_file()
    result = ad.read_h5ad(output)
    original = ad.read_h5ad(brain_h5ad)
    assert result.obsm["X_schyena"].shape == (original.n_obs, 8)
    assert np.isfinite(result.obsm["X_schyena"]).all()
    # the input is carried over untouched, without scvi-tools' bookkeeping columns
    assert list(result.obs.columns) == list(original.obs.columns)
    assert (result.X != original.X).nnz == 0


def test_embed_with_another_gene_panel(pretrained_folder, brain_h5ad, tmp_path):
    folder, pretrained_output = pretrained_folder
    query = ad.read_h5ad(brain_h5ad)[:, 100:].copy()  # drops 100 of the model's genes
    query_path = tmp_path / "query.h5ad"
    query.write_h5ad(query_path)
    output = tmp_path / "embedded.h5ad"
    assert cli.main(["embed", str(folder), str(query_path), "-o", str(output), "--quiet"]) == 0
    embedded = ad.read_h5ad(output)
    assert embedded.obsm["X_schyena"].shape == (query.n_obs, 8)
    # same model, same genes: embed reproduces the embedding written by pretrain
    full_output = tmp_path / "embedded_full.h5ad"
    assert cli.main(["embed", str(folder), str(brain_h5ad), "-o", str(full_output), "--quiet"]) == 0
    np.testing.assert_allclose(
        ad.read_h5ad(full_output).obsm["X_schyena"],
        ad.read_h5ad(pretrained_output).obsm["X_schyena"],
        atol=1e-5,
    )


def test_annotate_predicts_unlabelled_cells(pretrained_folder, brain_h5ad, tmp_path):
    folder, _ = pretrained_folder
    adata = ad.read_h5ad(brain_h5ad)
    adata.obs["partial"] = adata.obs["cell_type"].astype(str)
    adata.obs.loc[adata.obs_names[::3], "partial"] = "Unknown"
    path = tmp_path / "partial.h5ad"
    adata.write_h5ad(path)
    output = tmp_path / "annotated.h5ad"
    argv = ["annotate", str(folder), str(path), "--labels-key", "partial", "-o", str(output), *TINY_CLI]
    assert cli.main([*argv, "--model-out", str(tmp_path / "classifier")]) == 0
    result = ad.read_h5ad(output)
    known = set(adata.obs["cell_type"].astype(str))
    assert set(result.obs["schyena_prediction"].astype(str)) <= known
    confidence = result.obs["schyena_confidence"].to_numpy()
    assert ((confidence > 0) & (confidence <= 1)).all()
    unknown = result.obs["schyena_unknown_score"].to_numpy()
    assert ((unknown >= 0) & (unknown <= 1)).all()
    assert (tmp_path / "classifier" / "model.pt").is_file()
    # with a threshold, the cells above it are labelled "unknown"
    flagged = tmp_path / "flagged.h5ad"
    argv = ["annotate", str(folder), str(path), "--labels-key", "partial", "-o", str(flagged), *TINY_CLI]
    assert cli.main([*argv, "--max-epochs", "0", "--unknown-threshold", "0.6"]) == 0
    result = ad.read_h5ad(flagged)
    above = result.obs["schyena_unknown_score"].to_numpy() > 0.6
    assert (result.obs["schyena_prediction"].astype(str).to_numpy()[above] == "unknown").all()


def test_impute_writes_a_layer_for_every_gene(pretrained_folder, brain_h5ad, tmp_path):
    folder, _ = pretrained_folder
    output = tmp_path / "imputed.h5ad"
    argv = ["impute", str(folder), str(brain_h5ad), "-o", str(output), "--layer", "counts", *TINY_CLI]
    assert cli.main(argv) == 0
    result = ad.read_h5ad(output)
    imputed = result.layers["schyena_imputed"]
    counts = result.layers["counts"].toarray()
    assert imputed.shape == counts.shape and np.isfinite(imputed).all()
    assert result.var["schyena_imputed"].all()
    # observed values are kept; zeros are filled with non-negative predictions
    observed = counts > 0
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(imputed[observed], expected[observed], rtol=1e-4)
    assert (imputed[~observed] >= 0).all() and (imputed[~observed] > 0).any()


def test_doublets_scores_every_cell(pretrained_folder, brain_h5ad, tmp_path):
    folder, _ = pretrained_folder
    output = tmp_path / "doublets.h5ad"
    argv = ["doublets", str(folder), str(brain_h5ad), "-o", str(output), "--max-epochs", "0", "--quiet"]
    assert cli.main([*argv, "--expected-doublet-rate", "0.1"]) == 0
    result = ad.read_h5ad(output)
    scores = result.obs["schyena_doublet_score"].to_numpy()
    assert ((scores >= 0) & (scores <= 1)).all() and scores.std() > 0
    assert (result.obs["schyena_predicted_doublet"].to_numpy() == (scores > 0.5)).all()


@pytest.mark.parametrize("command", ["demo", "pretrain", "embed", "annotate", "impute", "doublets"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code == 0
    assert "example" in capsys.readouterr().out


def _error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err  # one line
    return errors[0]


def test_bad_arguments_give_one_line_errors(pretrained_folder, brain_h5ad, tmp_path, capsys):
    folder, _ = pretrained_folder
    out = str(tmp_path / "out.h5ad")
    assert cli.main(["embed", str(folder), str(tmp_path / "nope.h5ad"), "-o", out]) == 2
    assert "does not exist" in _error_line(capsys)
    assert cli.main(["embed", str(tmp_path / "no_model"), str(brain_h5ad), "-o", out]) == 2
    assert "model" in _error_line(capsys)
    assert cli.main(["annotate", str(folder), str(brain_h5ad), "--labels-key", "nope", "-o", out]) == 2
    assert "no obs column 'nope'" in _error_line(capsys)
    assert cli.main(["impute", str(folder), str(brain_h5ad), "--layer", "nope", "-o", out]) == 2
    assert "no layer 'nope'" in _error_line(capsys)
    assert (
        cli.main(["embed", str(folder), str(brain_h5ad), "-o", str(tmp_path / "missing_dir" / "x.h5ad")]) == 2
    )
    assert "folder" in _error_line(capsys)
    argv = ["pretrain", str(brain_h5ad), "-o", out, "--model-out", str(folder)]
    assert cli.main(argv) == 2
    assert "--overwrite" in _error_line(capsys)
    assert not (tmp_path / "out.h5ad").exists()


def test_missing_required_option_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["annotate", "model", "in.h5ad", "-o", "out.h5ad"])
    assert stop.value.code == 2
    assert "--labels-key" in capsys.readouterr().err


def test_demo_runs_on_a_few_cells(tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n-cells", "16", "--d-model", "8", "--n-layers", "1"]
    assert cli.main([*argv, "--max-epochs", "1", "--batch-size", "8", "--quiet"]) == 0
    assert (out / "umap.png").is_file() and (out / "model" / "model.pt").is_file()
    assert ad.read_h5ad(out / "zeisel_schyena.h5ad").obsm["X_schyena"].shape == (16, 8)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["annotate", "--help"], ["demo", "--help"]])
def test_help_and_version_do_not_import_torch(argv):
    import subprocess
    import sys

    # a fresh interpreter: --help of any command must not pay for torch and scvi-tools
    code = (
        "import sys\nfrom schyena_tools import cli\n"
        "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'scvi', 'lightning') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout
    if argv == ["--version"]:
        from schyena_tools import __version__

        assert f"schyena-tools {__version__}" in result.stdout


def test_demo_help_shows_the_defaults(capsys):
    from schyena_tools.demo import DEMO_SETTINGS

    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, key in (
        ("--max-epochs", "max_epochs"),
        ("--d-model", "d_model"),
        ("--batch-size", "batch_size"),
    ):
        assert f"{option} {option.strip('-').upper().replace('-', '_')}" in text
        assert f"(default: {DEMO_SETTINGS[key]})" in text


def test_package_attributes_load_on_first_use():
    import schyena_tools as st

    assert st.SCHyena is st.model.SCHyena
    from schyena_tools import SCHyena, pl  # noqa: F401

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        st.nope  # noqa: B018


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["embed", "model", "in.h5ad", "-o", "out.h5ad", "--batch-size", "0"],
            "--batch-size: must be at least 1",
        ),
        (["pretrain", "in.h5ad", "-o", "o.h5ad", "--model-out", "m", "--max-epochs", "0"], "--max-epochs"),
        (
            ["pretrain", "in.h5ad", "-o", "o.h5ad", "--model-out", "m", "--mask-ratio", "1.5"],
            "between 0 and 1",
        ),
        (["pretrain", "in.h5ad", "-o", "o.h5ad", "--model-out", "m", "--d-model", "0"], "--d-model"),
        (
            ["annotate", "model", "in.h5ad", "-o", "o.h5ad", "--labels-key", "x", "--max-epochs", "-1"],
            "at least 0",
        ),
        (["demo", "--n-cells", "zero"], "is not an integer"),
    ],
)
def test_bad_numbers_are_rejected_before_any_file_or_torch_is_touched(argv, message):
    import subprocess
    import sys

    # in.h5ad and the model do not exist: a number error first means nothing was read or loaded
    code = (
        "import sys\nfrom schyena_tools import cli\n"
        "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit as stop:\n    print('exit', stop.code)\n"
        "print('heavy:', sorted(m for m in ('torch', 'scvi', 'anndata') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert "exit 2" in result.stdout and "heavy: []" in result.stdout, result.stdout + result.stderr
    assert message in result.stderr


def test_log_normalised_x_with_a_counts_layer_names_the_layer_option(brain_h5ad, tmp_path, capsys):
    import scanpy as sc

    adata = ad.read_h5ad(brain_h5ad)  # holds layers["counts"]
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    path = tmp_path / "lognorm.h5ad"
    adata.write_h5ad(path)
    argv = ["pretrain", str(path), "-o", str(tmp_path / "o.h5ad"), "--model-out", str(tmp_path / "m")]
    assert cli.main([*argv, *TINY_CLI]) == 2
    line = _error_line(capsys)
    assert "--layer counts" in line and "setup_anndata" not in line
    assert not (tmp_path / "m").exists()
