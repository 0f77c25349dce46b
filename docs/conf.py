"""Sphinx configuration of the schyena-tools documentation (scverse layout).

Build: ``sphinx-build -W -b html docs docs/_build/html``. Notebooks are rendered from the outputs
stored in them (``nb_execution_mode = "off"``): the build trains nothing and needs no network.
"""

import re
import shutil
import sys
from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

info = metadata("schyena-tools")
project = "schyena-tools"
author = "schyena-tools developers"
copyright = f"{datetime.now():%Y}, {author}"
version = info["Version"]
release = version

# The tutorials live in ../tutorials (so they can be run from a checkout); Sphinx only reads its
# own source folder, so they are copied into the (git-ignored) generated/ folder at each build.
_TUTORIALS = HERE / "generated" / "tutorials"
_TUTORIALS.mkdir(parents=True, exist_ok=True)
for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copy2(notebook, _TUTORIALS / notebook.name)

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
templates_path = ["_templates"]
# downstream_table.md is written by benchmarks/downstream.py and included in downstream.md.
exclude_patterns = [
    "_build",
    "_scripts",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "benchmarks/downstream_table.md",
    "benchmarks/bundled_model_table.md",
    "benchmarks/bundled_model_sweep_table.md",
    "benchmarks/corpus_scaling_results.md",
]

# myst / myst-nb
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the outputs stored in the notebooks; never execute them here
nb_output_stderr = "remove"  # progress bars and library warnings are noise in the rendered page
nb_merge_streams = True

# autodoc: numpy docstrings, types from the annotations
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False
# torch, scvi-tools and matplotlib types are named in signatures but their docs are not linked
# (no network at build time, so no intersphinx); do not warn about them.
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "schyena-tools"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
}
html_show_sourcelink = False


# The benchmark pages (docs/benchmarks/*.md) are written to be read on the repository too, so
# they link to files outside docs/ (e.g. ../../benchmarks/README.md) that Sphinx cannot resolve.
# Render those links as plain text naming the file instead of failing the -W build.
_OUTSIDE_DOCS_LINK = re.compile(r"\[([^\]]+)\]\((?:\.\./)+([^)\s]+)\)")


def _unlink_paths_outside_docs(app, docname, source):
    if docname.startswith("benchmarks/"):
        source[0] = _OUTSIDE_DOCS_LINK.sub(lambda m: f"{m.group(1)} (in the repository)", source[0])


def setup(app):
    app.connect("source-read", _unlink_paths_outside_docs)
