"""The ablation engine against independent truths: literal trees, PROTOCOLS.md algebra, a slow loop."""

import json
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import devices, metrics
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine, protocols
from resnet_jax.ablation.statistics import DECISIONS
from resnet_jax.ablation.store import ResultStore
from resnet_jax.data import images as data
from resnet_jax.models import resnet as models
from tests.conftest import perturb_norms, run_cli


def _model_and_variables(name="resnet_tiny", seed=0, stem="torchvision", size=32):
    """A model with random weights AND non-trivial BN statistics (not the init's zeros and ones)."""
    model = models.create_model(name, num_classes=10, stem=stem)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
    return model, perturb_norms(variables, seed=seed)


@pytest.fixture(scope="module")
def tiny():
    model, variables = _model_and_variables()
    layers = abl.catalogue(model, variables)
    split = data.synthetic_split("test", n=40)
    return model, variables, layers, split


# Catalogue -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n_convs, n_decomposition, n_shortcut, n_adjacent", [
    ("resnet18", 20, 7, 3, 5),
    ("resnet34", 36, 7, 3, 5),
    # Bottleneck: stem + conv1 of 15 units (layer1.0.conv1 is 64->64) + all 16 conv3 + 4 projections;
    # adjacent: layer1.0.conv1, layer1.0.conv2 and the 3x3 conv2 of each later stage's first unit.
    ("resnet50", 53, 1 + 15 + 16 + 4, 4, 5),
])
def test_catalogue_counts_and_roles(name, n_convs, n_decomposition, n_shortcut, n_adjacent):
    model = models.create_model(name, num_classes=10)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    layers = abl.catalogue(model, variables)
    count = lambda role: sum(role in l.roles for l in layers)  # noqa: E731
    assert len(layers) == n_convs
    assert (count("decomposition"), count("shortcut"), count("adjacent")) == (n_decomposition, n_shortcut,
                                                                               n_adjacent)
    assert count("stem") == 1 and layers[0].name == "conv1"
    # Network order as torchvision's state_dict lists a projection unit: its branch, then downsample.
    names = [l.name for l in layers]
    unit = ["layer2.0.conv1", "layer2.0.conv2"] + ["layer2.0.conv3"] * (name == "resnet50") + ["layer2.0.downsample"]
    start = names.index("layer2.0.conv1")
    assert names[start:start + len(unit)] == unit


def test_resnet34_roles_are_the_protocol_lists():
    model = models.create_model("resnet34", num_classes=10)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    layers = {l.name: l for l in abl.catalogue(model, variables)}
    decomposition = {n for n, l in layers.items() if "decomposition" in l.roles}
    assert decomposition == {"conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1",
                             "layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"}
    adjacent = {n for n, l in layers.items() if "adjacent" in l.roles}
    assert adjacent == {"layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"}
    # 74.8 M multiply-adds per 32x32 image, as counted by hand for torchvision's ResNet34 convs.
    assert sum(l.macs for l in layers.values()) == 74_760_192
    assert layers["layer3.0.conv1"].stride == 2 and layers["layer3.0.downsample"].stride == 2
    assert layers["layer3.1.conv1"].stride == 1


# Specs ---------------------------------------------------------------------------------------

def test_spec_union_difference_and_intersection(tiny):
    _, _, layers, _ = tiny
    spec = abl.parse_spec({"name": "s", "select": [{"stages": [2], "roles": ["residual"]}, "layer4.1.*"],
                           "exclude": [{"names": ["layer4.1.conv2"]}]})
    assert abl.resolve(spec, layers) == ("layer2.1.conv1", "layer2.1.conv2", "layer4.1.conv1")
    regex = abl.parse_spec({"name": "r", "select": {"regex": [r"layer[34]\.0\.conv\d"]}})
    assert abl.resolve(regex, layers) == ("layer3.0.conv1", "layer3.0.conv2", "layer4.0.conv1", "layer4.0.conv2")


@pytest.mark.parametrize("obj, message", [
    ({"name": "x", "kind": "zero", "select": "*"}, "valid: \\['zero-kernel'"),
    ({"name": "x", "select": {"roles": ["decomp"]}}, "unknown role"),
    ({"name": "x", "select": {"layer": ["conv1"]}}, "unknown selector field"),
    ({"name": "x", "select": {"regex": ["("]}}, "invalid regex"),
    ({"select": "*"}, "needs a 'name'"),
    ({"name": "x"}, "selects nothing"),
    ({"name": "x", "select": "*", "colour": 1}, "unknown spec field"),
])
def test_invalid_specs_fail_before_compute(obj, message):
    with pytest.raises(abl.SpecError, match=message):
        abl.parse_spec(obj)


