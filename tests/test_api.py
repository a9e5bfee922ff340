"""The public Python API: what each subpackage exports, and the examples of the README and the docs run as written."""

import re

from tests.conftest import REPO


def test_subpackages_export_what_a_user_imports():
    from resnet_jax.ablation import catalogue as module  # the submodule keeps its name beside the exports
    from resnet_jax.ablation import layer_catalogue
    from resnet_jax.models import PSPNet, ResNet34, layer_paths  # noqa: F401

    assert layer_catalogue is module.catalogue
    import resnet_jax.ablation as ablation
    import resnet_jax.data as data
    import resnet_jax.interop as interop
    import resnet_jax.models as models
    import resnet_jax.training as training

    for package in (ablation, data, interop, models, training):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert not missing, f"{package.__name__} lists {missing} but does not define them"


DECISIONS = ("non-trivial", "trivial", "improves", "undecided")
"""The rule's four decisions, written out here rather than imported from the code under test."""
ROW = re.compile(r"(?P<mask>\S.*?) +(?P<value>\d\.\d{3})  drop [+-]\d\.\d{3} "
                 r"\[(?P<low>[+-]\d\.\d{3}), (?P<high>[+-]\d\.\d{3})\]  (?P<decision>\S+)")


def _decisions_allowed(low: float, high: float, *, margin: float) -> set[str]:
    """The decisions the README's rule gives a drop whose simultaneous bounds print as ``[low, high]`` (3
    decimals): non-trivial when ``low > margin``, else improves when ``high < -margin``, else trivial when
    ``high < margin``, else undecided. A bound within rounding of a threshold allows either side."""
    def above(x: float, threshold: float) -> set[bool]:
        return {x > threshold} if abs(x - threshold) > 0.0005 else {True, False}

    allowed = set()
    for low_above in above(low, margin):
        for high_below_minus in {not b for b in above(high, -margin)}:
            for high_below in {not b for b in above(high, margin)}:
                allowed.add("non-trivial" if low_above else "improves" if high_below_minus
                            else "trivial" if high_below else "undecided")
    return allowed


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use it from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 21 and lines[-1].startswith("layer4 but its first unit")  # 20 convs of the tiny ResNet
    for line in lines:
        row = ROW.fullmatch(line)
        assert row, f"not a row of the example's table: {line!r}"
        assert row["decision"] in DECISIONS, line
        assert row["decision"] in _decisions_allowed(float(row["low"]), float(row["high"]), margin=0.01), line
    assert (tmp_path / "runs" / "api-example" / "checkpoints").is_dir()


def test_the_presets_page_table_names_every_preset_and_no_other():
    from resnet_jax import configs

    text = (REPO / "docs" / "how-to" / "presets-and-configs.md").read_text()
    start = text.index("| preset |")
    table = text[start:text.index("\n\n", start)]
    named = {name for row in table.splitlines()[2:] for name in re.findall(r"`([^`]+)`", row.split("|")[1])}
    assert named == set(configs.PRESETS), (f"README lacks {sorted(set(configs.PRESETS) - named)}; "
                                           f"names presets that do not exist: {sorted(named - set(configs.PRESETS))}")


def test_the_docs_examples_for_a_users_own_models_run(capsys):
    """The linen VGG and the NNX CNN of the own-model how-to's "Ablate any Flax model from Python", as written."""
    text = (REPO / "docs" / "how-to" / "own-model.md").read_text()
    section = text[text.index("## Ablate any Flax model from Python"):]
    linen, nnx_block = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(linen.splitlines()) <= 20 and len(nnx_block.splitlines()) <= 20
    scope: dict = {}
    exec(compile(linen, "own-model.md (linen)", "exec"), scope)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["baseline", "Conv_0", "Conv_1", "Dense_0"]
    assert all(0.0 <= float(line.split()[1]) <= 1.0 for line in lines)
    exec(compile(nnx_block, "own-model.md (nnx)", "exec"), scope)  # it reads the linen block's images and labels
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["baseline", "conv+head"]


def test_the_command_line_starts_without_the_libraries_only_some_commands_need():
    """scipy.stats (paired tests) and flax.nnx (NNX models) cost about 0.75 s of every process's start, which every
    train, evaluate and job process paid; they are imported where they are used."""
    import subprocess
    import sys

    probe = "import sys, resnet_jax.cli; print(sorted(m for m in ('scipy.stats', 'flax.nnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:] or out.stdout
