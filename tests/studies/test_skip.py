"""Study B against independent truths: jax.grad, a hand-built NumPy forward, slow loops, literal numbers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import configs
from resnet_jax.models import skip_cnn as nets
from resnet_jax.studies import skip as skip_study
from resnet_jax.studies.skip import analysis
from resnet_jax.training import core
from resnet_jax.training import skipping as skip_train
from tests.conftest import run_cli

SHAPE = (8, 8, 2)


WIDTHS = (4, 6, 3)  # wider then narrower: both adapters (zero-padding and slicing) are exercised


@pytest.fixture(scope="module")
def tiny():
    """A 5-class SkipCNN of widths 4/6/3 on 8x8x2 images, random biases so no layer is trivially zero."""
    model = nets.SkipCNN(num_classes=5, widths=WIDTHS)
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


def _np_adapt(h, width):
    """The channel adapter written out: copy the first channels into a zero map of the new width."""
    out = np.zeros((*h.shape[:-1], width))
    c = min(width, h.shape[-1])
    out[..., :c] = h[..., :c]
    return out


def _np_forward(params, image, depth):
    """Hand-built CNN-3 for one uint8 image: conv1..conv{depth+1} with ReLU, skipped layers adapt the channels,
    then the dense head. Also every conv's activation at full depth."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x, acts = image.astype(np.float64) / 255.0, []
    for name in nets.CONVS:
        acts.append(np.maximum(_np_conv3x3(x if not acts else acts[-1], p[name]["kernel"], p[name]["bias"]), 0))
    h = acts[0]
    for level in (1, 2):
        width = p[nets.CONVS[level]]["bias"].shape[0]
        h = np.maximum(_np_conv3x3(h, p[nets.CONVS[level]]["kernel"], p[nets.CONVS[level]]["bias"]), 0) \
            if level <= depth else _np_adapt(h, width)
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


def test_adapters_add_no_parameters_and_the_full_path_is_the_plain_cnn(tiny):
    model, params, images = tiny
    shapes = jax.tree.map(np.shape, params)
    # exactly the plain three-conv CNN's parameters: 3x3 kernels + biases and one dense head over the last width
    assert shapes == {"conv1": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "conv2": {"kernel": (3, 3, 4, 6), "bias": (6,)},
                      "conv3": {"kernel": (3, 3, 6, 3), "bias": (3,)}, "head": {"kernel": (8 * 8 * 3, 5), "bias": (5,)}}
    full, _ = model.apply({"params": params}, nets.to_input(images[:4]))
    for i in range(4):
        np.testing.assert_allclose(full[i], _np_forward(params, images[i], 2)[0], rtol=1e-4, atol=1e-4)


def test_the_adapter_pads_with_zeros_and_slices():
    h = jnp.arange(12.0).reshape(1, 1, 3, 4)
    assert nets.adapt_channels(h, 6).tolist() == [[[[*row, 0.0, 0.0] for row in h[0, 0].tolist()]]]
    assert nets.adapt_channels(h, 2).tolist() == [[[row[:2] for row in h[0, 0].tolist()]]]
    np.testing.assert_array_equal(nets.adapt_channels(h, 4), h)


def test_mac_counts_are_the_analytic_literals():
    # convs 28*28*9*(1*8, 8*16, 16*32); the head (and the exits) read 28*28*(8, 16, 32) channels into 10 classes;
    # router 14*14*9*1*8 + 7*7*9*8*16 + 7*7*16*3
    c1, c2, c3, head = 56_448, 903_168, 3_612_672, 250_880
    assert nets.skip_cnn_macs((28, 28, 1), widths=(8, 16, 32), num_classes=10) == {
        0: c1 + 62_720, 1: c1 + c2 + 125_440, 2: c1 + c2 + c3 + head}
    # narrower last: a depth-0 image's map is sliced to 3 channels before the head
    assert nets.skip_cnn_macs((8, 8, 2), widths=WIDTHS, num_classes=5)[0] == 64 * 9 * 2 * 4 + 64 * 3 * 5
    assert nets.early_exit_macs((28, 28, 1), widths=(8, 16, 32), num_classes=10) == {
        0: c1 + 62_720, 1: c1 + c2 + 62_720 + 125_440, 2: c1 + c2 + c3 + 62_720 + 125_440 + head}
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
    pre = analysis.activation_scores(model, params, images[:5], n_maps=3, batch_size=5, site="pre_relu")
    assert pre.shape == (5, 3, 3) and np.all(pre >= got[:5] - 1e-6)  # |z| >= relu(z)


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