@pytest.mark.parametrize("obj, message", [
    ({"name": "x", "select": {"names": ["layer9.0.conv1"]}}, "unknown layer name.*'conv1', 'layer1.0.conv1'"),
    ({"name": "x", "select": {"stages": [7]}}, r"unknown stage\(s\) \[7\]; valid: \[1, 2, 3, 4\]"),
    ({"name": "x", "select": "layer9.*"}, "matches no layer"),
    ({"name": "x", "select": {"stages": [2]}, "exclude": {"stages": [2]}},
     r"matches no layer.*valid names: \['conv1'.*stages: \[1, 2, 3, 4\]; roles: \['stem'"),
    ({"name": "x", "kind": "lesion", "select": {"names": ["layer2.0.conv1"]}}, "identity-shortcut"),
])
def test_specs_that_do_not_resolve_name_the_valid_choices(tiny, obj, message):
    with pytest.raises(abl.SpecError, match=message):
        abl.resolve(abl.parse_spec(obj), tiny[2])


@pytest.mark.parametrize("select", [{"stages": [1], "roles": ["shortcut"]}, {"names": ["conv1"], "stages": [2]}])
def test_a_selection_that_matches_nothing_says_so_and_what_each_stage_holds(tiny, select):
    """Stage 1 of a ResNet has no projection shortcut: nothing is selected, so no exclusion removed anything."""
    with pytest.raises(abl.SpecError) as err:
        abl.resolve(abl.parse_spec({"name": "x", "select": select}), tiny[2])
    assert str(err.value) == (
        "spec 'x' (zero-kernel) selects no layer: no layer has every field of one of its selectors; roles by "
        "stage: no stage: stem, decomposition; 1: adjacent, residual; 2: decomposition, shortcut, adjacent, "
        "residual; 3: decomposition, shortcut, adjacent, residual; 4: decomposition, shortcut, adjacent, residual")


def test_spec_file_round_trip(tmp_path, tiny):
    path = tmp_path / "specs.yaml"
    path.write_text("- name: a\n  kind: zero-branch\n  select: {roles: [shortcut]}\n- name: b\n  select: conv1\n")
    specs = abl.load_specs(path)
    assert [abl.resolve(s, tiny[2]) for s in specs] == [
        ("layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"), ("conv1",)]


# Masks ---------------------------------------------------------------------------------------

def test_all_ones_mask_is_the_identity(tiny):
    _, variables, layers, _ = tiny
    mask = abl.make_mask(variables["params"], abl.Ablation("none", "zero-kernel", ()), layers)
    out = abl.apply(variables, mask)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(out)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind, zeroed", [
    ("zero-kernel", {("layer2", "1", "conv2", "kernel")}),
    ("zero-branch", {("layer2", "1", "conv2", "kernel"), ("layer2", "1", "bn2", "scale"),
                     ("layer2", "1", "bn2", "bias")}),
    ("lesion", {("layer2", "1", "bn2", "scale"), ("layer2", "1", "bn2", "bias")}),
])
def test_masked_leaves_are_exactly_zero_and_the_rest_bitwise_unchanged(tiny, kind, zeroed):
    _, variables, layers, _ = tiny
    mask = abl.make_mask(variables["params"], abl.Ablation("m", kind, ("layer2.1.conv2",)), layers)
    out = jax.jit(abl.apply)(variables, mask)
    before = dict(jax.tree_util.tree_flatten_with_path(variables["params"])[0])
    for kp, leaf in jax.tree_util.tree_flatten_with_path(out["params"])[0]:
        path = tuple(k.key for k in kp)
        if path in zeroed:
            assert np.all(np.asarray(leaf) == 0)
        else:
            assert np.array_equal(np.asarray(leaf), np.asarray(before[kp]))
    assert np.array_equal(np.asarray(jax.tree.leaves(out["batch_stats"])[0]),
                          np.asarray(jax.tree.leaves(variables["batch_stats"])[0]))


# PROTOCOLS.md algebra on a real identity unit ------------------------------------------------

def _unit_io(model, variables, x, *, train=False):
    """Input and output of residual unit layer1.1 (an identity-shortcut unit)."""
    kwargs = {"mutable": ["intermediates", "batch_stats"]} if train else {"mutable": ["intermediates"]}
    _, state = model.apply(variables, x, train=train, capture_intermediates=True, **kwargs)
    inter = state["intermediates"]["layer1"]
    return np.asarray(inter["0"]["__call__"][0]), np.asarray(inter["1"]["__call__"][0])


