"""PSPNet, Dice, segmentation data and training against independent truths (NumPy loops, literal arrays)."""

import io
import json
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from resnet_jax import configs, metrics
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine, protocols, restore_subject
from resnet_jax.ablation import statistics as st
from resnet_jax.data import segmentation as seg_data
from resnet_jax.models import pspnet
from resnet_jax.models import resnet as models
from resnet_jax.studies import ablate
from resnet_jax.training import runs
from resnet_jax.training import segmentation as seg_train
from tests.conftest import count_shifted_crops, perturb_norms


def _tiny_pspnet(**kwargs):
    return pspnet.PSPNet(num_classes=4, encoder="resnet_tiny", head_features=8, **kwargs)


def _perturbed(variables, seed=0):
    return perturb_norms(variables, seed=seed, head="classifier")


# Model ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw, output_stride", [((50, 70), 8), ((64, 64), 8), ((33, 41), 8), ((50, 70), 32),
                                               ((17, 96), 16)])
def test_logits_have_the_input_size(hw, output_stride):
    model = _tiny_pspnet(output_stride=output_stride)
    x = jnp.zeros((2, *hw, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1]))
    logits, inter = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert logits.shape == (2, *hw, 4) and logits.dtype == jnp.float32
    stem_hw = -(-hw[0] // 4), -(-hw[1] // 4)  # 7x7/2 conv then 3x3/2 pool, both padded: ceil(n / 2) twice
    expected = [-(-n // (output_stride // 4)) for n in stem_hw]
    assert inter["layer4"].shape[1:3] == tuple(expected)


def test_output_stride_8_dilates_stages_3_and_4_and_keeps_the_encoder_names():
    model = pspnet.PSPNet(num_classes=4)  # the study's model: ResNet34 encoder
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1))))
    layers = {l.name: l for l in abl.catalogue(model, variables, input_shape=(1, 64, 64, 1))}
    assert len(layers) == 36 and all(n.startswith("encoder.") for n in layers)  # the head is not ablated
    assert layers["encoder.conv1"].kernel_shape == (7, 7, 1, 64)  # grey input
    assert layers["encoder.layer2.0.conv1"].stride == 2
    assert layers["encoder.layer3.0.conv1"].stride == 1 and layers["encoder.layer4.0.downsample"].stride == 1
    assert layers["encoder.layer4.2.conv2"].output_hw == (8, 8)


@pytest.mark.parametrize("hw, bins", [((7, 9), 1), ((7, 9), 2), ((7, 9), 3), ((7, 9), 6), ((2, 3), 6), ((12, 12), 6)])
def test_adaptive_pooling_matches_a_numpy_loop(hw, bins):
    x = np.random.default_rng(0).normal(size=(2, *hw, 3)).astype(np.float32)
    expected = np.zeros((2, bins, bins, 3), np.float32)
    for i in range(bins):
        for j in range(bins):
            rows = slice(int(np.floor(i * hw[0] / bins)), int(np.ceil((i + 1) * hw[0] / bins)))
            cols = slice(int(np.floor(j * hw[1] / bins)), int(np.ceil((j + 1) * hw[1] / bins)))
            expected[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    np.testing.assert_allclose(pspnet.adaptive_avg_pool(jnp.asarray(x), bins), expected, rtol=1e-5, atol=1e-6)


def test_pyramid_keeps_its_input_and_adds_one_branch_per_bin():
    module = pspnet.PyramidPooling((1, 2, 3, 6), 5, lambda name: nn.BatchNorm(use_running_average=True, name=name))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 7, 9, 8)), jnp.float32)
    out, _ = module.init_with_output(jax.random.key(0), x)
    assert out.shape == (1, 7, 9, 8 + 4 * 5)
    np.testing.assert_array_equal(out[..., :8], x)
    assert np.all(np.ptp(np.asarray(out[..., 8:13]), axis=(1, 2)) == 0)  # bin 1: one value per channel


# Dice -------------------------------------------------------------------------------------------

