"""Every tutorial under ``docs/tutorials/`` runs as the site's build runs it: MyST-NB reads the text notebook and
a fresh Jupyter kernel executes it cell by cell in ``docs/tutorials``. A cell that raises fails its test, and so
does a hidden check of what the text claims. How long each takes is printed (``-s``), not asserted: the machine is
shared and noisy, so the cell timeout only guards against a hang.

The suite's build of the site (``tests/test_docs.py``) leaves execution to these tests, one per tutorial, so that
the build and the tutorials run on different pytest-xdist workers; the build a user runs executes them itself
(``nb_execution_mode`` in ``docs/conf.py``)."""

from __future__ import annotations

import importlib
import runpy
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, in_ci

TUTORIALS = sorted((REPO / "docs" / "tutorials").glob("*.md"))
HANG_S = 900  # a cell that runs this long has hung (the slowest tutorial takes about a minute on 2 cores)


def execute(path: Path) -> float:
    """Run the MyST notebook at ``path`` in a new kernel, in its own folder; return its seconds. A cell that raises
    raises ``nbclient.exceptions.CellExecutionError`` here, naming the cell and its traceback."""
    try:
        read = importlib.import_module("myst_nb.core.read")
        nbclient = importlib.import_module("nbclient")
    except ImportError as err:
        if in_ci():
            pytest.fail(f"the docs extra is missing ({err}); scripts/venv.sh installs it", pytrace=False)
        pytest.skip(f"the docs extra is not installed ({err})")
    notebook = read.read_myst_markdown_notebook(path.read_text())
    client = nbclient.NotebookClient(notebook, timeout=HANG_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_the_tutorial_runs(path):
    print(f"{path.name}: {execute(path):.1f} s")


def test_a_cell_that_raises_fails_its_tutorial(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    path = tmp_path / "broken.md"
    path.write_text("---\nfile_format: mystnb\nkernelspec:\n  name: python3\n  display_name: Python 3\n---\n\n"
                    "# Broken\n\n```{code-cell} ipython3\n:tags: [remove-cell]\n\nassert 1 + 1 == 3, 'the claim'\n```\n")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="the claim"):
        execute(path)


def test_every_tutorial_is_linked_from_the_index_and_the_readme_and_executed_by_the_site_build(monkeypatch):
    index, readme = (REPO / "docs" / "index.md").read_text(), (REPO / "README.md").read_text()
    assert len(TUTORIALS) >= 5
    for path in TUTORIALS:
        assert f"tutorials/{path.name}" in index and f"\ntutorials/{path.stem}\n" in index, path.name
        assert f"docs/tutorials/{path.name}" in readme, path.name
    monkeypatch.setattr(sys, "path", list(sys.path))  # conf.py puts the repository and docs/_ext first
    conf = runpy.run_path(str(REPO / "docs" / "conf.py"))
    assert conf["nb_execution_mode"] in ("cache", "force") and conf["nb_execution_raise_on_error"]