def _ablate(variables, layers, kind, name="layer1.1.conv2"):
    return abl.apply(variables, abl.make_mask(variables["params"], abl.Ablation("m", kind, (name,)), layers))


def test_zeroed_conv2_gives_relu_of_x_plus_the_bn_constant(tiny):
    model, variables, layers, _ = tiny
    x = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
    unit_in, unit_out = _unit_io(model, _ablate(variables, layers, "zero-kernel"), x)
    bn = variables["params"]["layer1"]["1"]["bn2"]
    stats = variables["batch_stats"]["layer1"]["1"]["bn2"]
    c2 = bn["bias"] - bn["scale"] * stats["mean"] / np.sqrt(stats["var"] + 1e-5)
    np.testing.assert_allclose(unit_out, np.maximum(unit_in + np.asarray(c2), 0), rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(c2)).max() > 0.05  # the constant is really there


def test_zeroed_conv2_in_train_mode_gives_relu_of_x_plus_beta(tiny):
    model, variables, layers, _ = tiny
    x = jax.random.normal(jax.random.key(4), (4, 32, 32, 3))
    unit_in, unit_out = _unit_io(model, _ablate(variables, layers, "zero-kernel"), x, train=True)
    beta = np.asarray(variables["params"]["layer1"]["1"]["bn2"]["bias"])
    np.testing.assert_allclose(unit_out, np.maximum(unit_in + beta, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["zero-branch", "lesion"])
def test_silenced_branch_gives_relu_of_x(tiny, kind):
    model, variables, layers, _ = tiny
    x = jax.random.normal(jax.random.key(5), (4, 32, 32, 3))
    unit_in, unit_out = _unit_io(model, _ablate(variables, layers, kind), x)
    np.testing.assert_array_equal(unit_out, np.maximum(unit_in, 0))


def test_cut_identity_gives_relu_of_the_branch(tiny):
    model, variables, _, _ = tiny
    x = jax.random.normal(jax.random.key(7), (3, 32, 32, 3))
    gates = {"identity": {"layer1.1": jnp.zeros(3)}}
    _, state = model.apply(variables, x, gates=gates, capture_intermediates=True, mutable=["intermediates"])
    unit = state["intermediates"]["layer1"]["1"]
    branch = np.asarray(unit["bn2"]["__call__"][0])
    np.testing.assert_array_equal(np.asarray(unit["__call__"][0]), np.maximum(branch, 0))
    clean_in, clean_out = _unit_io(model, variables, x)
    assert not np.allclose(clean_out, np.maximum(branch, 0))  # the shortcut mattered


def test_identity_shortcut_protocol_in_the_engine_equals_gated_forwards(tiny):
    model, variables, layers, split = tiny
    ablations = abl.resolve_all(protocols.protocol_specs("identity-shortcut", layers), layers)
    units = [a.name.removesuffix(".identity") for a in ablations]
    assert units == [u for u in dict.fromkeys(l.unit for l in layers if l.unit)
                     if abl.unit_has_identity_shortcut(layers, u)] and units
    results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels, image_mean=0.5,
                              image_std=0.25, batch_size=16, progress=False)
    x = (split.images.astype(np.float32) / 255.0 - 0.5) / 0.25
    for unit, r in zip(units, results):
        logits, _ = model.apply(variables, x, gates={"identity": {unit: jnp.zeros(len(x))}})
        np.testing.assert_array_equal(r.per_example["prediction"], np.argmax(logits, -1), err_msg=unit)
    with pytest.raises(ValueError, match="cannot be expressed by weights"):
        engine.evaluate(model, variables, ablations[:1], layers, split.images, split.labels, image_mean=0.5,
                        image_std=0.25, method="weights", progress=False)


