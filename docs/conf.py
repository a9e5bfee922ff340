"""Sphinx configuration of resnet-jax's documentation site (MyST Markdown pages, executed MyST-NB notebooks).

Build it offline with ``scripts/venv.sh python -m sphinx -W --keep-going -b html docs docs/_build/html``;
``tests/test_docs.py`` runs the same build with warnings as errors.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]

project = "resnet-jax"
author = "resnet-jax contributors"
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "config_table",
    "public_api",
]
exclude_patterns = ["_build", "results", "_ext", "**.ipynb_checkpoints", "jupyter_execute"]
suppress_warnings = ["mystnb.unknown_mime_type"]
nitpicky = False

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 4
nb_execution_mode = "cache"
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_execution_timeout = 120
nb_execution_raise_on_error = True  # a cell that raises fails the build
nb_execution_show_tb = True  # and says which cell and why (a tutorial's hidden checks name the claim that failed)

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True

html_theme = "furo"
html_title = "resnet-jax"
html_static_path = []
