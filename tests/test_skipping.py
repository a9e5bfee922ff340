"""Study B against independent truths: jax.grad, a hand-built NumPy forward, slow loops, literal numbers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import configs
from resnet_jax.models import skip_cnn as nets
from resnet_jax.studies import skip_study
from resnet_jax.studies import skipping as analysis
from resnet_jax.training import skipping as skip_train
from tests.conftest import run_cli, shared_dataset

SHAPE = (8, 8, 2)


@pytest.fixture(scope="module")
def tiny():
    """A 5-class SkipCNN with 4 channels on 8x8x2 images, random biases so no layer is trivially zero."""
    model = nets.SkipCNN(num_classes=5, channels=4)
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, *SHAPE)))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.1, p.shape).astype(np.float32), params)
    images = rng.integers(0, 256, (37, *SHAPE)).astype(np.uint8)
    return model, params, images


def _np_conv3x3(x, kernel, bias):
    """SAME 3x3 convolution of one (H, W, Cin) image, as a sum over kernel offsets."""
    h, w, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += padded[i:i + h, j:j + w] @ kernel[i, j]
    return out + bias


def _np_forward(params, image, depth):
    """Hand-built CNN-3 for one uint8 image: conv1..conv{depth+1} with ReLU, then the dense head."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h, acts = image.astype(np.float64) / 255.0, []
    for name in nets.CONVS:
        acts.append(np.maximum(_np_conv3x3(h if not acts else acts[-1], p[name]["kernel"], p[name]["bias"]), 0))
    h = acts[depth]
    return h.reshape(-1) @ p["head"]["kernel"] + p["head"]["bias"], acts


# Per-example depth ---------------------------------------------------------------------------------

def _sum_loss_grads(model, params, images, depths):
    labels = jnp.arange(len(images)) % model.num_classes

    def loss(p):
        logits, _ = model.apply({"params": p}, nets.to_input(images), depths)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

    return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize("depth, skipped", [(0, ("conv2", "conv3")), (1, ("conv3",))])
def test_a_layer_that_every_example_skips_gets_exactly_zero_gradient(tiny, depth, skipped):
    model, params, images = tiny
    grads = _sum_loss_grads(model, params, images[:8], np.full(8, depth))
    for name in nets.CONVS:
        g = np.concatenate([np.ravel(grads[name]["kernel"]), np.ravel(grads[name]["bias"])])
        assert (np.all(g == 0) if name in skipped else np.any(g != 0)), name


def test_in_a_mixed_batch_a_layer_gets_the_gradient_of_its_runners_only(tiny):
    model, params, images = tiny
    depths = np.array([0, 1, 2, 2, 1, 0, 2, 0, 1, 2])
    x = images[:10]
    mixed = _sum_loss_grads(model, params, x, depths)
    for name, level in (("conv2", 1), ("conv3", 2)):
        alone = _sum_loss_grads_subset(model, params, x, depths, depths >= level)
        np.testing.assert_allclose(mixed[name]["kernel"], alone[name]["kernel"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mixed[name]["bias"], alone[name]["bias"], rtol=1e-5, atol=1e-6)


def _sum_loss_grads_subset(model, params, images, depths, keep):
    labels = (jnp.arange(len(images)) % model.num_classes)[keep]

    def loss(p):
        logits, _ = model.apply({"params": p}, nets.to_input(images[keep]), depths[keep])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

    return jax.jit(jax.grad(loss))(params)


def test_skipping_is_the_identity_against_a_hand_built_forward(tiny):
    model, params, images = tiny
    depths = np.array([0, 1, 2, 0, 2, 1])
    logits, acts = model.apply({"params": params}, nets.to_input(images[:6]), depths)
    for i, d in enumerate(depths):
        expected, np_acts = _np_forward(params, images[i], int(d))
        np.testing.assert_allclose(logits[i], expected, rtol=1e-4, atol=1e-4)
        if d == 2:
            np.testing.assert_allclose(acts["conv3"][i], np_acts[2], rtol=1e-4, atol=1e-5)
        truncated = model.apply({"params": params}, nets.to_input(images[i:i + 1]), int(d), method=nets.SkipCNN.truncated)
        np.testing.assert_allclose(truncated[0], expected, rtol=1e-4, atol=1e-4)


def test_full_depth_is_depth_two(tiny):
    model, params, images = tiny
    full, _ = model.apply({"params": params}, nets.to_input(images))
    two, _ = model.apply({"params": params}, nets.to_input(images), np.full(len(images), 2))
    np.testing.assert_array_equal(full, two)


def test_mac_counts_are_the_analytic_literals():
    # conv1 28*28*9*1*16, conv 28*28*9*16*16, head 28*28*16*10; router 14*14*9*1*8 + 7*7*9*8*16 + 7*7*16*3
    assert nets.skip_cnn_macs((28, 28, 1), channels=16, num_classes=10) == {
        0: 112_896 + 125_440, 1: 112_896 + 1_806_336 + 125_440, 2: 112_896 + 2 * 1_806_336 + 125_440}
    assert nets.router_macs((28, 28, 1), channels=(8, 16)) == 14_112 + 56_448 + 2_352


# Selection ------------------------------------------------------------------------------------------

def test_activation_scores_match_a_numpy_loop(tiny):
    model, params, images = tiny
    got = analysis.activation_scores(model, params, images, n_maps=3, batch_size=16)  # 37 = 2 batches + padding
    expected = np.zeros((len(images), 3, 3))
    for n, image in enumerate(images):
        _, acts = _np_forward(params, image, 2)
        for layer, a in enumerate(acts):
            for m in range(3):
                expected[n, layer, m] = np.abs(a[..., m]).mean()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    pre = analysis.activation_scores(model, params, images[:5], n_maps=4, batch_size=5, site="pre_relu")
    assert pre.shape == (5, 3, 4) and np.all(pre[..., :3] >= got[:5] - 1e-6)  # |z| >= relu(z)


def _slow_selection(scores, per_map):
    """The study's rule written as plainly as possible: sort each map's images, label by the deepest layer."""
    n, layers, maps = scores.shape
    chosen, label_of = np.zeros((layers, maps, per_map), int), {}
    for layer in range(layers):
        for m in range(maps):
            ranked = sorted(range(n), key=lambda i: (-scores[i, layer, m], i))[:per_map]
            chosen[layer, m] = ranked
            for i in ranked:
                label_of[i] = max(label_of.get(i, -1), layer)
    indices = sorted(label_of)
    return chosen, np.array(indices), np.array([label_of[i] for i in indices])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_and_labels_match_the_slow_loop_including_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, (40, 3, 4)).astype(np.float32)  # few values: many ties, broken by index
    chosen = analysis.select_strongest(scores, per_map=7)
    indices, labels = analysis.layer_labels(chosen)
    want_chosen, want_indices, want_labels = _slow_selection(scores, 7)
    np.testing.assert_array_equal(chosen, want_chosen)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(labels, want_labels)


