"""``resnet-jax ablate --model PACKAGE.MODULE:FUNCTION``: a user's own Flax model (tests/user_models.py) ablated
from the command line. The truth is the model applied with plain flax to parameters masked by hand."""

import copy
import csv
import json

import flax
import jax
import numpy as np
import pytest
from PIL import Image

from resnet_jax.studies import user_model
from tests import user_models
from tests.conftest import run_cli, shared_dataset

N_PER_CLASS = 6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny ImageFolder test split: 3 classes of 8x8 RGB PNGs, each class a colour plus noise."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(user_models.CLASSES):
        (root / "test" / f"class{c}").mkdir(parents=True)
        for i in range(N_PER_CLASS):
            base = np.zeros((user_models.SIZE, user_models.SIZE, 3))
            base[..., c] = 180
            pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "test" / f"class{c}" / f"{i}.png")
    return root


def _split(data_dir):
    """The folder read back independently: images in [0, 1] and labels (class folders in sorted order)."""
    images, labels = [], []
    for c, folder in enumerate(sorted((data_dir / "test").iterdir())):
        for path in sorted(folder.iterdir()):
            images.append(np.asarray(Image.open(path), np.float32) / 255.0)
            labels.append(c)
    return np.stack(images), np.asarray(labels)


def _accuracy(logits, labels) -> float:
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def _kernel_paths(params, prefix=()):
    for key, value in params.items():
        if isinstance(value, dict) and "kernel" in value:
            yield (*prefix, key)
        elif isinstance(value, dict):
            yield from _kernel_paths(value, (*prefix, key))


def _linen_truth(variables, data_dir) -> dict[str, float]:
    """Accuracy of the VGG unmasked ('baseline') and with each kernel zeroed, by plain ``model.apply``."""
    x, y = _split(data_dir)
    variables = jax.tree.map(np.asarray, flax.core.unfreeze(variables))
    out = {"baseline": _accuracy(user_models.VGG().apply(variables, x, train=False), y)}
    for path in _kernel_paths(variables["params"]):
        masked = copy.deepcopy(variables)
        node = masked["params"]
        for key in path:
            node = node[key]
        node["kernel"] = np.zeros_like(node["kernel"])
        out[".".join(path)] = _accuracy(user_models.VGG().apply(masked, x, train=False), y)
    return out


def _rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _ablate(workdir, data_dir, *extra):
    return run_cli("ablate", "--workdir", str(workdir), "--data-dir", str(data_dir), *extra)


@pytest.fixture(scope="module")
def vgg_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("vgg") / "out"
    done = _ablate(workdir, data_dir, "--model", "tests.user_models:vgg", "--model-arg", "seed=3",
                   "--protocol", "single")
    assert done.returncode == 0, done.stderr
    return workdir, done


def test_single_equals_the_model_applied_to_masked_params(vgg_run, data_dir):
    workdir, _ = vgg_run
    truth = _linen_truth(user_models.vgg_variables(3), data_dir)
    rows = _rows(workdir / "ablation" / "single.csv")
    assert [r["layers"] for r in rows] == ["Conv_0", "Conv_1", "Dense_0"]  # call order
    for r in rows:
        assert float(r["value"]) == pytest.approx(truth[r["layers"]], abs=1e-6), r["mask"]
        assert float(r["baseline"]) == pytest.approx(truth["baseline"], abs=1e-6)
        assert r["decision"] in ("trivial", "non-trivial", "improves", "undecided")
        assert float(r["drop_low"]) <= float(r["baseline"]) - float(r["value"]) <= float(r["drop_high"])
        assert int(r["n_examples"]) == 3 * N_PER_CLASS


