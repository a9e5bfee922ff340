"""The documentation site builds offline with warnings as errors (a broken cross-reference, a missing page, a public
name without a docstring all fail), its reference pages are generated from the code, and the results blocks of its
pages are checked like the README's. The build here leaves the tutorials unexecuted: ``tests/test_tutorials.py``
runs each of them, on another pytest-xdist worker, and fails on a cell that raises."""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import subprocess
import sys
import types

import pytest

from resnet_jax import cli, configs
from resnet_jax.reporting import readme_results
from tests import browser
from tests.conftest import REPO, in_ci, render_results

DOCS = REPO / "docs"


def _sphinx() -> None:
    """Skip without the ``docs`` extra on a workstation; CI installs it, so there its absence fails."""
    try:
        importlib.import_module("myst_nb")
        importlib.import_module("sphinxarg")
    except ImportError as err:
        if in_ci():
            pytest.fail(f"the docs extra is missing ({err}); scripts/venv.sh installs it", pytrace=False)
        pytest.skip(f"the docs extra is not installed ({err})")


def build(source, out):
    """``python -m sphinx -W --keep-going -b html SOURCE OUT``, as the README gives it, with the notebooks' execution
    off (``-D nb_execution_mode=off``: ``tests/test_tutorials.py`` executes them)."""
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-D",
                           "nb_execution_mode=off", "-d", str(out / ".doctrees"), str(source), str(out / "html")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _sphinx()
    out = tmp_path_factory.mktemp("docs")
    done = build(DOCS, out)
    assert done.returncode == 0, done.stderr[-6000:]
    return out / "html"


def test_the_site_builds_with_warnings_as_errors(site):
    for page in ("index", "getting-started", "results", "benchmarks", "reference/cli", "reference/api",
                 "reference/config", "how-to/statistics", "how-to/scaling-out",
                 *(f"tutorials/{p.stem}" for p in (DOCS / "tutorials").glob("*.md"))):
        assert (site / f"{page}.html").is_file(), page


def test_the_command_line_reference_names_every_command_and_option(site):
    text = (site / "reference" / "cli.html").read_text()
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.choices and a.dest == "command").choices
    for name, sub in commands.items():
        assert name in text, name
        for action in sub._actions:
            for flag in () if isinstance(action, argparse._HelpAction) else action.option_strings:
                assert flag in text, (name, flag)


def test_the_config_reference_lists_every_schema_key(site):
    text = (site / "reference" / "config.html").read_text()
    for task in configs.TASKS:
        for key in configs.family(task).SCHEMA:
            assert f">{key}<" in text, (task, key)


def test_the_api_reference_documents_every_public_name(site):
    text = (site / "reference" / "api.html").read_text()
    for package in ("ablation", "configs", "data", "interop", "models", "reporting", "studies", "training"):
        module = importlib.import_module(f"resnet_jax.{package}")
        for name in module.__all__:
            anchor = f'id="resnet_jax.{package}.{name}"'
            assert anchor in text or f'id="module-resnet_jax.{package}.{name}"' in text, (package, name)


def test_the_api_check_names_the_public_functions_and_classes_without_an_example(monkeypatch):
    """What fails the build: a function or class of ``__all__`` whose docstring has no ``>>>`` line; a submodule, a
    constant and a documented example pass."""
    _sphinx()
    monkeypatch.syspath_prepend(str(DOCS / "_ext"))
    public_api = importlib.import_module("public_api")

    def shown():
        """Adds.

        >>> 1 + 1
        2
        """

    def unshown():
        """Adds, and shows no example."""

    class Unshown:
        """A class without an example."""

    package = types.ModuleType("fake_api", "A package.")
    package.__path__ = []
    package.sub = types.ModuleType("fake_api.sub", "A submodule: no example needed.")
    package.CONSTANT, package.shown, package.unshown, package.Unshown = 3, shown, unshown, Unshown
    package.__all__ = ["CONSTANT", "sub", "shown", "unshown", "Unshown"]
    monkeypatch.setitem(sys.modules, "fake_api", package)
    assert public_api.unexampled("fake_api") == ["unshown", "Unshown"]
    for short in public_api.PACKAGES:
        assert public_api.unexampled(f"resnet_jax.{short}") == [], short