def test_batch_statistics_mode_equals_train_mode_batchnorm_per_batch(tiny):
    model, variables, layers, split = tiny
    ablations = [abl.Ablation("baseline", "zero-kernel", ()), abl.Ablation("c2", "zero-kernel", ("layer1.1.conv2",)),
                 abl.Ablation("two", "zero-kernel", ("layer2.0.conv1", "layer3.1.conv2"))]
    results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels, image_mean=0.5,
                              image_std=0.25, batch_size=20, batchnorm="batch", progress=False)
    running = engine.evaluate(model, variables, ablations[:1], layers, split.images, split.labels, image_mean=0.5,
                              image_std=0.25, batch_size=20, progress=False)
    order = engine.batch_order(40)  # batches are a fixed random sample each; results come back in input order
    assert sorted(order) == list(range(40)) and list(order) != list(range(40))
    x = (split.images[order].astype(np.float32) / 255.0 - 0.5) / 0.25
    for a, r in zip(ablations, results):
        masked = abl.apply(variables, abl.make_mask(variables["params"], a, layers))
        expected = [np.argmax(model.apply(masked, x[i:i + 20], train=True, mutable=["batch_stats"])[0][0], -1)
                    for i in (0, 20)]  # two batches of 20, each normalised by its own statistics
        in_input_order = np.empty(40, int)
        in_input_order[order] = np.concatenate(expected)
        np.testing.assert_array_equal(r.per_example["prediction"], in_input_order, err_msg=a.name)
        assert r.value == pytest.approx(np.mean(in_input_order == split.labels))
    assert not np.array_equal(results[0].per_example["prediction"], running[0].per_example["prediction"])
    with pytest.raises(ValueError, match="divides the 40 examples"):
        engine.evaluate(model, variables, ablations, layers, split.images, split.labels, image_mean=0.5,
                        image_std=0.25, batch_size=16, batchnorm="batch", progress=False)


def test_stage_one_adjacency_read_as_its_first_conv_alone():
    model = models.create_model("resnet34", num_classes=10)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    layers = abl.catalogue(model, variables)
    narrow = abl.resolve_all(protocols.protocol_specs("stage-except-decomposition-first-conv", layers), layers)
    standard = abl.resolve_all(protocols.protocol_specs("stage-except-decomposition", layers), layers)
    assert narrow[0].layers == ("layer1.0.conv2", *standard[0].layers)
    assert [a.layers for a in narrow[1:]] == [a.layers for a in standard[1:]]


def test_zeroed_conv1_gives_relu_of_x_plus_bn2_of_conv2_of_relu_c1(tiny):
    model, variables, layers, _ = tiny
    x = jax.random.normal(jax.random.key(6), (2, 32, 32, 3))
    unit_in, unit_out = _unit_io(model, _ablate(variables, layers, "zero-kernel", "layer1.1.conv1"), x)
    p, s = variables["params"]["layer1"]["1"], variables["batch_stats"]["layer1"]["1"]
    bn = lambda v, k: (v - s[k]["mean"]) / np.sqrt(s[k]["var"] + 1e-5) * p[k]["scale"] + p[k]["bias"]  # noqa
    c1 = np.maximum(bn(np.zeros(4, np.float32), "bn1"), 0)
    h = np.broadcast_to(c1, unit_in.shape)
    conv2 = jax.lax.conv_general_dilated(h, p["conv2"]["kernel"], (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(unit_out, np.maximum(unit_in + bn(np.asarray(conv2), "bn2"), 0), atol=1e-5)


# Engine --------------------------------------------------------------------------------------

def _slow_reference(model, variables, ablation, layers, split):
    """One masked model at a time, one image at a time: the obvious loop."""
    masked = abl.apply(variables, abl.make_mask(variables["params"], ablation, layers))
    forward = jax.jit(lambda v, x: model.apply(v, x)[0])
    preds = []
    for image in split.images:
        x = (image[None].astype(np.float32) / 255.0 - 0.5) / 0.25
        preds.append(int(np.argmax(forward(masked, x))))
    return np.asarray(preds)


@pytest.mark.parametrize("kind", ["zero-kernel", "zero-branch", "lesion"])
def test_batched_engine_matches_a_plain_loop(tiny, kind):
    model, variables, layers, split = tiny
    names = ["layer1.1.conv2", "layer3.1.conv1", "layer4.1.conv2"]
    if kind != "lesion":
        names += ["conv1", "layer3.0.downsample"]
    ablations = [abl.Ablation(n, kind, (n,)) for n in names]
    # A baseline (it reads the clean rows) and a mask spanning two stages (it branches at the first).
    ablations += [abl.Ablation("baseline", kind, ()), abl.Ablation("two", kind, ("layer4.0.conv1", "layer2.1.conv2"))]
    expected = {a.name: _slow_reference(model, variables, a, layers, split) for a in ablations}
    for method in ("gates", "weights"):
        results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                                  image_mean=0.5, image_std=0.25, batch_size=16, method=method, progress=False)
        for a, r in zip(ablations, results):
            np.testing.assert_array_equal(r.per_example["prediction"], expected[a.name], err_msg=f"{method} {a.name}")
            assert r.value == pytest.approx(np.mean(expected[a.name] == split.labels))


def test_pairs_protocol_equals_a_slow_loop_over_the_pair_masks(tiny):
    model, variables, layers, split = tiny
    ablations = abl.resolve_all(protocols.protocol_specs("pairs", layers), layers)
    assert len(ablations) == len(layers) * (len(layers) - 1) // 2
    assert all(len(a.layers) == 2 for a in ablations)
    results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels, image_mean=0.5,
                              image_std=0.25, batch_size=40, progress=False)
    forward = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x)[0], -1))
    x = (split.images.astype(np.float32) / 255.0 - 0.5) / 0.25
    for a, r in zip(ablations, results):
        masked = abl.apply(variables, abl.make_mask(variables["params"], a, layers))
        np.testing.assert_array_equal(r.per_example["prediction"], np.asarray(forward(masked, x)), err_msg=a.name)


