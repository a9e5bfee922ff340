"""No measured claim outside a rendered block (issue 41 item 7): the README's prose and the presets' descriptions
state no time, count or rate by hand; `resnet-jax presets` shows each preset's training time from the committed
results, or says it is not measured."""

import json
import re

import pytest

from resnet_jax import configs
from resnet_jax.reporting import preset_times, readme_results, results
from tests.conftest import run_cli

RESULTS = results.ROOT / "docs" / "results"
TIME = re.compile(r"\b(minutes?|hours?|seconds?|an hour)\b", re.I)
HAND_TYPED = [  # what the README once said by hand, and the forms such a claim takes
    re.compile(r"about (an?|half an|\d+) (hour|minute)s?", re.I), re.compile(r"under an hour", re.I),
    re.compile(r"\b\d+ of \d+ rows\b"), re.compile(r"about \d+ alpha"), re.compile(r"after \d+ ?s\b"),
    re.compile(r"half the images/s"), re.compile(r"\bin minutes\b"), re.compile(r"takes hours"),
    re.compile(r"under \d+ ?% of the MACs"),
]


def _prose(text: str) -> str:
    return readme_results.BLOCK.sub("", text)


@pytest.mark.parametrize("name", sorted(configs.PRESETS))
def test_no_preset_description_states_a_time(name):
    assert not TIME.search(configs.PRESETS[name].get("about", "")), configs.PRESETS[name]["about"]


def test_the_readme_and_docs_prose_types_no_measured_claim():
    prose = "\n".join(_prose(page.read_text()) for page in readme_results.pages(results.ROOT))
    assert [p.pattern for p in HAND_TYPED if p.search(prose)] == []
    assert "Compute:" not in prose  # the compute lines live in blocks only


NUMBER = re.compile(r"(?<![\w.-])\d[\d,.]*(?![\w-])")
"""A number standing on its own, not part of a name (``ResNet34``, ``CIFAR-10``)."""


def test_every_number_of_the_readme_sits_in_a_rendered_block():
    """Issue 43: the short README states no number by hand; its code, commands and link targets aside."""
    prose = _prose((results.ROOT / "README.md").read_text())
    prose = re.sub(r"```.*?```|`[^`]*`|\]\([^)]*\)", "", prose, flags=re.S)
    assert NUMBER.findall(prose) == []


def _listing() -> dict[str, str]:
    done = run_cli("presets")
    assert done.returncode == 0, done.stderr
    return dict(re.findall(r"^  (\S+)  \[.*?\n.*?\n      training time measured: (.*)$", done.stdout, re.M))


def test_presets_show_the_measured_training_time_from_the_committed_results():
    measured = _listing()
    assert set(measured) == set(configs.PRESETS)
    cpu = json.loads((RESULTS / "cpu" / "provenance.json").read_text())
    seconds = cpu["training_seconds"]
    runs = [f"{seconds['cifar10-resnet34']:.0f} s", f"{seconds['cifar10-resnet34-seed1']:.0f} s"]
    assert f"docs/results/cpu (cifar10-resnet34): training {', '.join(runs)} per seed" in measured["cifar10-resnet34-cpu"]
    assert "docs/results/cpu-elimination (cifar10-resnet34)" in measured["cifar10-resnet34-cpu"]  # another machine
    assert f"on {results.machine_text(cpu['machine'])}" in measured["cifar10-resnet34-cpu"]
    skip = sum(s for run, s in seconds.items() if run.startswith("mnist-skip/models/"))  # Study B: every network
    stage = cpu["stages"]["skip-study"]["seconds"]
    assert (f"docs/results/cpu (mnist-skip): training {skip:.0f} s, " in measured["mnist-skip-cpu"]
            and f"its stage skip-study took {stage:.0f} s for 2 seeds (last call)" in measured["mnist-skip-cpu"])
    for name in ("cifar10-resnet34", "acdc-pspnet34", "mnist-skip", "synthetic-tiny"):  # never run here
        assert measured[name].startswith("not measured")


def test_without_docs_results_every_preset_is_not_measured(monkeypatch):
    """An installed package carries no docs/results: nothing measured is claimed."""
    monkeypatch.setattr(preset_times, "results_root", lambda: None)
    assert {text.split(" (")[0] for text in _listing().values()} == {"not measured"}