def _dice_reference(pred, true, num_classes):
    """Per image and foreground class, by counting pixels in a loop."""
    out = np.zeros((len(pred), num_classes - 1))
    for n in range(len(pred)):
        for c in range(1, num_classes):
            p, t = pred[n] == c, true[n] == c
            total = p.sum() + t.sum()
            out[n, c - 1] = 1.0 if total == 0 else 2 * (p & t).sum() / total
    return out


def _logits(pred, num_classes=4):
    return jax.nn.one_hot(jnp.asarray(pred), num_classes) * 5.0


def test_dice_matches_a_slow_loop_per_image_and_pooled():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, (6, 9, 11))
    pred = np.where(rng.random(true.shape) < 0.7, true, rng.integers(0, 4, true.shape))
    metric = metrics.Dice(num_classes=4)
    out = jax.tree.map(np.asarray, metric.per_example(_logits(pred), jnp.asarray(true)))
    reference = _dice_reference(pred, true, 4)
    np.testing.assert_allclose(out["dice"], reference, rtol=1e-6)
    np.testing.assert_allclose(out["score"], reference.mean(1), rtol=1e-6)
    per_class = [2 * ((pred == c) & (true == c)).sum() / ((pred == c).sum() + (true == c).sum()) for c in (1, 2, 3)]
    value, low, high = metric.aggregate(out)
    assert value == pytest.approx(np.mean(per_class)) and low <= value <= high
    named = metrics.Dice(num_classes=4, class_names=seg_data.SYNTHETIC_CLASSES).breakdown(out)
    assert named == pytest.approx(dict(zip(["dice_mean", "dice_lv", "dice_myo", "dice_rv"], [np.mean(per_class),
                                                                                          *per_class])))
    assert list(metric.breakdown(out)) == ["dice_mean", "dice_class1", "dice_class2", "dice_class3"]
    assert metrics.Dice(num_classes=4, aggregate_by="image").aggregate(out)[0] == pytest.approx(reference.mean())
    myo = metrics.Dice(num_classes=4, classes=(2,))
    assert myo.aggregate(myo.per_example(_logits(pred), jnp.asarray(true)))[0] == pytest.approx(
        2 * ((pred == 2) & (true == 2)).sum() / ((pred == 2).sum() + (true == 2).sum()))


def test_the_patient_interval_resamples_whole_patients_as_a_slow_loop_does():
    """Reference: each resample's slices (every slice of each drawn patient, repeats kept) pooled by hand, on the same
    draws; with one patient per image it is exactly the image bootstrap of ``aggregate``."""
    rng = np.random.default_rng(1)
    true = rng.integers(0, 4, (12, 8, 8))
    pred = np.where(rng.random(true.shape) < 0.6, true, rng.integers(0, 4, true.shape))
    metric = metrics.Dice(num_classes=4, classes=(2,), n_bootstrap=200)
    out = jax.tree.map(np.asarray, metric.per_example(_logits(pred), jnp.asarray(true)))
    groups = [f"p{n % 5}" for n in range(12)]  # 5 patients of 2 or 3 slices, interleaved
    patients = sorted(set(groups))
    draws = np.random.default_rng(0).integers(0, 5, (200, 5))
    boot = []
    for row in draws:
        slices = [n for p in row for n in range(12) if groups[n] == patients[p]]
        pd, td = pred[slices] == 2, true[slices] == 2
        boot.append(2 * (pd & td).sum() / (pd.sum() + td.sum()))
    assert metric.patient_interval(out, groups) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])))
    alone = [f"p{n:02d}" for n in range(12)]
    assert metric.patient_interval(out, alone) == pytest.approx(metric.aggregate(out)[1:])
    with pytest.raises(ValueError, match="11 groups for 12 images"):
        metric.patient_interval(out, groups[:11])