def test_interaction_is_the_pair_drop_minus_both_single_drops():
    singles = [{"layers": "a", "value": 0.7, "baseline": 0.9}, {"layers": "b", "value": 0.8, "baseline": 0.9}]
    pair = [{"layers": "a b", "value": 0.3, "baseline": 0.9}]
    row, = protocols.interactions(pair, singles)
    assert (row["drop_a"], row["drop_b"]) == (pytest.approx(0.2), pytest.approx(0.1))
    assert row["interaction"] == pytest.approx(0.6 - 0.2 - 0.1)


def test_batches_are_one_stack_on_the_devices_and_loop_inside_the_program(tiny):
    model, variables, layers, split = tiny
    inputs = engine.Inputs(model, variables, layers, split.images, split.labels, 0.5, 0.25, metrics.Accuracy(), 16)
    batches = engine.Batches.place(inputs, devices.data_mesh())
    assert batches.images.shape == (3, 16, 32, 32, 3) and batches.n_examples == 40  # 40 images: the last batch padded
    np.testing.assert_array_equal(np.asarray(batches.images).reshape(48, 32, 32, 3)[:40], split.images)
    calls = []
    ablations = [abl.Ablation("a", "zero-kernel", ("layer2.1.conv1",)), abl.Ablation("b", "zero-kernel", ("layer3.1.conv2",))]
    original = engine._collect

    def counting(forward_chunk, *args, **kwargs):
        return original(lambda x, y: calls.append(x.shape) or forward_chunk(x, y), *args, **kwargs)

    with mock.patch.object(engine, "_collect", counting):
        results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels, image_mean=0.5,
                                  image_std=0.25, batch_size=16, chunk=2, progress=False)
    assert calls == [(3, 16, 32, 32, 3)]  # one dispatch for the chunk: the three batches loop on the device
    x = (split.images.astype(np.float32) / 255.0 - 0.5) / 0.25
    for a, r in zip(ablations, results):
        masked = abl.apply(variables, abl.make_mask(variables["params"], a, layers))
        np.testing.assert_array_equal(r.per_example["prediction"], np.argmax(model.apply(masked, x)[0], -1))


def test_ablations_that_cut_every_path_from_the_input_run_on_one_row_and_match_the_loop(tiny):
    model, variables, layers, split = tiny
    stem = abl.Ablation("stem", "zero-kernel", ("conv1",))
    both = abl.Ablation("both parts", "zero-branch", ("layer2.0.conv2", "layer2.0.downsample"))
    shortcut = abl.Ablation("shortcut, later a branch", "zero-kernel", ("layer3.1.conv1", "layer2.0.downsample"))
    lesion = abl.Ablation("lesion", "lesion", ("layer2.1.conv1", "layer2.1.conv2"))
    assert [engine.placement(a, layers) for a in (stem, both, shortcut, lesion)] == [
        "constant", "constant", ("layer2.0", "shortcut"), ("layer2.1", "residual")]
    ablations = [stem, both, shortcut, lesion, abl.Ablation("baseline", "zero-kernel", ())]
    results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                              image_mean=0.5, image_std=0.25, batch_size=16, progress=False)
    for a, r in zip(ablations, results):
        expected = _slow_reference(model, variables, a, layers, split)
        np.testing.assert_array_equal(r.per_example["prediction"], expected, err_msg=a.name)
        if a in (stem, both):  # the loop, image by image, gives one output to every image too
            assert len(set(expected)) == 1