def _slow_dense_labels(reference, scores):
    """The dense rule by counting: standing = share of reference images strictly below; best map; deeper on ties."""
    n, layers, maps = scores.shape
    labels = []
    for i in range(n):
        strength = [max(sum(r < scores[i, layer, m] for r in reference[:, layer, m]) / len(reference)
                        for m in range(maps)) for layer in range(layers)]
        labels.append(max(range(layers), key=lambda layer: (strength[layer], layer)))
    return np.array(labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_labels_match_the_counting_rule_including_ties(seed):
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 8, (30, 3, 4)).astype(np.float32)  # few values: ties within and across layers
    scores = rng.integers(0, 9, (25, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(analysis.dense_labels(reference, scores), _slow_dense_labels(reference, scores))
    np.testing.assert_array_equal(analysis.dense_labels(reference, reference), _slow_dense_labels(reference, reference))


def test_dense_labels_are_reproducible_by_seed(tiny, tmp_path):
    """Labels follow from CNN-1, and CNN-1 from its seed: the same seed gives the same labels, another seed others."""
    model, _, images = tiny
    labels = np.arange(len(images), dtype=np.int32) % 5

    def dense(seed, name):
        state = skip_train.fit(model, images, labels, tx=skip_train.rmsprop(learning_rate=1e-2), epochs=2,
                               batch_size=8, seed=seed, workdir=tmp_path / name, log=lambda _: None)
        scores = analysis.activation_scores(model, state.params, images, n_maps=3, batch_size=16)
        return analysis.dense_labels(scores, scores)

    first, again, other = dense(1, "a"), dense(1, "b"), dense(2, "c")
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert set(first.tolist()) <= {0, 1, 2}


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


def test_bucketed_inference_equals_per_image_inference(tiny):
    model, params, images = tiny
    depths = np.random.default_rng(5).choice(3, len(images))
    bucketed = analysis.predict_bucketed(model, params, images, depths, batch_size=16, min_bucket=4)
    one_by_one = np.stack([np.asarray(model.apply({"params": params}, nets.to_input(images[i:i + 1]), int(d),
                                                  method=nets.SkipCNN.truncated))[0] for i, d in enumerate(depths)])
    np.testing.assert_allclose(bucketed, one_by_one, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bucketed.argmax(-1), one_by_one.argmax(-1))


@pytest.fixture(scope="module")
def early_exit():
    model = nets.EarlyExitCNN(num_classes=5, widths=WIDTHS)
    params = jax.jit(model.init)(jax.random.key(1, impl="rbg"), jnp.zeros((1, *SHAPE)))["params"]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.3, p.shape).astype(np.float32), params)
    images = rng.integers(0, 256, (41, *SHAPE)).astype(np.uint8)
    return model, params, images


def test_early_exit_threshold_zero_is_the_shallowest_and_above_one_the_full_network(early_exit):
    model, params, images = early_exit
    every_exit = skip_train.predict_logits(model, params, images, batch_size=16)  # (3, N, classes), one pass
    # the full network is CNN-1 with the same convs and head: a SkipCNN over the same parameters at full depth
    cnn1 = nets.SkipCNN(5, WIDTHS)
    cnn1_params = {k: v for k, v in params.items() if k not in ("exit1", "exit2")}
    full = np.asarray(cnn1.apply({"params": cnn1_params}, nets.to_input(images))[0])
    np.testing.assert_allclose(every_exit[2], full, rtol=1e-5, atol=1e-5)
    for threshold, exit_taken, reference in ((0.0, 0, every_exit[0]), (1.01, 2, full)):
        logits, exits = analysis.predict_early_exit(model, params, images, threshold, batch_size=16, min_bucket=4)
        assert np.all(exits == exit_taken)
        np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(logits.argmax(-1), reference.argmax(-1))


@pytest.mark.parametrize("share", [0.3, 0.5, 0.7])
def test_staged_early_exit_equals_the_rule_on_every_exits_outputs(early_exit, share):
    model, params, images = early_exit
    every_exit = skip_train.predict_logits(model, params, images, batch_size=16)
    confidence = np.asarray(jax.nn.softmax(every_exit[:2])).max(-1)
    threshold = float(np.quantile(confidence, share))  # some images stop at each exit
    want = analysis.exit_at_threshold(every_exit, threshold)
    assert len(set(want.tolist())) > 1  # a mixed case, not all at one exit
    logits, exits = analysis.predict_early_exit(model, params, images, threshold, batch_size=16, min_bucket=4)
    np.testing.assert_array_equal(exits, want)
    np.testing.assert_allclose(logits, every_exit[want, np.arange(len(images))], rtol=1e-5, atol=1e-5)
    given, taken = analysis.predict_early_exit(model, params, images, exits=want, batch_size=16, min_bucket=4)
    np.testing.assert_array_equal(taken, want)
    np.testing.assert_allclose(given, logits, rtol=1e-5, atol=1e-5)