def test_a_broken_cross_reference_fails_the_build(tmp_path):
    """The site's own configuration and extensions over one page that links to a page that does not exist."""
    _sphinx()
    source = tmp_path / "docs"
    shutil.copytree(DOCS / "_ext", source / "_ext")
    shutil.copy(DOCS / "conf.py", source / "conf.py")
    (source / "index.md").write_text("# Index\n\nSee [the getting started page](getting-started.md).\n")
    done = build(source, tmp_path / "out")
    assert done.returncode != 0
    assert "getting-started" in done.stderr


def test_render_results_covers_the_readme_and_every_docs_page_with_blocks():
    pages = readme_results.pages(REPO)
    assert pages[0] == REPO / "README.md"
    assert DOCS / "results.md" in pages and DOCS / "how-to" / "statistics.md" in pages
    assert not any("_build" in p.parts or p.is_relative_to(DOCS / "results") for p in pages)


def test_the_check_fails_when_a_block_of_a_docs_page_is_edited_by_hand(tmp_path):
    page = tmp_path / "results.md"
    text = (DOCS / "results.md").read_text()
    page.write_text(text)
    check = ["--check", str(page)]
    assert render_results(*check).returncode == 0
    edited = text.replace("| stage-except-decomposition | 1 | 0.51 | 0.662 |", "| stage-except-decomposition | 1 | 0.51 | 0.700 |")
    assert edited != text
    page.write_text(edited)
    failed = render_results(*check)
    assert failed.returncode == 1
    assert f"{page}: block cifar10-paper-cpu/paper differs from" in failed.stderr


def test_the_check_fails_when_a_figure_is_edited_by_hand(tmp_path):
    """The committed figures are what the committed results draw, byte for byte; an edited one fails the check."""
    figures = tmp_path / "figures"
    shutil.copytree(REPO / "docs" / "figures", figures)
    check = [sys.executable, str(REPO / "scripts" / "render_results.py"), "--check", "--figures", str(figures),
             str(REPO / "README.md")]
    assert subprocess.run(check, capture_output=True, text=True, timeout=300).returncode == 0
    headline = figures / "headline.svg"
    headline.write_text(headline.read_text().replace("</svg>", "<!-- touched up -->\n</svg>"))
    failed = subprocess.run(check, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert f"{headline} differs from what" in failed.stderr


def test_every_figure_is_shown_on_a_page():
    shown = " ".join(p.read_text() for p in [REPO / "README.md", *DOCS.rglob("*.md")] if "_build" not in p.parts)
    for svg in (REPO / "docs" / "figures").glob("*.svg"):
        assert f"figures/{svg.name}" in shown, svg.name


@pytest.mark.skipif(browser.CHROMIUM is None and not in_ci(), reason="Chromium is not installed")
@pytest.mark.parametrize("page", ["index.html", "results.html", "benchmarks.html"])
def test_the_built_pages_show_their_figures_and_fit_a_desktop_and_a_phone_in_chromium(site, page, tmp_path):
    assert browser.CHROMIUM, ".ci/run installs Chromium for this test"
    path = site / page
    n_images = len(re.findall(r"<img\b", path.read_text()))
    wide = browser.probe_file(path, tmp_path)
    assert len(wide["figures"]) == n_images and (page == "benchmarks.html" or n_images >= 1)
    assert all(re.fullmatch(r"true:[1-9]\d*x[1-9]\d*", s) for s in wide["figures"]), wide  # every image loads
    assert wide["scroll_width"] <= 1280, f"{page} is {wide['scroll_width']} px wide in a 1,280-px window"
    phone = browser.probe_file(path, tmp_path, width=390)
    assert phone["scroll_width"] <= 392, f"{page} is {phone['scroll_width']} px wide on a 390-px screen"
    if page == "index.html":
        assert "headline.svg" in path.read_text()
