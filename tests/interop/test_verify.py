"""Cross-framework verification: ablations on torch state_dicts, `verify` and `import-torch` end to end.

Oracles: the JAX masks themselves (``ablation.make_mask`` + ``ablation.apply``, as the engine applies
them), converted tensor by tensor; literal comparison rows; the trained run's own test metrics.
One real training run of a torchvision-compatible model serves the end-to-end tests (``resnet_tiny``
has no torchvision twin): ResNet18 with the torchvision stem, one epoch on the synthetic data. The CLI
runs in-process through ``cli.main`` (what the ``resnet-jax`` script calls), which saves a JAX and
torch start-up per command.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from resnet_jax import cli  # noqa: E402
from resnet_jax.ablation import catalogue as abl  # noqa: E402
from resnet_jax.ablation import engine, protocols  # noqa: E402
from resnet_jax.data.inputs import normalize  # noqa: E402
from resnet_jax.interop import convert, verify  # noqa: E402
from resnet_jax.models import resnet as models  # noqa: E402
from resnet_jax.training import runs  # noqa: E402
from tests.conftest import REPO  # noqa: E402

pytestmark = pytest.mark.torch
N_EXAMPLES = 32
KINDS = ("zero-kernel", "zero-branch", "lesion")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """``resnet-jax train --config synthetic-tiny`` as ResNet18 for one epoch (the torchvision stem
    costs a quarter of the CIFAR stem's compute on 32x32 images)."""
    workdir = tmp_path_factory.mktemp("verify") / "resnet18"
    code = cli.main(["train", "--config", "synthetic-tiny", "--workdir", str(workdir), "--set", "model.name=resnet18",
                     "--set", "model.stem=torchvision", "--set", "train.epochs=1"])
    assert code == 0
    return workdir


@pytest.fixture(scope="module")
def restored(run):
    """The run's model, variables and input mean (its latest checkpoint, the one `evaluate` reads)."""
    restored = runs.restore(run, which="latest")
    model, state = restored.model, restored.state
    return model, jax.device_get(state.variables), np.asarray(state.image_mean)


def _bits(x) -> np.ndarray:
    x = np.ascontiguousarray(x.numpy() if isinstance(x, torch.Tensor) else x)
    return x.view(np.uint8)


# --------------------------------------------------------------------------- ablation_in_torch


def _protocol_ablations(layers, kind):
    out = []
    for p in ("single", "stage-except-decomposition", "shortcut"):
        if kind == "lesion" and p == "shortcut":
            continue
        out += abl.resolve_all(protocols.protocol_specs(p, layers, kind=kind), layers)
    return out


@pytest.fixture(scope="module")
def tiny():
    """resnet_tiny (ResNet18's layout and names at width 4; convert handles it like resnet18) with random
    weights and BatchNorm statistics: every tensor distinct, so a misplaced edit cannot go unseen."""
    model = models.create_model("resnet_tiny", num_classes=10, stem="cifar")
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32), shapes)
    return model, variables, abl.catalogue(model, variables)


@pytest.mark.parametrize("kind", ["zero-kernel", "zero-branch", "lesion", "reinit",
                                  pytest.param("rerandomize", marks=pytest.mark.slow)])  # two ~10 s init compiles