def test_exit_rule_on_a_literal_example():
    confident, unsure = [10.0, 0.0], [0.0, 0.0]  # top probabilities ~1 and 0.5
    logits = np.array([[unsure, confident, unsure], [unsure, unsure, unsure], [unsure, unsure, confident]])
    assert analysis.exit_at_threshold(logits, 0.9).tolist() == [2, 0, 2]
    assert analysis.exit_at_threshold(logits, 0.5).tolist() == [0, 0, 0]


def test_router_quantile_depths_on_a_literal_example():
    logits = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]]))
    assert analysis.quantile_depths(logits, 0.5).tolist() == [0, 2, 1]
    assert analysis.quantile_depths(logits, 0.1).tolist() == [0, 0, 0]
    assert analysis.quantile_depths(logits, 0.75).tolist() == [1, 2, 1]
    assert analysis.quantile_depths(logits, 1.0).tolist() == [2, 2, 2]


def test_timed_paths_run_in_rounds_and_hand_back_their_warm_up_outputs():
    """Every path once per round after one warm-up call; what a path computes is checked on the warm-up's output,
    so checking costs no extra pass over the test set."""
    calls = []
    paths = {name: (lambda name=name: calls.append(name) or np.full(3, len(name))) for name in ("full", "early", "x")}
    seconds, outputs = analysis.time_paths(paths, repeats=6, seed=1)
    assert calls[:3] == ["full", "early", "x"] and len(calls) == 3 + 6 * 3
    assert {name: len(s) for name, s in seconds.items()} == dict.fromkeys(paths, 6)
    assert {name: out.tolist() for name, out in outputs.items()} == {"full": [4] * 3, "early": [5] * 3, "x": [1] * 3}


def test_best_points_choose_the_cheapest_within_tolerance_on_validation():
    def pt(method, acc, macs, setting=""):
        return {"method": method, "setting": setting, "accuracy": acc, "macs_per_image": macs}

    validation = [pt("full", 0.98, 10), pt("x", 0.90, 2, "a"), pt("x", 0.976, 5, "b"), pt("x", 0.99, 8, "c"),
                  pt("y", 0.5, 1, "d"), pt("y", 0.6, 3, "e")]
    # on test the order differs: choosing there would take "a" for x (cheapest within tolerance) and "d" for y
    test = [pt("full", 0.98, 10), pt("x", 0.99, 2, "a"), pt("x", 0.96, 5, "b"), pt("x", 0.97, 8, "c"),
            pt("y", 0.7, 1, "d"), pt("y", 0.4, 3, "e")]
    best = {b["method"]: b for b in skip_study.best_points(validation, test, tolerance=0.005)}
    assert best["x"]["setting"] == "b" and best["x"]["meets_validation_target"]
    assert best["x"]["accuracy"] == 0.96 and best["x"]["validation_accuracy"] == 0.976
    assert best["y"]["setting"] == "e" and best["y"]["accuracy"] == 0.4 and not best["y"]["meets_validation_target"]


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


# The CLI, as a user runs it ----------------------------------------------------------------------------

def check_outputs(workdir, n_test):
    """What every Study B run leaves behind (the smoke `reproduce` run on shared MNIST checks its own with this)."""
    res = json.loads((workdir / "skip_results.json").read_text())
    report = (workdir / "skip_report.md").read_text()
    assert "## Verdict" in report and "wall ratio" in report and "## Dense labelling" in report
    assert 0 <= res["router"]["accuracy"] <= 1 and res["router"]["n"] >= 1
    assert res["dense_router"]["n"] == res["split_sizes"]["validation"]
    points = res["curves"]["test"]
    full = points[0]
    assert full["method"] == "full" and full["n"] == n_test and full["mac_ratio_vs_cnn1"] == 1
    assert {p["method"] for p in points} == set(skip_study.METHODS)
    timed = res["timing"]["paths"]
    assert set(timed) == {skip_study.point_key(p) for p in points}
    assert all(v["prediction_agreement"] == 1.0 for v in timed.values())  # timed paths = the scored points
    assert all(p["wall_ratio_vs_cnn1"] > 0 for p in points)
    repeats = res["config"]["evaluation"]["timing_repeats"]
    for p in points:  # each wall ratio has its interval (repeats >= 6), the same as its timed path's
        c = p["wall_ratio_interval"]
        assert c == timed[skip_study.point_key(p)]["wall_ratio_interval"] and c["repeats"] == repeats
        assert (c["low"] is None) == (repeats < 6) and (c["low"] is None or c["low"] <= c["ratio"] <= c["high"])
    assert full["wall_ratio_interval"]["ratio"] == 1.0 and full["wall_ratio_interval"]["low"] in (1.0, None)
    dense = {p["setting"]: p["depth_counts"] for p in points if p["method"] == "dense_router"}
    shuffled = {p["setting"][3:]: p["depth_counts"] for p in points if p["method"] == "random"}
    assert shuffled == dense  # random depth has each dense operating point's histogram
    with np.load(workdir / "selection.npz") as z:
        assert len(z["indices"]) == res["selection"]["n_labelled"] == len(z["images"])
        assert set(z["labels"].tolist()) <= {0, 1, 2}
    for figure in res["figures"].values():
        assert (workdir / figure).is_file()
    digests = json.loads((workdir / "dataset.json").read_text())  # every split the study read, with its digest
    assert {k: v["n"] for k, v in digests.items()} == {"train": res["split_sizes"]["fit"],
                                                        "val": res["split_sizes"]["validation"], "test": n_test}
    assert all(len(v["sha256"]) == 64 for v in digests.values())
    return res