def test_deeper_label_wins_on_a_literal_example():
    chosen = np.array([[[4, 1]], [[1, 2]], [[2, 7]]])  # layers x 1 map x 2 images
    indices, labels = analysis.layer_labels(chosen)
    assert indices.tolist() == [1, 2, 4, 7] and labels.tolist() == [1, 2, 0, 2]


# Bucketed inference ---------------------------------------------------------------------------------

def test_bucket_sizes_and_plan():
    assert analysis.bucket_sizes(256, 32) == (32, 64, 128, 256)
    assert analysis.bucket_sizes(100, 32) == (32, 64, 100)
    assert analysis.bucket_sizes(16, 32) == (16,)
    depths = np.array([2] * 70 + [0] * 5 + [1] * 33)
    plan = analysis.bucket_plan(depths, batch_size=64, min_bucket=16)
    assert [(d, len(c), s) for d, c, s in plan] == [(0, 5, 16), (1, 33, 64), (2, 64, 64), (2, 6, 16)]
    assert sorted(np.concatenate([c for _, c, _ in plan]).tolist()) == list(range(len(depths)))


@pytest.mark.parametrize("depth_values", [(0, 1, 2), (2,), (0, 2)])
def test_bucketed_inference_equals_the_masked_model(tiny, depth_values):
    model, params, images = tiny
    depths = np.random.default_rng(len(depth_values)).choice(depth_values, len(images))
    masked = skip_train.predict_logits(model, params, images, depths, batch_size=16)
    bucketed = analysis.predict_bucketed(model, params, images, depths, batch_size=16, min_bucket=4)
    np.testing.assert_allclose(bucketed, masked, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bucketed.argmax(-1), masked.argmax(-1))


# Training, splits, configs ----------------------------------------------------------------------------

def test_fit_resumed_after_an_epoch_equals_an_uninterrupted_fit(tiny, tmp_path):
    model, _, images = tiny
    labels = np.arange(len(images), dtype=np.int32) % 5
    depths = np.arange(len(images)) % 3
    kw = dict(tx=skip_train.rmsprop(learning_rate=1e-3), depths=depths, batch_size=8, seed=3, log=lambda _: None)
    whole = skip_train.fit(model, images, labels, epochs=2, workdir=tmp_path / "a", **kw)
    skip_train.fit(model, images, labels, epochs=1, workdir=tmp_path / "b", **kw)
    resumed = skip_train.fit(model, images, labels, epochs=2, workdir=tmp_path / "b", **kw)
    restored = skip_train.fit(model, images, labels, epochs=2, workdir=tmp_path / "b", **kw)  # done: restore only
    for other in (resumed, restored):
        jax.tree.map(np.testing.assert_array_equal, whole.params, other.params)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2