def test_ablation_in_torch_equals_the_converted_jax_mask_bitwise(tiny, kind):
    model, variables, layers = tiny
    sd = convert.to_torch_state_dict(variables, arch="resnet_tiny")
    before = {k: v.clone() for k, v in sd.items()}
    initial_params = jax.tree.map(lambda v: -v, variables["params"])
    initial = convert.to_torch_state_dict({**variables, "params": initial_params}, arch="resnet_tiny")
    replacement = None  # what the engine substitutes for masked leaves (engine._weight_runner): zeros,
    if kind == "reinit":  # the initial parameters,
        replacement = initial_params
    elif kind == "rerandomize":  # or a fresh init drawn under jit from a uint32 seed (eager init differs
        # from jitted init in the last bit of normal draws, so the oracle must be drawn the engine's way)
        replacement = jax.jit(lambda s: model.init(jax.random.key(s), jnp.zeros((1, 32, 32, 3)))["params"])(
            np.uint32(1))
    apply = jax.jit(abl.apply)
    for a in _protocol_ablations(layers, kind):
        mask = abl.make_mask(variables["params"], a, layers)
        want = convert.to_torch_state_dict(jax.device_get(apply(variables, mask, replacement=replacement)),
                                           arch="resnet_tiny")
        got = verify.ablation_in_torch(sd, a, layers, arch="resnet_tiny", initial=initial)
        assert list(got) == list(want)
        assert any(not np.array_equal(_bits(want[k]), _bits(sd[k])) for k in want), a  # the mask does something
        for k in want:
            assert np.array_equal(_bits(got[k]), _bits(want[k])), (a.name, k)
    for k in sd:  # the input is never modified
        assert np.array_equal(_bits(sd[k]), _bits(before[k])), k


def _edited(arch: str, kind: str, names: tuple[str, ...]) -> list[str]:
    net = convert.torchvision_model(arch, num_classes=10)
    model = models.create_model(arch, num_classes=10)
    layers = abl.catalogue(model, jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))))
    sd = net.state_dict()
    got = verify.ablation_in_torch(sd, abl.Ablation("a", kind, names), layers, arch=arch)
    return sorted(k for k in sd if got[k] is not sd[k])


def test_ablation_in_torch_edits_torchvision_keys():
    """Literal expectations, on torchvision's own state_dicts: the projection's conv and BN are
    ``downsample.0`` and ``downsample.1``; a Bottleneck's branch ends in ``bn3``."""
    assert _edited("resnet18", "zero-kernel", ("layer2.0.downsample",)) == ["layer2.0.downsample.0.weight"]
    assert _edited("resnet18", "zero-branch", ("layer2.0.downsample", "conv1")) == [
        "bn1.bias", "bn1.weight", "conv1.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias",
        "layer2.0.downsample.1.weight"]
    assert _edited("resnet18", "lesion", ("layer3.1.conv1", "layer3.1.conv2")) == [
        "layer3.1.bn2.bias", "layer3.1.bn2.weight"]
    assert _edited("resnet50", "lesion", ("layer1.1.conv2",)) == ["layer1.1.bn3.bias", "layer1.1.bn3.weight"]
    assert _edited("resnet50", "zero-branch", ("layer4.0.conv3",)) == [
        "layer4.0.bn3.bias", "layer4.0.bn3.weight", "layer4.0.conv3.weight"]


def test_ablation_in_torch_errors(tiny):
    _, variables, layers = tiny
    sd = convert.to_torch_state_dict(variables, arch="resnet_tiny")
    with pytest.raises(abl.SpecError, match="unknown layer"):
        verify.ablation_in_torch(sd, abl.Ablation("a", "zero-kernel", ("layer9.0.conv1",)), layers, arch="resnet_tiny")
    with pytest.raises(ValueError, match="initial"):
        verify.ablation_in_torch(sd, abl.Ablation("a", "reinit", ("conv1",)), layers, arch="resnet_tiny")


# --------------------------------------------------------------------------- comparison rule


def _result(logits, labels):
    logits = jnp.asarray(logits, jnp.float32)
    pe = jax.device_get(verify._AccuracyWithLogits().per_example(logits, jnp.asarray(labels)))
    return engine.Result("m", "zero-kernel", ("conv1",), float(np.mean(pe["correct"])), 0, 1, 0, len(labels), pe, 0)