def test_our_resnet_scored_as_any_model_is_gated_by_its_module_outputs_alike(tiny, monkeypatch):
    # The path of a model that takes no gates: its modules' outputs are gated, the forward vmapped over the gates.
    model, variables, layers, split = tiny
    monkeypatch.setattr(engine, "_takes_gates", lambda model: False)
    ablations = [abl.Ablation(n, "zero-kernel", (n,)) for n in ("conv1", "layer2.0.downsample", "layer3.1.conv1")]
    ablations.append(abl.Ablation("baseline", "zero-kernel", ()))
    results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                              image_mean=0.5, image_std=0.25, batch_size=16, progress=False)
    for a, r in zip(ablations, results):
        np.testing.assert_array_equal(r.per_example["prediction"], _slow_reference(model, variables, a, layers, split))


def test_chunks_of_baselines_alone_read_the_clean_rows(tiny):
    model, variables, layers, split = tiny
    ablations = [abl.Ablation("baseline a", "zero-kernel", ()), abl.Ablation("baseline b", "zero-kernel", ()),
                 abl.Ablation("layer1.0.conv1", "zero-kernel", ("layer1.0.conv1",))]
    results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                              image_mean=0.5, image_std=0.25, batch_size=16, chunk=1, progress=False)
    for a, r in zip(ablations, results):
        np.testing.assert_array_equal(r.per_example["prediction"], _slow_reference(model, variables, a, layers, split))


def test_results_come_back_in_input_order_when_a_mask_repeats(tiny):
    model, variables, layers, split = tiny
    shortcut, stem = (abl.Ablation(n, "zero-kernel", (n,)) for n in ("layer4.0.downsample", "conv1"))
    ablations = [shortcut, stem, shortcut]  # as when the `single` and `shortcut` protocols are run together
    results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                              image_mean=0.5, image_std=0.25, batch_size=16, progress=False)
    assert [r.name for r in results] == [a.name for a in ablations]
    for a, r in zip(ablations, results):
        np.testing.assert_array_equal(r.per_example["prediction"], _slow_reference(model, variables, a, layers, split))


def resnet_traces():
    """``(traces, interceptor)``: under ``nn.intercept_methods(interceptor)`` each trace of a ResNet adds one."""
    traces = []

    def count(next_fun, args, kwargs, context):
        if isinstance(context.module, models.ResNet) and context.method_name == "__call__":
            traces.append(1)
        return next_fun(*args, **kwargs)

    return traces, count


def test_results_do_not_depend_on_chunk_size_and_compile_once_per_chunk_structure(tiny):
    model, variables, layers, split = tiny
    ablations = [abl.Ablation(l.name, "zero-kernel", (l.name,)) for l in layers[:7]]
    traces, count = resnet_traces()

    outs = {}
    for chunk in (1, 3, 7):
        traces.clear()
        with nn.intercept_methods(count):
            outs[chunk] = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                                          image_mean=0.5, image_std=0.25, batch_size=16, chunk=chunk,
                                          progress=False)
        # 3 batches (the last one padded) reuse one program per chunk structure (how many copies
        # join at which unit, and how). Chunks of 1: the stem (input-independent, one row),
        # layer1.0, layer1.1, layer2.0 (2 residual masks each, one structure): 4 programs; chunks
        # of 3 all differ; one chunk of 7: one program that applies the model twice (the clean
        # forward with its copies, and the stem mask's row).
        assert len(traces) == {1: 4, 3: 3, 7: 2}[chunk], f"chunk={chunk} traced {len(traces)} times"
    for chunk in (3, 7):
        for a, b in zip(outs[1], outs[chunk]):
            np.testing.assert_array_equal(a.per_example["prediction"], b.per_example["prediction"])
            np.testing.assert_array_equal(a.per_example["correct"], b.per_example["correct"])


def test_the_weights_path_reuses_its_program_across_calls_with_the_same_model_and_metric(tiny):
    """A search calls the engine once per step with the same model and metric: the second call traces nothing and
    scores as the first; a call with another metric object traces again (the reuse is keyed by both)."""
    from resnet_jax import metrics as metrics_lib

    model, variables, layers, split = tiny
    ablations = [abl.Ablation(l.name, "zero-kernel", (l.name,)) for l in layers[:3]]
    traces, count = resnet_traces()

    def run(metric):
        traces.clear()
        with nn.intercept_methods(count):
            results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                                      image_mean=0.5, image_std=0.25, batch_size=16, method="weights", chunk=3,
                                      metric=metric, progress=False)
        return len(traces), [r.per_example["correct"] for r in results]

    metric = metrics_lib.Accuracy()
    (first, scores), (second, again) = run(metric), run(metric)
    assert first >= 1 and second == 0
    third, fresh = run(metrics_lib.Accuracy())
    assert third == first
    for a, b, c in zip(scores, again, fresh):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_chunk_size_follows_the_memory_budget(tiny):
    layers = tiny[2]
    per_mask = 128 * engine.activation_bytes_per_example(layers)
    assert engine.chunk_size(100, batch_size=128, layers=layers, memory_budget_mb=3 * per_mask / 2**20) == 3
    assert engine.chunk_size(100, batch_size=128, layers=layers, memory_budget_mb=1e-6) == 1