def test_stratified_split_holds_out_a_fifth_of_each_label_deterministically():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [2] * 19)
    fit_part, held = skip_study.stratified_split(labels, fraction=0.2, seed=0)
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 4]
    assert sorted([*fit_part, *held]) == list(range(len(labels)))
    again = skip_study.stratified_split(labels, fraction=0.2, seed=0)
    np.testing.assert_array_equal(held, again[1])


def test_presets_resolve_and_bad_keys_fail():
    for name in configs.skipping.PRESETS:
        config = configs.load_config(name)
        assert config["selection"]["maps_per_layer"] == 10
    assert configs.load_config("mnist-skip")["train"]["epochs"] == 20
    with pytest.raises(configs.ConfigError, match="model.width"):
        configs.load_config("mnist-skip", ["model.width=3"])
    with pytest.raises(configs.ConfigError, match="mnist-skip-cpu"):
        configs.load_config("no-such-preset")


def test_cifar100_preset_end_to_end_on_a_synthetic_stand_in(tmp_path):
    """The CIFAR-100 path (32x32x3, 100 classes) without CIFAR-100: the synthetic split of that shape."""
    config = configs.load_config("cifar100-skip", [
        "data.name=synthetic", "data.synthetic.train_examples=256", "data.synthetic.test_examples=128",
        "model.channels=4", "model.router_channels=[4]", "train.epochs=1", "train.batch_size=64",
        "selection.images_per_map=3", "router.epochs=1", "literal.epochs=1",
        "evaluation.batch_size=128", "evaluation.min_bucket=128", "evaluation.timing_repeats=1"])
    res = skip_study.run_study(config, tmp_path, log=lambda _: None)
    assert res["macs"]["cnn"][2] == 32 * 32 * (9 * 3 * 4 + 2 * 9 * 4 * 4 + 4 * 100)
    assert len(res["useful"]["rows"]) == 7 and res["useful"]["rows"][0]["n"] == 128
    assert (tmp_path / "skip_report.md").is_file()


# The CLI, as a user runs it ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """Share compiled programs between the CLI subprocesses (same shapes), to keep the suite fast."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _check_outputs(workdir, n_test):
    res = json.loads((workdir / "skip_results.json").read_text())
    report = (workdir / "skip_report.md").read_text()
    assert "## CNN-2 (router)" in report and "wall ratio" in report
    assert 0 <= res["router"]["accuracy"] <= 1 and res["router"]["n"] >= 1
    rows = {r["name"]: r for r in res["useful"]["rows"]}
    assert rows["CNN-1 (full depth)"]["n"] == n_test and rows["CNN-1 (full depth)"]["mac_ratio_vs_cnn1"] == 1
    assert res["useful"]["routed_matches_gathered"] > 0.99
    assert all(v > 0 for v in res["timing"]["wall_ratio_vs_cnn1"].values())
    with np.load(workdir / "selection.npz") as z:
        assert len(z["indices"]) == res["selection"]["n_labelled"] == len(z["images"])
        assert set(z["labels"].tolist()) <= {0, 1, 2}
    for figure in res["figures"].values():
        assert (workdir / figure).is_file()
    return res


def test_cli_smoke_on_synthetic_data_then_rerun_skips_every_stage(tmp_path, compile_cache):
    args = ("skip-study", "--config", "mnist-skip-smoke", "--workdir", str(tmp_path), "--set", "data.name=synthetic")
    first = run_cli(*args, env_extra=compile_cache)
    assert first.returncode == 0, first.stderr
    res = _check_outputs(tmp_path, 256)
    second = run_cli(*args, env_extra=compile_cache)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already done") == 6 and "epoch" not in second.stdout
    assert json.loads((tmp_path / "skip_results.json").read_text())["useful"] == res["useful"]


def test_cli_smoke_on_shared_mnist(tmp_path, compile_cache):
    root = shared_dataset("mnist")
    result = run_cli("skip-study", "--config", "mnist-skip-smoke", "--workdir", str(tmp_path), "--data-dir", str(root),
                     env_extra=compile_cache)
    assert result.returncode == 0, result.stderr
    res = _check_outputs(tmp_path, 256)
    assert res["cnn1"]["test"]["accuracy"] > 0.3  # one epoch on 512 digits; chance is 0.1


def test_cli_help_names_every_preset(capsys):
    from resnet_jax import cli

    with pytest.raises(SystemExit):
        cli.main(["skip-study", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    assert all(name in text for name in configs.skipping.PRESETS)


def test_cli_unknown_preset_is_a_clear_error(tmp_path):
    result = run_cli("skip-study", "--config", "nope", "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2 and "mnist-skip-smoke" in result.stderr
    assert not (tmp_path / "w").exists()