@pytest.mark.parametrize("torch_logits, ok, disagreements, low_margin", [
    ([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0 + 5e-5]], True, 0, 1),  # identical
    ([[1.0, 0.0], [0.0, 2.0], [3.0 + 1e-4, 3.0]], True, 1, 1),  # a flip within the margin: allowed
    ([[0.0, 1.0], [0.0, 2.0], [3.0, 3.0 + 5e-5]], False, 1, 1),  # a flip of a clear prediction
    ([[1.0, 0.0], [0.0, 2.002], [3.0, 3.0 + 5e-5]], False, 0, 1),  # logits off by 2e-3
])
def test_compare_fails_on_clear_disagreements_and_large_deviations(torch_logits, ok, disagreements, low_margin):
    jax_logits = [[1.0, 0.0], [0.0, 2.0], [3.0, 3.0 + 5e-5]]
    row = verify._compare("single", _result(jax_logits, [0, 1, 1]), np.asarray(torch_logits, np.float32),
                          np.asarray([0, 1, 1]), logit_tol=verify.LOGIT_TOL, margin_tol=verify.MARGIN_TOL)
    assert (row["ok"], row["disagreements"], row["low_margin_examples"]) == (ok, disagreements, low_margin)
    assert row["abs_delta"] == pytest.approx(abs(row["jax_value"] - row["torch_value"]))


def test_cli_verify_exits_1_when_a_row_fails(monkeypatch, capsys, tmp_path):
    bad = {"protocol": "single", "mask": "conv1", "kind": "zero-kernel", "n_examples": 3, "jax_value": 1.0,
           "torch_value": 0.0, "abs_delta": 1.0, "max_logit_deviation": 5.0, "disagreements": 3,
           "low_margin_examples": 0, "ok": False}
    monkeypatch.setattr(verify, "verify_workdir", lambda *a, **k: {"rows": [bad], "ok": False, "csv": "x.csv"})
    assert cli.main(["verify", "--workdir", str(tmp_path)]) == 1
    assert capsys.readouterr().out.startswith("PyTorch DISAGREES on 1 of 1 masks")


