"""Run the quick-start tutorial end to end (small settings) so that it cannot rot."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"


def _run(notebook: Path, workdir: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("SCHYENA_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return nb


def _outputs(nb) -> str:
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_quickstart_tutorial_runs(tmp_path, monkeypatch):
    nb = _run(TUTORIALS / "01_quickstart.ipynb", tmp_path, monkeypatch)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = _outputs(nb)
    assert "quick mode: True" in text
    assert "reloaded model gives the same embedding" in text
    assert "scHyena, bundled model" in text
    assert (tmp_path / "tutorial_models" / "quickstart" / "model.pt").is_file()


def test_tutorials_are_stored_with_outputs():
    """The docs render the stored outputs (no execution at build time): every code cell ran."""
    for notebook in sorted(TUTORIALS.glob("*.ipynb")):
        nb = nbformat.read(notebook, as_version=4)
        code_cells = [c for c in nb.cells if c.cell_type == "code"]
        assert code_cells, notebook.name
        never_run = [i for i, c in enumerate(code_cells) if c.get("execution_count") is None]
        assert not never_run, f"{notebook.name}: code cells {never_run} have no stored output"
        assert os.path.getsize(notebook) < 2_000_000, f"{notebook.name} is too large for the repository"


def test_stored_tutorial_outputs_show_no_local_paths_or_library_chatter():
    import re

    for notebook in sorted(TUTORIALS.glob("*.ipynb")):
        text = _outputs(nbformat.read(notebook, as_version=4))
        for marker in ("site-packages", "💡 Tip", "already downloaded", "/tmp/schyena_tutorial_"):
            assert marker not in text, (notebook.name, marker)
        assert not re.search(r"(/work/|/root/|/home/)\S", text), notebook.name