def test_dice_perfect_disjoint_and_the_empty_convention():
    true = np.zeros((4, 4, 4), np.int64)
    true[0, :2] = 1  # image 0: LV only
    true[1, :2], true[1, 2:] = 2, 3  # image 1: MYO and RV
    pred = true.copy()
    pred[1] = np.where(true[1] == 2, 3, 2)  # image 1: MYO and RV swapped -> disjoint
    # image 2: all background in both (empty vs empty); image 3: LV predicted where there is none
    pred[3, 0, 0] = 1
    out = jax.tree.map(np.asarray, metrics.Dice().per_example(_logits(pred), jnp.asarray(true)))
    np.testing.assert_array_equal(out["dice"], [[1, 1, 1], [1, 0, 0], [1, 1, 1], [0, 1, 1]])
    # pooled: the empty image adds nothing; LV = 2*8 / (8 + 8 + 1), MYO = RV = 0
    value = metrics.Dice().aggregate(out)[0]
    assert value == pytest.approx(np.mean([16 / 17, 0.0, 0.0]))
    without_empty = {k: np.delete(v, 2, axis=0) for k, v in out.items()}
    assert metrics.Dice().aggregate(without_empty)[0] == pytest.approx(value)
    summary = metrics.dice_summary(out, seg_data.SYNTHETIC_CLASSES, prefix="test_")
    assert summary["test_dice_lv"] == pytest.approx(16 / 17) and summary["test_dice_myo"] == 0.0


