"""Words that a reader could take for more than was measured: spreads that read as confidence intervals, tables
that do not exist, and setups that differ from the study's without saying so."""

import re

import pytest

from resnet_jax.reporting import published, readme_results
from tests.conftest import REPO

PAGES = readme_results.pages(REPO)
"""README.md and the docs pages with results blocks."""
SPREAD_AS_INTERVAL = re.compile(r"\[\d\.\d+, \d\.\d+\] \(\d+ seeds\)|random sets of \d+ units \d\.\d+ \[|"
                                r"draws, mean\) \| \d\.\d+ \[")
"""A mean over seeds or random draws followed by ``[min, max]``, the form the README's confidence intervals take
(brackets stay for intervals: accuracy's Wilson interval, the paired bounds)."""


def _rendered_blocks() -> str:
    fresh = [readme_results.render(page.read_text(), REPO / "docs" / "results") for page in PAGES]
    return "\n".join(m["body"] for text in fresh for m in readme_results.BLOCK.finditer(text))


def test_several_seeds_print_as_their_mean_and_range_over_seeds():
    runs = [[{"mask": "baseline", "value": 0.70}], [{"mask": "baseline", "value": 0.80}]]
    rows = published.beside_ours("classification", {"baseline": runs})
    assert rows[0] == ["baseline", "-", "0.84", "0.750 (range over 2 seeds: 0.700 to 0.800)"]


@pytest.fixture(scope="module")
def blocks() -> str:
    return _rendered_blocks()


def test_rendered_blocks_never_print_a_spread_as_an_interval(blocks):
    assert "mean [min, max]" not in blocks
    assert not SPREAD_AS_INTERVAL.search(blocks), SPREAD_AS_INTERVAL.search(blocks)[0]
    assert re.search(r"range over \d+ seeds: \d\.\d{3} to \d\.\d{3}", blocks)  # the paper tables, over seeds
    assert re.search(r"range over draws: \d\.\d{4} to \d\.\d{4}", blocks)  # the elimination's random sets


def test_readme_prose_names_only_what_protocols_md_has_and_what_was_measured():
    text = "\n".join(page.read_text() for page in PAGES)
    assert not re.search(r"Tables? \d", text), "PROTOCOLS.md has one unnumbered table of published results"
    assert "cost little" not in text  # those drops are non-trivial by the README's own rule


def test_results_segmentation_section_says_our_model_has_more_classes_than_the_studys():
    text = (REPO / "docs" / "results.md").read_text()
    start = text.index("### Segmentation: ACDC")
    section = text[start:text.index("\n### ", start + 1)]
    differences = " ".join(section[section.index("Our model differs from the study's"):].split())
    assert "classes (ours trains on ACDC's four" in differences and "labels the myocardium only" in differences