def test_a_chunk_over_the_budget_by_xlas_plan_is_split_until_it_fits(tiny, monkeypatch):
    model, variables, layers, split = tiny
    # Not the stem: a stem mask alone needs the most (its copy branches before the largest maps).
    ablations = [abl.Ablation(l.name, "zero-kernel", (l.name,)) for l in layers[1:9]]
    kwargs = dict(image_mean=0.5, image_std=0.25, batch_size=16, progress=False)
    whole = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                            memory_budget_mb=1e4, **kwargs)
    assert len({r.temp_bytes for r in whole}) == 1  # one chunk
    one = engine.evaluate(model, variables, ablations[:1], layers, split.images, split.labels,
                          memory_budget_mb=1e4, **kwargs)[0].temp_bytes
    assert one < whole[0].temp_bytes
    budget = (one + whole[0].temp_bytes) / 2  # less than one chunk of 8 needs, more than one mask does
    # An estimate that undercounts: every mask lands in one chunk, and only XLA's plan can split it.
    monkeypatch.setattr(engine, "activation_bytes_per_example", lambda layers, peak=False: 1)
    split_up = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                               memory_budget_mb=budget / 2**20, **kwargs)
    assert all(0 < r.temp_bytes <= budget for r in split_up)
    assert max(r.temp_bytes for r in split_up) < whole[0].temp_bytes  # it was split
    for a, b in zip(whole, split_up):
        np.testing.assert_array_equal(a.per_example["prediction"], b.per_example["prediction"])


def test_reinit_and_rerandomize_replace_kernels(tiny):
    model, variables, layers, split = tiny
    initial = jax.tree.map(lambda v: v + 1.0, variables["params"])
    mask = abl.make_mask(variables["params"], abl.Ablation("r", "reinit", ("layer2.1.conv1",)), layers)
    out = abl.apply(variables, mask, replacement=initial)
    k = lambda t: np.asarray(t["params"]["layer2"]["1"]["conv1"]["kernel"])  # noqa: E731
    np.testing.assert_array_equal(k(out), k({"params": initial}))
    ablations = [abl.Ablation("a", "reinit", ("layer2.1.conv1",)), abl.Ablation("b", "rerandomize", ("conv1",))]
    results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                              image_mean=0.5, image_std=0.25, batch_size=16, initial_params=initial,
                              progress=False)
    assert len(results) == 2
    manual = abl.apply(variables, mask, replacement=initial)
    np.testing.assert_array_equal(results[0].per_example["prediction"],
                                  _slow_reference(model, manual, abl.Ablation("x", "zero-kernel", ()), layers, split))
    fresh = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))["params"]
    redrawn = abl.apply(variables, abl.make_mask(variables["params"], ablations[1], layers), replacement=fresh)
    np.testing.assert_array_equal(results[1].per_example["prediction"],
                                  _slow_reference(model, redrawn, abl.Ablation("x", "zero-kernel", ()), layers, split))


# Protocols and sweeps ------------------------------------------------------------------------

def test_protocol_specs_follow_protocols_md():
    model = models.create_model("resnet34", num_classes=10)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    layers = abl.catalogue(model, variables)
    resolved = lambda p, kind="zero-kernel": {  # noqa: E731
        a.name: a.layers for a in abl.resolve_all(protocols.protocol_specs(p, layers, kind=kind), layers)}
    assert len(resolved("single")) == 36
    stage = resolved("stage-except-decomposition")
    assert stage["layer1"] == ("layer1.1.conv1", "layer1.1.conv2", "layer1.2.conv1", "layer1.2.conv2")
    assert stage["layer3"] == tuple(f"layer3.{b}.conv{c}" for b in range(1, 6) for c in (1, 2))
    assert resolved("shortcut") == {f"layer{s}.0.downsample": (f"layer{s}.0.downsample",) for s in (2, 3, 4)}
    assert len(resolved("single", "lesion")) == 16 - 3  # identity-shortcut units
    with pytest.raises(abl.SpecError, match="lesion"):
        protocols.protocol_specs("shortcut", layers, kind="lesion")


