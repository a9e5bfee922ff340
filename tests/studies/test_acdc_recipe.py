"""experiments/acdc_recipe.py: every listed run is a valid config, and each factor changes one thing only."""

import importlib.util

import pytest

from resnet_jax import configs
from tests.conftest import REPO


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("acdc_recipe", REPO / "experiments" / "acdc_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_factor_changes_exactly_its_own_keys_against_every_candidate(recipe, tmp_path):
    expected = {"stride16": ["model.output_stride"], "half-length": ["train.epochs"], "myo-only": ["data.keep_classes"],
                "cifar-stem": ["model.stem"]}
    assert set(expected) == set(recipe.FACTORS)
    data = str(tmp_path)  # any existing folder: nothing is read
    for candidate in recipe.CANDIDATES:
        base = configs.load_config(recipe.BASE, recipe.candidate_overrides(candidate), data_dir=data)
        for factor, keys in expected.items():
            changed = configs.load_config(recipe.BASE, recipe.factor_overrides(candidate, factor, data),
                                          data_dir=data)
            assert configs.diff(base, changed) == keys, (candidate, factor)
        half = configs.load_config(recipe.BASE, recipe.factor_overrides(candidate, "half-length", data))
        assert base["train"]["epochs"] == 20 and half["train"]["epochs"] == 10  # every candidate trains 20 epochs


def test_an_unknown_candidate_or_factor_names_the_valid_ones(recipe):
    with pytest.raises(SystemExit, match="unknown candidate 'os4'; valid: .*'os8-e20'"):
        recipe.candidate_overrides("os4")
    with pytest.raises(SystemExit, match="unknown factor 'bigger'; valid: .*'stride16'"):
        recipe.factor_overrides("os8-e20", "bigger", "data")


def test_a_factors_second_seed_is_its_own_run_differing_from_the_first_in_the_seed_alone(recipe, tmp_path):
    import argparse

    data = str(tmp_path)
    ask = lambda seed: argparse.Namespace(action="factor", names=["os8-e20", "stride16"], seed=seed,  # noqa: E731
                                          data_dir=data, runs=tmp_path / "runs", workdir=None)
    (first, work0, out0, _), (second, work1, out1, ablation) = recipe.plan(ask(0)), recipe.plan(ask(1))
    assert (work0.name, out0.name) == ("os8-e20-stride16", "os8-e20-stride16")
    assert (work1.name, out1.name, out1.parent.name) == ("os8-e20-stride16-seed1",) * 2 + ("acdc-factors",)
    configs_ = [configs.load_config(recipe.BASE, o, data_dir=data) for o in (first, second)]
    assert configs.diff(*configs_) == ["train.seed"] and configs_[1]["train"]["seed"] == 1
    assert ablation["readings"] == ("running",)


def test_a_negative_or_non_numeric_seed_is_refused_with_the_value(recipe):
    import argparse

    assert recipe.seed_number("2") == 2
    for bad in ("-1", "one"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"whole number >= 0, got '{bad}'"):
            recipe.seed_number(bad)