@pytest.mark.parametrize("command", ["verify", "import-torch"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0 and "usage: resnet-jax " + command in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--kind", "zero-everything"], "invalid choice: 'zero-everything' (choose from 'zero-kernel'"),
    (["--protocol", "singel"], "invalid choice: 'singel' (choose from 'baseline', 'single'"),
])
def test_cli_verify_bad_request_is_exit_2_before_any_compute(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exited:  # the parser reads the valid choices from the library
        cli.main(["verify", "--workdir", str(tmp_path), *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_verify_needs_a_torchvision_architecture(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model": {"name": "resnet_tiny"}}))
    assert cli.main(["verify", "--workdir", str(tmp_path)]) == 2
    assert "no torchvision counterpart" in capsys.readouterr().err


# --------------------------------------------------------------------------- verify end to end


def test_cli_verify_all_protocols_three_kinds(run, capsys):
    kinds = [a for k in KINDS for a in ("--kind", k)]
    assert cli.main(["verify", "--workdir", str(run), "--n-examples", str(N_EXAMPLES), *kinds]) == 0
    out = capsys.readouterr().out
    print(out)  # the table, for the record (-s)
    assert "\nPyTorch agrees: " in out  # the verdict line opens the table
    rows = list(csv.DictReader((run / "verify.csv").open()))
    assert set(verify.CSV_COLUMNS) <= set(rows[0])
    # ResNet18: 20 convs, 4 stages, 3 projections; 5 identity-shortcut units; no lesion of a projection.
    counts = {}
    for r in rows:
        counts[(r["protocol"], r["kind"])] = counts.get((r["protocol"], r["kind"]), 0) + 1
    assert counts == {("baseline", "none"): 1, ("single", "zero-kernel"): 20, ("single", "zero-branch"): 20,
                      ("single", "lesion"): 5, ("stage-except-decomposition", "zero-kernel"): 4,
                      ("stage-except-decomposition", "zero-branch"): 4, ("stage-except-decomposition", "lesion"): 4,
                      ("shortcut", "zero-kernel"): 3, ("shortcut", "zero-branch"): 3}
    for r in rows:
        assert r["ok"] == "True" and int(r["n_examples"]) == N_EXAMPLES, r
        assert float(r["max_logit_deviation"]) <= verify.LOGIT_TOL, r
        if int(r["disagreements"]) == 0:
            assert r["jax_value"] == r["torch_value"], r
    # PROTOCOLS.md algebra, in both frameworks: silencing a BasicBlock's last BN (zero-branch of conv2)
    # removes the branch exactly, which is what a lesion of the unit does.
    single = {(r["mask"], r["kind"]): r for r in rows if r["protocol"] == "single"}
    for (unit, kind), lesion in single.items():
        if kind == "lesion":
            branch = single[(f"{unit}.conv2", "zero-branch")]
            assert (lesion["jax_value"], lesion["torch_value"]) == (branch["jax_value"], branch["torch_value"])


# --------------------------------------------------------------------------- import-torch


def test_import_torch_round_trip_evaluates_like_the_original(run, restored, tmp_path, capsys):
    _, variables, image_mean = restored
    path = tmp_path / "resnet18.pt"
    torch.save(convert.to_torch_state_dict(variables, arch="resnet18"), path)
    workdir = tmp_path / "imported"
    assert cli.main(["import-torch", str(path), "--workdir", str(workdir), "--arch", "resnet18",
                     "--data-name", "synthetic", "--config", "synthetic-tiny"]) == 0
    trained = json.loads((run / "evaluation.json").read_text())  # one epoch: the best checkpoint is the latest
    said = capsys.readouterr().out
    assert f"on 256 test images of synthetic: test accuracy {trained['test_accuracy']:.4f}, test loss " in said, said
    config = json.loads((workdir / "config.json").read_text())
    assert (config["model"]["name"], config["model"]["stem"], config["data"]["name"]) == (
        "resnet18", "torchvision", "synthetic")
    record = json.loads((workdir / "import.json").read_text())
    assert record["image_mean"] == image_mean.tolist()  # the train split's statistics, as training used
    assert cli.main(["evaluate", "--workdir", str(workdir)]) == 0
    evaluated = json.loads((workdir / "evaluation-latest.json").read_text())
    assert evaluated["n_examples"] == 256
    assert evaluated["test_accuracy"] == trained["test_accuracy"]
    assert evaluated["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-6)


def _resnet18_state_dict():
    return convert.torchvision_model("resnet18", num_classes=10).state_dict()


@pytest.mark.parametrize("make, arch, message", [
    (lambda p: torch.save({"a": torch.zeros(2), "b": 1}, p), "resnet18", "not a state_dict"),
    (lambda p: torch.save(_resnet18_state_dict(), p), "resnet34", "match resnet18"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(1000)), "resnet18", "cannot read"),
])
def test_import_torch_rejects_other_files_with_exit_2(tmp_path, capsys, make, arch, message):
    path = tmp_path / "file.pt"
    make(path)
    workdir = tmp_path / "w"
    assert cli.main(["import-torch", str(path), "--workdir", str(workdir), "--arch", arch,
                     "--data-name", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert "resnet-jax import-torch: error:" in err and message in err, err
    assert not workdir.exists()


@pytest.mark.parametrize("make, what", [
    (lambda p: torch.save(convert.torchvision_model("resnet18", num_classes=10), p),
     "it is a whole pickled module (torchvision.models.resnet.ResNet), as torch.save(model) writes, not a state_dict"),
    (lambda p: p.write_text("epoch,loss\n1,0.5\n"), "it is not a PyTorch file (torch.load cannot read it)"),
])
def test_import_torch_says_what_a_file_is_and_how_to_save_a_state_dict(tmp_path, capsys, make, what):
    path = tmp_path / "file.pt"
    make(path)
    assert cli.main(["import-torch", str(path), "--workdir", str(tmp_path / "w"), "--arch", "resnet18",
                     "--data-name", "synthetic"]) == 2
    assert capsys.readouterr().err == (f"resnet-jax import-torch: error: {path} is not a resnet18 checkpoint: {what}; "
                                       f"save a model's weights with torch.save(model.state_dict(), path)\n")


def test_export_torch_writes_the_dict_that_the_docs_and_help_describe(run, tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    assert cli.main(["export-torch", "--workdir", str(run), "--out", str(tmp_path)]) == 0
    saved = torch.load(tmp_path / "model.pt", map_location="cpu")  # plain torch, as a user without resnet-jax
    torchvision.models.resnet18(num_classes=10).load_state_dict(saved["state_dict"])  # a full torchvision-stem run
    keys = ["architecture", "normalisation", "source", "state_dict", "step"]
    assert sorted(saved) == keys
    page = (REPO / "docs" / "how-to" / "slim-and-export.md").read_text()
    start = page.index("`export-torch` writes `model.pt`")
    paragraph = " ".join((page + "\n\n")[start:(page + "\n\n").index("\n\n", start)].split())
    assert all(f"`{k}`" in paragraph for k in keys), paragraph
    assert 'torch.load("model.pt")["state_dict"]' in paragraph and "load_exported" in paragraph
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())
    start = listing.index("export-torch write")
    help_text = listing[start:listing.index(" verify ", start)]
    assert "model.pt (a dict: state_dict, architecture, normalisation, source, step)" in help_text, help_text


def test_import_torch_refuses_a_workdir_that_holds_a_run(run, tmp_path, capsys):
    path = tmp_path / "file.pt"
    torch.save(_resnet18_state_dict(), path)
    assert cli.main(["import-torch", str(path), "--workdir", str(run), "--arch", "resnet18",
                     "--data-name", "synthetic"]) == 2
    assert "not empty" in capsys.readouterr().err


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_cli_verify_reinit_and_rerandomize(run, capsys):
    assert cli.main(["verify", "--workdir", str(run), "--n-examples", "16", "--protocol", "shortcut",
                     "--kind", "reinit", "--kind", "rerandomize"]) == 0
    rows = list(csv.DictReader((run / "verify.csv").open()))
    assert [(r["kind"], r["ok"]) for r in rows] == [("none", "True")] + [("reinit", "True")] * 3 + [
        ("rerandomize", "True")] * 3


def test_a_slim_run_verifies_in_pytorch_and_exports(run, tmp_path, capsys):
    """Every identity unit of the ResNet18 run eliminated: its ablations agree in PyTorch (the exported slim
    twin), and the exported state_dict and TorchScript files give the Flax slim model's logits."""
    from resnet_jax.interop import export

    slim = tmp_path / "slim"
    assert cli.main(["eliminate", "--workdir", str(run), "--out", str(slim), "--max-drop", "0.99",
                     "--random-draws", "0", "--force-untrained"]) == 0  # a briefly trained run: the plumbing
    assert len(json.loads((slim / "config.json").read_text())["model"]["eliminated"]) == 5
    assert cli.main(["verify", "--workdir", str(slim), "--protocol", "single", "--n-examples", str(N_EXAMPLES)]) == 0
    rows = list(csv.DictReader((slim / "verify.csv").open()))
    assert len(rows) == 1 + 10 and all(r["ok"] == "True" for r in rows)  # 20 convs less the 5 units' 10
    assert cli.main(["export-torch", "--workdir", str(slim), "--out", str(tmp_path / "torch")]) == 0
    restored = runs.restore(slim)
    test = restored.test.take(16, seed=0)
    x = np.asarray(normalize(test.images, restored.state.image_mean, restored.state.image_std))
    flax_logits = np.asarray(restored.model.apply(restored.state.variables, x)[0])
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.inference_mode():
        for net in (export.load_exported(tmp_path / "torch" / "model.pt"),
                    torch.jit.load(str(tmp_path / "torch" / "model.torchscript.pt"))):
            np.testing.assert_allclose(net(xt).numpy(), flax_logits, rtol=0, atol=1e-4)