def test_interrupted_sweep_keeps_finished_chunks_and_skips_them(tmp_path, tiny):
    model, variables, layers, split = tiny
    store = ResultStore(tmp_path, {"id": "f"})
    evaluated = []

    def evaluate(ablations, on_chunk, *, crash_after=None):
        def hook(chunk):
            on_chunk(chunk)
            evaluated.extend(r.name for r in chunk)
            if crash_after is not None and len(evaluated) >= crash_after:
                raise RuntimeError("power cut")
        return engine.evaluate(model, variables, ablations, layers, split.images, split.labels, image_mean=0.5,
                               image_std=0.25, batch_size=16, chunk=4, on_chunk=hook, progress=False)

    with pytest.raises(RuntimeError):
        protocols.run_protocol("single", store=store, layers=layers,
                               evaluate=lambda a, c: evaluate(a, c, crash_after=9))
    assert evaluated[0] == "baseline"
    finished = set(evaluated[1:])
    assert 8 <= len(finished) < 20  # whole chunks were kept, and the crash came mid-sweep
    evaluated.clear()
    rows = protocols.run_protocol("single", store=store, layers=layers, evaluate=evaluate)
    assert set(evaluated) == {l.name for l in layers} - finished and len(evaluated) == 20 - len(finished)
    assert [r["mask"] for r in rows] == [l.name for l in layers]
    evaluated.clear()
    protocols.run_protocol("single", store=store, layers=layers, evaluate=evaluate)
    assert evaluated == []


def test_cli_ablate_all_then_report(tmp_path):
    assert run_cli("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path)).returncode == 0
    result = run_cli("ablate", "--workdir", str(tmp_path), "--protocol", "all", "--n-examples", "64")
    assert result.returncode == 0, result.stderr
    for stem in ("baseline", "single", "stage-except-decomposition", "shortcut"):
        assert (tmp_path / "ablation" / f"{stem}.csv").is_file()
    table = json.loads((tmp_path / "ablation" / "single.json").read_text())
    assert len(table["rows"]) == 20 and (tmp_path / "ablation" / "single.png").is_file()
    row = table["rows"][0]
    assert row["delta"] == pytest.approx(row["value"] - row["baseline"])
    assert row["ci_low"] <= row["value"] <= row["ci_high"]
    tested = [r for r in table["rows"] if r["kind"] != "none"]
    assert tested and all(r["decision"] in DECISIONS and r["p_value_holm"] >= r["p_value"] for r in tested)
    assert all(r["drop"] == pytest.approx(-r["delta"], abs=1e-6) and r["margin"] == 0.01 for r in tested)
    assert all(r["family_size"] == 20 and r["drop_low"] <= r["drop_low_unadjusted"] for r in tested)
    counts = table["margin_sensitivity"]
    assert list(counts) == ["0.005", "0.01", "0.02"] and all(sum(c.values()) == 20 for c in counts.values())
    # a finished sweep at another margin: the tables are rewritten from the store, nothing evaluated again
    store_before = (tmp_path / "ablation" / "results.jsonl").read_bytes()
    wider = run_cli("ablate", "--workdir", str(tmp_path), "--protocol", "single", "--n-examples", "64",
                    "--margin", "0.5")
    assert wider.returncode == 0, wider.stderr
    assert (tmp_path / "ablation" / "results.jsonl").read_bytes() == store_before
    rewritten = json.loads((tmp_path / "ablation" / "single.json").read_text())
    assert [r["drop_low"] for r in rewritten["rows"]] == [r["drop_low"] for r in table["rows"]]
    assert sum(r.get("decision") == "non-trivial" for r in rewritten["rows"]) == rewritten["margin_sensitivity"][
        "0.5"]["non-trivial"]
    report = run_cli("report", "--workdir", str(tmp_path))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report.md").read_text()
    assert "single (zero-kernel)" in text and "ablation/single.png" in text
    assert "Decisions at margin 0.01" in text and "best checkpoint by validation accuracy" in text
    pairs = run_cli("ablate", "--workdir", str(tmp_path), "--protocol", "pairs", "--n-examples", "64")
    assert pairs.returncode == 0, pairs.stderr
    table = json.loads((tmp_path / "ablation" / "pairs.json").read_text())
    assert len(table["rows"]) == 190 and (tmp_path / "ablation" / "pairs.png").is_file()
    assert table["synergistic"][0]["interaction"] >= table["redundant"][0]["interaction"]
    assert run_cli("report", "--workdir", str(tmp_path)).returncode == 0
    assert "Most synergistic" in (tmp_path / "report.md").read_text()
    bad = run_cli("ablate", "--workdir", str(tmp_path), "--protocol", "singel")
    assert bad.returncode == 2 and "stage-except-decomposition" in bad.stderr