CIFAR100_STAND_IN = [
    "data.name=synthetic", "data.synthetic.train_examples=256", "data.synthetic.test_examples=128",
    "data.val_examples=64", "model.widths=[4,6,8]", "model.router_channels=[4]", "train.epochs=1",
    "train.batch_size=64", "selection.images_per_map=3", "router.epochs=1", "literal.epochs=1",
    "dense.epochs=1", "evaluation.batch_size=128", "evaluation.min_bucket=128", "evaluation.timing_repeats=6",
    "evaluation.exit_thresholds=[0.5]", "evaluation.router_quantiles=[]"]
"""The CIFAR-100 preset (32x32x3, 100 classes) on the synthetic split of that shape, at a test's size."""


def test_cli_end_to_end_on_a_cifar100_stand_in_then_a_rerun_skips_every_stage(tmp_path):
    """Study B end to end through the command line (the shared-MNIST run is the smoke `reproduce`'s), on the
    CIFAR-100 path without CIFAR-100, then rerun: every stage is found done, and a changed split is refused."""
    args = ("skip-study", "--config", "cifar100-skip", "--workdir", str(tmp_path),
            *(a for value in CIFAR100_STAND_IN for a in ("--set", value)))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    res = check_outputs(tmp_path, 128)
    assert res["macs"]["cnn"]["2"] == 32 * 32 * (9 * (3 * 4 + 4 * 6 + 6 * 8) + 8 * 100)
    assert res["split_sizes"] == {"fit": 192, "validation": 64, "test": 128}
    best = {p["method"]: p for p in res["curves"]["best"]}
    assert len(best) == len(skip_study.METHODS) and all(p["n"] == 128 for p in res["curves"]["test"])
    for method, p in best.items():  # paired on the same 128 test images: the difference of the two accuracies
        if method != "full":
            assert p["vs_cnn1"]["difference"] == pytest.approx(p["accuracy"] - best["full"]["accuracy"])
            assert p["vs_cnn1"]["low"] <= p["vs_cnn1"]["difference"] <= p["vs_cnn1"]["high"]
    assert "vs_random" in best["dense_router"] and "paired difference" in " ".join(res["verdict"])
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("done earlier, skipped") == 8 and "epoch" not in second.stdout
    assert json.loads((tmp_path / "skip_results.json").read_text())["curves"] == res["curves"]
    # models trained on another fit / validation cut (as an older resnet-jax drew it) are refused, never mixed
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["validation_examples"] == res["split_sizes"]["validation"]
    (tmp_path / "split.json").write_text(json.dumps({**split, "validation_sha": "another"}))
    mixed = run_cli(*args)
    assert mixed.returncode == 2 and "another validation split" in mixed.stderr
    # --force-new's clearing removes exactly what the run wrote: a user's file and the run's config survive
    (tmp_path / "notes.txt").write_text("a user's file")
    core.clear_run(tmp_path)
    left = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert left == {"config.json", "stages.json", ".stages.json.lock", "notes.txt"}


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


def test_the_old_name_of_the_validation_share_is_refused_by_name_and_read_in_stored_configs(tmp_path):
    result = run_cli("skip-study", "--config", "mnist-skip-smoke", "--workdir", str(tmp_path / "w"),
                     "--set", "data.validation_examples=64")
    assert result.returncode == 2 and "'data.validation_examples' is now 'data.val_examples'" in result.stderr
    config = configs.load_config("mnist-skip-smoke")
    stored = {**config, "data": {k: v for k, v in config["data"].items() if k != "val_examples"}}
    stored["data"]["validation_examples"] = config["data"]["val_examples"]  # as an older resnet-jax wrote it
    assert configs.diff(stored, config) == []
    stored["data"]["validation_examples"] += 1
    assert configs.diff(stored, config) == ["data.val_examples"]