def test_soft_dice_loss_is_zero_for_confident_perfect_predictions_and_one_for_disjoint():
    true = jnp.asarray(np.random.default_rng(0).integers(0, 4, (2, 8, 8)))
    assert float(seg_train.soft_dice_loss(_logits(true) * 20, true, smooth=0.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(seg_train.soft_dice_loss(_logits((true + 1) % 4) * 20, true, smooth=0.0)) == pytest.approx(1.0, abs=1e-6)


# Data -------------------------------------------------------------------------------------------

def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_16_bit_values_survive_loading_from_a_zip(tmp_path):
    deep = (np.arange(10 * 6, dtype=np.uint16).reshape(10, 6) * 67 + 1000)  # 1000..4953, all distinct
    shallow = np.arange(10 * 6, dtype=np.uint8).reshape(10, 6) * 4
    mask = (np.arange(60).reshape(10, 6) % 4).astype(np.uint8)
    with zipfile.ZipFile(tmp_path / "train.zip", "w") as zf:
        for name, image in (("deep", deep), ("shallow", shallow)):
            zf.writestr(f"train/images/{name}.png", _png(image))
            zf.writestr(f"train/masks/{name}.png", _png(mask))
    assert Image.open(io.BytesIO(_png(deep))).mode.startswith("I")  # really a 16-bit PNG
    decoded = seg_data.decode_grey(_png(deep), where="test")
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, deep)
    split = seg_data.load_segmentation_split(tmp_path, "train", image_size=(10, 6), percentiles=(0, 100),
                                             cache_dir=tmp_path / "cache")
    assert split.ids == ("deep", "shallow") and split.images.dtype == np.float32
    expected = (deep.astype(np.float64) - 1000) / (deep.max() - 1000)
    np.testing.assert_allclose(split.images[0, ..., 0], expected, atol=1e-7)
    assert len(np.unique(split.images[0])) == 60  # an 8-bit detour would have merged values
    np.testing.assert_allclose(split.images[1, ..., 0], shallow / shallow.max(), atol=1e-7)
    np.testing.assert_array_equal(split.masks[0], mask)
    again = seg_data.load_segmentation_split(tmp_path, "train", image_size=(10, 6), percentiles=(0, 100),
                                             cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1 and np.array_equal(again.images, split.images)


def test_centre_crop_and_pad_move_image_and_mask_together():
    mask = np.arange(10 * 6).reshape(10, 6)
    out = seg_data.crop_or_pad(mask, (8, 9))
    np.testing.assert_array_equal(out[:, 1:7], mask[1:9])  # 10 -> 8 rows: drop one each side
    assert np.all(out[:, 0] == 0) and np.all(out[:, 7:] == 0)  # 6 -> 9 columns: pad 1 before, 2 after


def test_bad_masks_and_layouts_name_the_fix(tmp_path):
    with zipfile.ZipFile(tmp_path / "test.zip", "w") as zf:
        zf.writestr("test/images/a.png", _png(np.zeros((4, 4), np.uint8)))
        zf.writestr("test/masks/a.png", _png(np.full((4, 4), 3, np.uint8)))
    with pytest.raises(seg_data.DataError, match="class id 3 but only 3 classes"):
        seg_data.load_segmentation_split(tmp_path, "test", image_size=4, class_names=("bg", "LV", "MYO"),
                                         cache_dir=tmp_path / "c")
    with pytest.raises(seg_data.DataError, match="expected val.zip"):
        seg_data.load_segmentation_split(tmp_path, "val", cache_dir=tmp_path / "c")


# Augmentation -----------------------------------------------------------------------------------

def test_shift_and_flip_move_image_and_mask_as_one_window():
    rng = np.random.default_rng(0)
    images = rng.uniform(0.1, 1.0, (32, 8, 8, 1)).astype(np.float32)
    masks = (images[..., 0] * 4).astype(np.uint8)  # the mask is a function of the image
    out_i, out_m = jax.tree.map(np.asarray, seg_train.augment_pair(
        jnp.asarray(images), jnp.asarray(masks), jax.random.key(3), flip=True, max_shift=2))
    np.testing.assert_array_equal(out_m, np.where(out_i[..., 0] == 0, 0, (out_i[..., 0] * 4).astype(np.uint8)))
    assert 4 < count_shifted_crops(images, out_i, pad=2) < 28


def test_intensity_augmentation_is_a_per_image_gamma_then_an_affine_map_within_its_bounds():
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.uniform(0.2, 0.8, (64, 6, 6, 1)).astype(np.float32))
    key = jax.random.key(5)
    np.testing.assert_array_equal(np.asarray(seg_train.augment_intensity(images, key)), np.asarray(images))
    x = np.asarray(images, np.float64)
    gamma = np.log(np.asarray(seg_train.augment_intensity(images, key, max_gamma=0.5), np.float64)) / np.log(x)
    per_image = gamma.reshape(64, -1)
    np.testing.assert_allclose(per_image, np.broadcast_to(per_image[:, :1], per_image.shape), rtol=1e-4)  # one per image
    assert 1 / 1.5 - 1e-4 <= per_image.min() < 0.85 and 1.15 < per_image.max() <= 1.5 + 1e-4
    out = np.asarray(seg_train.augment_intensity(images, key, max_contrast=0.2, max_brightness=0.1), np.float64)
    for xi, yi in zip(x.reshape(64, -1), out.reshape(64, -1)):
        inside = (yi > 0) & (yi < 1)  # unclipped pixels: y = c x + b exactly
        c, b = np.polyfit(xi[inside], yi[inside], 1)
        np.testing.assert_allclose(c * xi[inside] + b, yi[inside], atol=1e-5)
        assert 0.8 - 1e-4 <= c <= 1.2 + 1e-4 and -0.1 - 1e-4 <= b <= 0.1 + 1e-4
        assert np.all(yi[~inside] == np.clip(c * xi[~inside] + b, 0, 1).round())


def test_keep_classes_relabels_every_other_class_as_background_and_the_model_and_metric_follow():
    config = configs.load_config("synthetic-seg-tiny", ["data.keep_classes=[RV, MYO]"])
    full = seg_train.load_split(configs.load_config("synthetic-seg-tiny"), "train")
    kept = seg_train.load_split(config, "train")
    assert kept.class_names == ("background", "RV", "MYO")
    expected = np.zeros_like(full.masks)  # a slow reference: pixel by pixel
    for index, old in np.ndenumerate(full.masks):
        expected[index] = {3: 1, 2: 2}.get(int(old), 0)
    np.testing.assert_array_equal(kept.masks, expected)
    assert set(np.unique(full.masks)) == {0, 1, 2, 3}  # every class was there to relabel
    assert seg_train.build_model(config).num_classes == 3
    assert seg_train.build_metric(config).class_names == ("background", "RV", "MYO")
    with pytest.raises(configs.ConfigError, match=r"keep_classes names \['PA'\].*valid: \['LV', 'MYO', 'RV'\]"):
        configs.load_config("synthetic-seg-tiny", ["data.keep_classes=[PA]"])
    with pytest.raises(configs.ConfigError, match=r"metric.lead='MYO' is not a foreground class.*\['LV'\]"):
        configs.load_config("synthetic-seg-tiny", ["data.keep_classes=[LV]"])
    with pytest.raises(configs.ConfigError, match=r"names a class twice"):
        configs.load_config("synthetic-seg-tiny", ["data.keep_classes=[MYO, myo]"])
    spelled = configs.load_config("synthetic-seg-tiny", ["data.keep_classes=[myo]"])  # the dataset's spelling wins
    assert seg_train.build_metric(spelled).class_names == seg_train.load_split(spelled, "val").class_names


def test_a_run_that_leaves_the_test_split_unseen_needs_a_validation_split():
    with pytest.raises(configs.ConfigError, match=r"score_test=false needs a validation split"):
        configs.load_config("synthetic-seg-tiny", ["train.score_test=false", "data.val_split=null"])


# Training and ablation on a run -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("seg_run")
    config = configs.load_config("synthetic-seg-tiny", ["train.epochs=2"])
    # Threefry's per-parameter hashing makes XLA:CPU compile init ~4x slower (16 s vs 4 s here); the loop
    # does not depend on the PRNG implementation.
    with jax.default_prng_impl("rbg"):
        last = runs.train(config, workdir, log=lambda s: None)
    return workdir, config, last


def test_training_smoke_run_logs_dice_per_class_and_resumes(tiny_run):
    workdir, config, last = tiny_run
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    for key in ("val_dice_lv", "val_dice_myo", "val_dice_rv", "val_dice", "val_dice_per_image", "val_loss"):
        assert np.isfinite(lines[-1][key])
    assert lines[1]["train_loss"] < lines[0]["train_loss"]
    evaluation = json.loads((workdir / "evaluation.json").read_text())
    assert evaluation["n_examples"] == 48 and 0.0 <= evaluation["test_dice"] <= 1.0
    low, high = evaluation["test_dice_myo_patients_low"], evaluation["test_dice_myo_patients_high"]  # 12 patients
    assert low < evaluation["test_dice_myo"] < high
    # the tables lead with myocardium Dice (metric.lead), so myocardium Dice on validation chose the checkpoint
    assert evaluation["chosen_by"] == "val_dice_myo"
    assert evaluation["step"] == max(lines, key=lambda x: x["val_dice_myo"])["step"]
    with jax.default_prng_impl("rbg"):
        assert runs.train(config, workdir, log=lambda s: None)["status"] == "already complete"


def test_a_selection_run_leaves_the_test_split_unseen_until_rerun_with_score_test(tiny_run, tmp_path):
    """Choosing a recipe on validation: ``train.score_test=false`` trains and validates but writes no test score;
    rerunning the same run with it true resumes (the key changes nothing trained) and scores the best checkpoint
    once, as the run trained with it true did."""
    workdir, config, _ = tiny_run
    selection = configs.load_config("synthetic-seg-tiny", ["train.epochs=2", "train.score_test=false"])
    with jax.default_prng_impl("rbg"):
        runs.train(selection, tmp_path, log=lambda s: None)
        assert not (tmp_path / "evaluation.json").exists()
        assert runs.train(config, tmp_path, log=lambda s: None)["status"] == "already complete"
    scored = json.loads((tmp_path / "evaluation.json").read_text())
    assert scored == json.loads((workdir / "evaluation.json").read_text())


def test_ablate_scores_a_segmentation_run_by_dice_with_a_qualitative_figure(tiny_run):
    workdir, _, _ = tiny_run
    ablate.ablate_workdir(workdir, ablate.Request(protocols=("baseline", "shortcut"), n_examples=12), log=lambda s: None)
    table = json.loads((workdir / "ablation" / "shortcut.json").read_text())
    assert [r["mask"] for r in table["rows"]] == [f"encoder.layer{s}.0.downsample" for s in (2, 3, 4)]
    assert all(r["metric"] == "dice_myo" and r["n_examples"] == 12 for r in table["rows"])
    header = (workdir / "ablation" / "shortcut.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["dice_mean", "dice_lv", "dice_myo", "dice_rv"]
    subject = restore_subject(workdir, n_examples=12)  # the same 12 images, with the run's weights
    for r in table["rows"]:  # the study's metric leads: myocardium Dice; the mean of the classes beside it
        stage = r["mask"].split(".")[1]  # encoder.layer2.0.downsample -> layer2
        truth = _pooled_dice_by_loop(_predict_zeroed(subject, ("encoder", stage, "0", "downsample", "conv", "kernel")),
                                     subject.targets)
        assert r["value"] == pytest.approx(truth["myo"], abs=1e-6)
        assert [r["dice_lv"], r["dice_myo"], r["dice_rv"]] == pytest.approx([truth["lv"], truth["myo"], truth["rv"]],
                                                                            abs=1e-6)
        assert r["dice_mean"] == pytest.approx((truth["lv"] + truth["myo"] + truth["rv"]) / 3, abs=1e-6)
    tested = [r for r in table["rows"] if r["kind"] != "none"]
    assert all(r["decision"] in ("trivial", "non-trivial", "improves", "undecided") for r in tested)
    assert all(r["drop_low"] <= r["drop_low_unadjusted"] <= r["drop_high_unadjusted"] <= r["drop_high"] for r in tested)
    assert all(r["family_size"] == 3 and r["resamples"] == st.bootstrap_resamples(3) for r in tested)
    assert "patients" in table["statistics"]["method"]
    figure = json.loads((workdir / "ablation" / "qualitative.json").read_text())
    assert figure["masks"]["most_harmful"] in {r["mask"] for r in table["rows"]}
    assert (workdir / "ablation" / "qualitative.png").stat().st_size > 0


def _predict_zeroed(subject, path: tuple[str, ...]) -> np.ndarray:
    """Class maps of the subject's model with the one kernel at ``path`` set to zeros, by a plain forward pass
    (not the ablation engine): the truth the engine's table is checked against."""
    variables = jax.tree.map(np.array, subject.variables)
    leaf = variables["params"]
    for key in path[:-1]:
        leaf = leaf[key]
    leaf[path[-1]] = np.zeros_like(leaf[path[-1]])
    images = subject.images.astype(np.float32) / (255.0 if subject.images.dtype == np.uint8 else 1.0)
    logits, _ = subject.model.apply(variables, (images - subject.image_mean) / subject.image_std)
    return np.asarray(jnp.argmax(logits, -1))


def _pooled_dice_by_loop(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Pooled Dice per foreground class, ``2 sum|P & T| / sum(|P| + |T|)``, summed pixel by pixel in a loop
    (1 when the class is absent from both, ACDC's ids: 1 LV cavity, 2 myocardium, 3 RV cavity)."""
    out = {}
    for class_id, name in ((1, "lv"), (2, "myo"), (3, "rv")):
        both = either = 0
        for p, t in zip(predictions.reshape(-1).tolist(), np.asarray(targets).reshape(-1).tolist()):
            both += p == class_id and t == class_id
            either += (p == class_id) + (t == class_id)
        out[name] = 2 * both / either if either else 1.0
    return out


def test_protocols_select_encoder_layers_by_the_classifier_names():
    x = jnp.zeros((1, 40, 40, 1))
    classifier = models.ResNet34(num_classes=10)
    segmenter = pspnet.PSPNet(num_classes=4)
    c_vars = jax.eval_shape(lambda: classifier.init(jax.random.key(0), x))
    s_vars = jax.eval_shape(lambda: segmenter.init(jax.random.key(0), x))
    c_layers = abl.catalogue(classifier, c_vars, input_shape=x.shape)
    s_layers = abl.catalogue(segmenter, s_vars, input_shape=x.shape)
    assert [f"encoder.{l.name}" for l in c_layers] == [l.name for l in s_layers]
    assert [l.roles for l in c_layers] == [l.roles for l in s_layers]
    for protocol in ("single", "stage-except-decomposition", "shortcut"):
        c = abl.resolve_all(protocols.protocol_specs(protocol, c_layers), c_layers)
        s = abl.resolve_all(protocols.protocol_specs(protocol, s_layers), s_layers)
        assert [(f"encoder.{a.name}", tuple(f"encoder.{n}" for n in a.layers)) for a in c] == \
               [(a.name, a.layers) for a in s]
    assert "encoder.layer3.0.downsample" in {a.name for a in s}


class _Predictions:
    """A metric plug-in that keeps the predicted class map of every example."""

    name = "predictions"

    def per_example(self, logits, masks):
        return {"prediction": jnp.argmax(logits, -1)}

    def aggregate(self, per_example):
        return 0.0, 0.0, 0.0


def test_gates_and_weights_give_identical_predictions(tiny_run):
    workdir, _, _ = tiny_run
    run = runs.restore(workdir)
    model, state, test = run.model, run.state, run.test
    variables = _perturbed(jax.device_get(state.variables))
    layers = abl.catalogue(model, variables, input_shape=(1, *test.images.shape[1:]))
    names = ("encoder.conv1", "encoder.layer1.1.conv2", "encoder.layer3.0.downsample", "encoder.layer4.1.conv1")
    ablations = [abl.Ablation("baseline", "zero-kernel", ())] + [abl.Ablation(n, "zero-kernel", (n,)) for n in names]
    images, masks = test.images[:6], test.masks[:6]
    out = {}
    for method in ("gates", "weights"):
        results = engine.evaluate(model, variables, ablations, layers, images, masks, image_mean=0.3,
                                  image_std=0.2, metric=_Predictions(), batch_size=4, method=method, progress=False)
        out[method] = {r.name: r.per_example["prediction"] for r in results}
    for a in ablations:
        np.testing.assert_array_equal(out["gates"][a.name], out["weights"][a.name], err_msg=a.name)
        assert out["gates"][a.name].shape == masks.shape
    assert any(not np.array_equal(out["gates"][n], out["gates"]["baseline"]) for n in names)


# TFDS (online) and RGB ---------------------------------------------------------------------------

def _pet_record(values):
    trimap = np.full((40, 40, 1), 2, np.uint8)  # background
    trimap[:20, :20], trimap[:20, 20:] = values  # top left / top right; bottom half stays background
    image = np.empty((40, 40, 3), np.uint8)
    image[...] = (10, 200, 255)
    return {"image": image, "segmentation_mask": trimap, "file_name": b"Abyssinian_1.jpg", "label": 0}


def test_tfds_pets_trimaps_become_background_first_classes(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = configs.load_config("pets-pspnet34", ["data.image_size=20"])
    with tfds.testing.mock_data(as_data_source_fn=lambda self, split, **kw: [_pet_record((1, 3))]):
        split = seg_train.load_split(config, "train")
    expected = np.zeros((20, 20), np.uint8)
    expected[:10, :10], expected[:10, 10:] = 1, 2  # pet, border; trimap background (2) is class 0
    np.testing.assert_array_equal(split.masks[0], expected)
    assert split.class_names == ("background", "pet", "border") and split.ids == ("Abyssinian_1.jpg",)
    np.testing.assert_allclose(split.images[0], np.broadcast_to([10 / 255, 200 / 255, 1.0], (20, 20, 3)), atol=1e-6)
    with tfds.testing.mock_data(as_data_source_fn=lambda self, split, **kw: [_pet_record((0, 3))]):
        with pytest.raises(seg_data.DataError, match=r"mask values \[0, 2, 3\]; expected \[1, 2, 3\]"):
            seg_train.load_split(config, "train")


def test_augmentation_warps_every_channel_like_the_first():
    rng = np.random.default_rng(0)
    grey = jnp.asarray(rng.random((3, 16, 16, 1), np.float32))
    rgb = jnp.concatenate([grey, 2 * grey, grey[:, ::-1]], axis=-1)
    masks = jnp.asarray(rng.integers(0, 4, (3, 16, 16)).astype(np.uint8))
    kw = {"max_shift": 3, "max_rotate": 20.0, "max_scale": 0.1}
    key = jax.random.key(1)
    out_grey, m_grey = seg_train.augment_pair(grey, masks, key, **kw)
    out_flip, _ = seg_train.augment_pair(grey[:, ::-1], masks, key, **kw)
    out_rgb, m_rgb = seg_train.augment_pair(rgb, masks, key, **kw)
    np.testing.assert_array_equal(m_rgb, m_grey)
    np.testing.assert_allclose(out_rgb[..., :1], out_grey, atol=1e-6)
    np.testing.assert_allclose(out_rgb[..., 1:2], 2 * out_grey, atol=1e-6)
    np.testing.assert_allclose(out_rgb[..., 2:], out_flip, atol=1e-6)