def test_tables_record_what_produced_them_and_report_and_export_read_them(vgg_run, tmp_path):
    workdir, _ = vgg_run
    provenance = json.loads((workdir / "ablation" / "single.json").read_text())["provenance"]
    assert provenance["origin"]["model"] == "tests.user_models:vgg"
    assert provenance["origin"]["model_args"] == {"seed": "3"}
    assert provenance["origin"]["apply_kwargs"] == {"train": "False"}
    assert provenance["origin"]["dataset"]["n"] == 3 * N_PER_CLASS
    assert "seed='3'" in provenance["checkpoint_choice"]
    assert json.loads((workdir / "model.json").read_text())["model"] == "tests.user_models:vgg"
    report = run_cli("report", "--workdir", str(workdir))
    assert report.returncode == 0, report.stderr
    assert "tests.user_models:vgg" in (workdir / "report.md").read_text()
    exported = run_cli("results", "--workdir", str(workdir), "--out", str(tmp_path / "export"), "--allow-dirty")
    assert exported.returncode == 0, exported.stderr
    record = json.loads((tmp_path / "export" / "provenance.json").read_text())
    assert record["model"]["model"] == "tests.user_models:vgg"
    assert record["datasets"]["."]["test"] == provenance["origin"]["dataset"]["sha256"]
    assert "ablation/single.csv" in record["files"]
    assert record["stages"]["ablate"]["finished"]


def test_all_on_an_nnx_model_runs_what_it_supports_and_says_what_it_skipped(tmp_path, data_dir):
    done = _ablate(tmp_path / "out", data_dir, "--model", "tests.user_models:nnx_cnn", "--protocol", "all")
    assert done.returncode == 0, done.stderr
    assert "skipped stage-except-decomposition, shortcut" in done.stdout
    tables = sorted(p.name for p in (tmp_path / "out" / "ablation").glob("*.csv"))
    assert tables == ["baseline.csv", "single.csv"]
    x, y = _split(data_dir)
    model = user_models.nnx_cnn()
    expected = {"baseline": _accuracy(model(x), y)}
    for name in ("conv1", "conv2", "head"):
        fresh = user_models.nnx_cnn()
        layer = getattr(fresh, name)
        layer.kernel[...] = np.zeros(layer.kernel.shape, np.float32)
        expected[name] = _accuracy(fresh(x), y)
    rows = _rows(tmp_path / "out" / "ablation" / "single.csv")
    assert {r["layers"]: pytest.approx(float(r["value"]), abs=1e-6) for r in rows} == \
        {k: v for k, v in expected.items() if k != "baseline"}
    assert float(_rows(tmp_path / "out" / "ablation" / "baseline.csv")[0]["value"]) == \
        pytest.approx(expected["baseline"], abs=1e-6)


def test_all_on_a_model_that_declares_structure_runs_the_studys_four(tmp_path, data_dir):
    done = _ablate(tmp_path / "out", data_dir, "--model", "tests.user_models:tiny_resnet")
    assert done.returncode == 0, done.stderr
    assert "skipped" not in done.stdout
    tables = sorted(p.stem for p in (tmp_path / "out" / "ablation").glob("*.csv"))
    assert tables == ["baseline", "shortcut", "single", "stage-except-decomposition"]


def test_dice_on_segmentation_folders_equals_pooled_dice_computed_by_hand(tmp_path):
    from resnet_jax.data.segmentation import load_segmentation_split

    acdc = shared_dataset("acdc_lv_myo")
    done = run_cli("ablate", "--model", "tests.user_models:segmenter", "--data-dir", str(acdc), "--metric", "dice",
                   "--num-classes", "4", "--image-size", "64", "--n-examples", "40", "--protocol", "single",
                   "--workdir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    rows = _rows(tmp_path / "out" / "ablation" / "single.csv")
    assert [r["layers"] for r in rows] == ["Conv_0", "Conv_1"] and rows[0]["metric"] == "dice"
    split = load_segmentation_split(acdc, "test", image_size=64).take(40, seed=0)
    model, variables = user_models.segmenter()
    predicted = np.argmax(np.asarray(model.apply(variables, split.images)), -1)
    dice = [2 * np.sum((predicted == c) & (split.masks == c)) / (np.sum(predicted == c) + np.sum(split.masks == c))
            for c in (1, 2, 3)]
    assert float(rows[0]["baseline"]) == pytest.approx(np.mean(dice), abs=1e-5)


def test_new_weights_are_scored_again_and_the_same_weights_are_not(tmp_path, data_dir):
    weights = tmp_path / "params.msgpack"
    args = ("--model", "tests.user_models:vgg_from_file", "--model-arg", f"checkpoint={weights}",
            "--protocol", "single")
    for seed, scored in ((0, True), (1, True), (1, False)):  # the same file, new weights, then the same again
        weights.write_bytes(flax.serialization.to_bytes(user_models.vgg_variables(seed)))
        done = _ablate(tmp_path / "out", data_dir, *args)
        assert done.returncode == 0, done.stderr
        values = {r["layers"]: float(r["value"]) for r in _rows(tmp_path / "out" / "ablation" / "single.csv")}
        truth = _linen_truth(user_models.vgg_variables(seed), data_dir)
        assert values == {k: pytest.approx(v, abs=1e-6) for k, v in truth.items() if k != "baseline"}
        assert ("evaluating 3" in done.stdout) == scored, done.stdout
    stored = [json.loads(line) for line in (tmp_path / "out" / "ablation" / "results.jsonl").read_text().splitlines()]
    assert len({row["context"] for row in stored}) == 2  # one per set of weights
    assert len(stored) == 2 * 4  # baseline and three masks each; the third run computed nothing


TINY = "tests.user_models"
ERRORS = [
    (["--model", f"{TINY}.nope:vgg"], "no module 'tests.user_models.nope'"),
    (["--model", f"{TINY}:missing"], "has no function 'missing'"),
    (["--model", f"{TINY}:NOT_A_FUNCTION"], "has no function 'NOT_A_FUNCTION'"),
    (["--model", TINY], "is not PACKAGE.MODULE:FUNCTION"),
    (["--model", f"{TINY}:raises", "--model-arg", "checkpoint=/nonexistent.msgpack"],
     "raised FileNotFoundError"),
    (["--model", f"{TINY}:vgg", "--model-arg", "colour=red"], "unexpected keyword argument 'colour'"),
    (["--model", f"{TINY}:vgg", "--model-arg", "seed"], "--model-arg 'seed' is not KEY=VALUE"),
    (["--model", f"{TINY}:returns_dict"], "returned a dict"),
    (["--model", f"{TINY}:linen_without_variables"], "a linen model needs its variables"),
    (["--model", f"{TINY}:trains_on_call"], "pass apply_kwargs={'train': False}"),
    (["--model", f"{TINY}:wrong_size"], "rejects the data's images"),
    (["--model", f"{TINY}:vgg", "--metric", "f1"], "unknown --metric 'f1'; valid: accuracy, dice"),
    (["--model", f"{TINY}:vgg", "--checkpoint", "best"], "--checkpoint best picks a trained run's checkpoint"),
    (["--model", f"{TINY}:vgg", "--batchnorm", "batch"], "--batchnorm batch is for models"),
    (["--model", f"{TINY}:vgg", "--kind", "reinit"], "kind reinit needs the model's initial parameters"),
    (["--model", f"{TINY}:vgg", "--image-mean", "0.5", "0.5"], "--image-mean has 2 values"),
    (["--data", "cifar10", "--split", "train"], "--data, --split describe(s) a user's model"),
]


@pytest.mark.parametrize("args, expected", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_a_bad_input_is_one_line_naming_it(tmp_path, data_dir, args, expected):
    done = _ablate(tmp_path / "out", data_dir, *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnet-jax ablate: error: "), done.stderr
    assert expected in lines[0]
    assert not (tmp_path / "out" / "ablation").exists()


def test_a_trained_runs_folder_is_not_written_over(tmp_path, data_dir):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    done = _ablate(tmp_path / "run", data_dir, "--model", f"{TINY}:vgg")
    assert done.returncode == 2 and "holds a run trained here" in done.stderr
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.json"]


def test_a_file_path_reference_loads_like_a_module(tmp_path):
    network, variables = user_model.load_model(user_model.UserModel("tests/user_models.py:vgg", {"seed": "2"}))
    assert network.framework == "linen" and dict(network.apply_kwargs) == {"train": False}
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), variables,
                                     jax.device_get(user_models.vgg_variables(2))))
