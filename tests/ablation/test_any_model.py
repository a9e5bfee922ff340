"""Ablation of models the library does not ship: linen and NNX, with and without BatchNorm, written as users write
them. The truth is always the model applied to a parameter tree masked by hand, one mask at a time."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine, networks, protocols
from resnet_jax.models import pspnet, resnet
from resnet_jax.models.batching import LayerPlace

SIZE = 16


class VGG(nn.Module):
    """A VGG-style CNN: conv-BN-ReLU twice per block, max-pool, a Dense head."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        for features in (4, 8):
            for _ in range(2):
                x = nn.Conv(features, (3, 3))(x)
                x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


class ResNetBlock(nn.Module):
    """As the flax examples write it (examples/imagenet/models.py)."""

    filters: int
    conv: type
    norm: type
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.relu(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = self.norm()(self.conv(self.filters, (3, 3))(y))
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return nn.relu(residual + y)


class FlaxExamplesResNet(nn.Module):
    """The flax examples' ResNet: train mode by default (its BatchNorm updates batch statistics)."""

    stage_sizes: tuple = (2, 2, 2, 2)
    num_filters: int = 4

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(nn.Conv, use_bias=False)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.max_pool(nn.relu(norm(name="bn_init")(x)), (3, 3), strides=(2, 2), padding="SAME")
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                x = ResNetBlock(self.num_filters * 2**i, conv, norm, (2, 2) if i > 0 and j == 0 else (1, 1))(x)
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


class MLP(nn.Module):
    depth: int = 3

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.depth - 1):
            x = nn.relu(nn.Dense(8)(x))
        return nn.Dense(10)(x)


class NNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
        self.convs = nnx.List([nnx.Conv(4, 4, (3, 3), strides=2, rngs=rngs) for _ in range(2)])
        self.head = nnx.Linear(4, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        for conv in self.convs:
            x = nnx.relu(conv(x))
        return self.head(x.mean(axis=(1, 2)))


class EveryKind(nn.Module):
    """One module of every kernel-owning type, each with a bias."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2)(x))
        x = nn.relu(nn.ConvTranspose(4, (2, 2), strides=(2, 2))(x))
        x = nn.relu(nn.DenseGeneral((2, 3))(x.mean(axis=(1, 2))))
        x = nn.relu(nn.Einsum((2, 3, 5), "bij,ijk->bk")(x))
        return nn.Dense(10)(x)


def _perturbed(variables, seed=0):
    """Random parameters and batch statistics, so that no scale or bias is its initial constant."""
    keys = iter(jax.random.split(jax.random.key(seed), 1000))

    def noise(kp, v):
        name = str(kp[-1].key)
        if name == "var":
            return jax.random.uniform(next(keys), v.shape, minval=0.5, maxval=1.5)
        return v + 0.3 * jax.random.normal(next(keys), v.shape)

    return jax.tree_util.tree_map_with_path(noise, variables)


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8), rng.integers(0, 10, n)


def _linen(model_cls, seed=0):
    model = model_cls()
    variables = model.init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)))
    return model, _perturbed(variables, seed)


def _by_hand(variables, path, keys):
    """The variables with the named leaves of the module at ``path`` set to zero, by plain dict surgery."""
    params = jax.tree.map(lambda a: a, variables["params"])
    node = params
    for p in path:
        node = node[p]
    for k in keys:
        node[k] = jnp.zeros_like(node[k])
    return {**variables, "params": params}


def _loop_predictions(forward, images):
    x = jnp.asarray(images, jnp.float32) / 255.0
    return np.concatenate([np.argmax(forward(x[i:i + 8]), -1) for i in range(0, len(x), 8)])


# Catalogues --------------------------------------------------------------------------------------

def test_a_vgg_cnn_is_catalogued_by_module_path_with_its_batchnorms():
    model, variables = _linen(VGG)
    layers = abl.catalogue(model, variables, jnp.zeros((1, SIZE, SIZE, 3)))
    assert [(l.name, l.type, l.kernel_shape, l.norm) for l in layers] == [
        ("Conv_0", "Conv", (3, 3, 3, 4), "BatchNorm_0"), ("Conv_1", "Conv", (3, 3, 4, 4), "BatchNorm_1"),
        ("Conv_2", "Conv", (3, 3, 4, 8), "BatchNorm_2"), ("Conv_3", "Conv", (3, 3, 8, 8), "BatchNorm_3"),
        ("Dense_0", "Dense", (128, 10), "")]
    assert [(l.input_shape, l.output_shape) for l in layers] == [
        ((16, 16, 3), (16, 16, 4)), ((16, 16, 4), (16, 16, 4)), ((8, 8, 4), (8, 8, 8)), ((8, 8, 8), (8, 8, 8)),
        ((128,), (10,))]
    assert [l.macs for l in layers] == [16 * 16 * 27 * 4, 16 * 16 * 36 * 4, 8 * 8 * 36 * 8, 8 * 8 * 72 * 8, 1280]
    assert all(l.stage is None and l.roles == () for l in layers)


def test_a_flax_examples_resnet_in_train_mode_is_catalogued_in_call_order():
    model, variables = _linen(FlaxExamplesResNet)
    layers = abl.catalogue(model, variables, jnp.zeros((1, SIZE, SIZE, 3)))  # its default call updates batch stats
    names = [l.name for l in layers]
    assert len(names) == 1 + 8 * 2 + 3 + 1
    assert names[:6] == ["conv_init", "ResNetBlock_0.Conv_0", "ResNetBlock_0.Conv_1", "ResNetBlock_1.Conv_0",
                         "ResNetBlock_1.Conv_1", "ResNetBlock_2.Conv_0"]
    assert names[6:8] == ["ResNetBlock_2.Conv_1", "ResNetBlock_2.conv_proj"] and names[-1] == "Dense_0"
    norms = {l.name: l.norm for l in layers}
    assert norms["ResNetBlock_2.conv_proj"] == "ResNetBlock_2.norm_proj"  # traced, not guessed from the name
    assert norms["ResNetBlock_2.Conv_1"] == "ResNetBlock_2.BatchNorm_1" and norms["conv_init"] == "bn_init"
    assert layers[-1].kernel_shape == (32, 10) and layers[-2].output_shape == (1, 1, 32)


def test_an_nnx_model_is_catalogued_from_the_module_alone():
    model = NNXCNN(nnx.Rngs(0))
    layers = abl.catalogue(model, None, jnp.zeros((1, SIZE, SIZE, 3)))
    assert [(l.name, l.type, l.output_shape, l.norm) for l in layers] == [
        ("conv1", "Conv", (16, 16, 4), "bn1"), ("convs.0", "Conv", (8, 8, 4), ""), ("convs.1", "Conv", (4, 4, 4), ""),
        ("head", "Linear", (10,), "")]
    _, state = nnx.split(model)
    assert [l.name for l in abl.catalogue(model, state, jnp.zeros((1, SIZE, SIZE, 3)))] == [l.name for l in layers]


def test_every_kernel_type_with_its_shapes_and_macs():
    model, variables = _linen(EveryKind)
    layers = abl.catalogue(model, variables, jnp.zeros((1, SIZE, SIZE, 3)))
    assert [(l.type, l.kernel_shape, l.output_shape, l.macs) for l in layers] == [
        ("Conv", (3, 3, 3, 4), (8, 8, 4), 64 * 108), ("ConvTranspose", (2, 2, 4, 4), (16, 16, 4), 64 * 64),
        ("DenseGeneral", (4, 2, 3), (2, 3), 24), ("Einsum", (2, 3, 5), (5,), 30), ("Dense", (5, 10), (10,), 50)]


def test_names_sort_naturally_and_the_catalogue_keeps_call_order():
    model, variables = _linen(functools.partial(MLP, depth=12))
    names = [l.name for l in abl.catalogue(model, variables, jnp.zeros((1, SIZE, SIZE, 3)))]
    assert names == [f"Dense_{i}" for i in range(12)]
    assert sorted(reversed(names), key=abl.natural_key) == names  # Dense_2 before Dense_10


# Selectors ---------------------------------------------------------------------------------------

def test_types_and_path_globs_select_and_structure_selectors_are_refused_naming_what_is_offered():
    model, variables = _linen(VGG)
    layers = abl.catalogue(model, variables, jnp.zeros((1, SIZE, SIZE, 3)))
    spec = abl.parse_spec({"name": "s", "select": [{"types": ["Conv"], "paths": ["Conv_[13]"]}, {"types": "Dense"}]})
    assert abl.resolve(spec, layers) == ("Conv_1", "Conv_3", "Dense_0")
    with pytest.raises(abl.SpecError, match=r"declares no structure.*types: \['Conv', 'Dense'\]; its names: \['Conv_0'"):
        abl.resolve(abl.parse_spec({"name": "x", "select": {"stages": [1]}}), layers)
    with pytest.raises(abl.SpecError, match="declares no structure.*roles select nothing"):
        abl.resolve(abl.parse_spec({"name": "x", "select": {"roles": ["shortcut"]}}), layers)
    with pytest.raises(abl.SpecError, match=r"no layer of type\(s\) \['Linear'\]; valid: \['Conv', 'Dense'\]"):
        abl.resolve(abl.parse_spec({"name": "x", "select": {"types": ["Linear"]}}), layers)
    with pytest.raises(abl.SpecError, match="lesion acts on residual units, and this model declares none"):
        abl.resolve(abl.parse_spec({"name": "x", "kind": "lesion", "select": "Conv_1"}), layers)
    with pytest.raises(abl.SpecError, match="tracing found none.*use zero-output to set 'Dense_0'"):
        abl.resolve(abl.parse_spec({"name": "x", "kind": "zero-branch", "select": "Dense_0"}), layers)
    with pytest.raises(abl.SpecError, match="needs a model that declares"):
        protocols.protocol_specs("stage-except-decomposition", layers)


# Engine against the loop -------------------------------------------------------------------------

def _engine_predictions(model, variables, ablations, layers, images, labels, **kwargs):
    results = engine.evaluate(model, variables, ablations, layers, images, labels, image_mean=0.0, image_std=1.0,
                              batch_size=8, progress=False, **kwargs)
    return {r.name: r.per_example["prediction"] for r in results}


LINEN = {"vgg": (VGG, {}), "flax-examples-resnet18": (FlaxExamplesResNet, {"train": False}), "mlp": (MLP, {})}


@pytest.mark.parametrize("name", sorted(LINEN))
def test_every_single_zero_kernel_and_zero_output_mask_equals_the_loop_over_masked_trees(name):
    model_cls, kwargs = LINEN[name]
    model, variables = _linen(model_cls)
    images, labels = _data()
    layers = abl.catalogue(model, variables, images[:1])
    forward = jax.jit(lambda v, x: model.apply(v, x, **kwargs))
    for kind, keys in (("zero-kernel", ("kernel",)), ("zero-output", ("kernel", "bias"))):
        ablations = [abl.Ablation(l.name, kind, (l.name,)) for l in layers]
        got = _engine_predictions(model, variables, ablations, layers, images, labels, apply_kwargs=kwargs)
        for l in layers:
            owned = [k for k in keys if k in networks.module_params(variables, l.path)]
            expected = _loop_predictions(functools.partial(forward, _by_hand(variables, l.path, owned)), images)
            np.testing.assert_array_equal(got[l.name], expected, err_msg=f"{name} {kind} {l.name}")
    baseline = _loop_predictions(functools.partial(forward, variables), images)
    assert any(not np.array_equal(got[l.name], baseline) for l in layers)  # the masks changed something


@pytest.mark.parametrize("name", sorted(LINEN))
def test_pairs_equal_the_loop(name):
    model_cls, kwargs = LINEN[name]
    model, variables = _linen(model_cls, seed=1)
    images, labels = _data(16, seed=1)
    layers = abl.catalogue(model, variables, images[:1])[:5]
    # Given last layer first and in chunks of 3: the engine reorders by first touched module, and each chunk's
    # program batches the models only from the first module that chunk gates.
    ablations = abl.resolve_all(protocols.protocol_specs("pairs", layers), layers)[::-1]
    got = _engine_predictions(model, variables, ablations, layers, images, labels, apply_kwargs=kwargs, chunk=3)
    forward = jax.jit(lambda v, x: model.apply(v, x, **kwargs))
    for a in ablations:
        first, second = (next(l for l in layers if l.name == n) for n in a.layers)
        masked = _by_hand(_by_hand(variables, first.path, ("kernel",)), second.path, ("kernel",))
        np.testing.assert_array_equal(got[a.name], _loop_predictions(functools.partial(forward, masked), images),
                                      err_msg=a.name)


def test_an_nnx_model_in_the_engine_equals_the_loop_over_masked_modules():
    model = NNXCNN(nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model).to_pure_dict())
    images, labels = _data()
    layers = abl.catalogue(model, None, images[:1])
    singles = [abl.Ablation(f"{k} {l.name}", k, (l.name,)) for k in ("zero-kernel", "zero-output") for l in layers]
    pairs = abl.resolve_all(protocols.protocol_specs("pairs", layers), layers)
    got = _engine_predictions(model, None, [protocols.BASELINE, *singles, *pairs], layers, images, labels,
                              method="gates")
    for a in [*singles, *pairs]:
        masked = nnx.clone(model)
        for name in a.layers:
            module = functools.reduce(lambda m, p: m[int(p)] if p.isdigit() else getattr(m, p), name.split("."), masked)
            for leaf in ("kernel",) + (("bias",) if a.kind == "zero-output" else ()):
                getattr(module, leaf)[...] = jnp.zeros_like(getattr(module, leaf)[...])
        np.testing.assert_array_equal(got[a.name], _loop_predictions(masked, images), err_msg=a.name)
    np.testing.assert_array_equal(got["baseline"], _loop_predictions(model, images))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model).to_pure_dict(), before)  # the engine changed nothing


@pytest.mark.parametrize("kind", ["zero-kernel", "zero-output", "zero-branch"])
def test_the_gate_form_equals_the_weight_form_exactly_on_every_module_type(kind):
    images, _ = _data(4)
    x = jnp.asarray(images, jnp.float32) / 255.0
    for model_cls in (EveryKind, VGG):
        model, variables = _linen(model_cls)
        network, variables = networks.as_network(model, variables)
        layers = abl.catalogue(model, variables, x[:1])
        for layer in layers:
            if kind == "zero-branch" and layer.norm_path is None:
                continue
            ablation = abl.Ablation(layer.name, kind, (layer.name,))
            weights = network.apply(abl.apply(variables, abl.make_mask(variables["params"], ablation, layers)), x)
            gates = jax.tree.map(jnp.asarray, abl.make_hook_gates([ablation], layers))  # one model: (1,) each
            gated = engine._each_model(network, variables, x, gates, None)[0]
            np.testing.assert_array_equal(np.asarray(gated), np.asarray(weights), err_msg=f"{kind} {layer.name}")
            assert not np.array_equal(np.asarray(gated), np.asarray(network.apply(variables, x))), layer.name


# One compiled call without grouped convolutions ---------------------------------------------------

def _sweep_groups(model, variables, images, labels, kind="zero-kernel", **kwargs):
    """The feature_group_count of every convolution in every program a single-mask sweep compiles."""
    layers = abl.catalogue(model, variables, images[:1], apply_kwargs=kwargs.get("apply_kwargs"))
    ablations = [abl.Ablation(l.name, kind, (l.name,)) for l in layers]
    counts = []
    engine.evaluate(model, variables, ablations, layers, images, labels, image_mean=0.0, image_std=1.0, batch_size=4,
                    progress=False, chunk=4, on_program=lambda lowered, *_: counts.append(
                        engine.convolution_groups(lowered)), **kwargs)
    return counts


@pytest.mark.parametrize("name", ["vgg", "flax-examples-resnet18", "our-resnet"])
def test_a_zero_kernel_sweep_compiles_no_convolution_grouped_beyond_the_models_own(name):
    images, labels = _data(8)
    if name == "our-resnet":  # ResNet18's layers at 4 channels: the lowered programs do not depend on the width
        model = resnet.create_model("resnet_tiny", num_classes=10, stem="cifar", conv_impl="xla")
        variables, kwargs = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))), {}
    else:
        model_cls, kwargs = LINEN[name]
        model, variables = _linen(model_cls)
    own = engine.convolution_groups(jax.jit(lambda v, x: model.apply(v, x, **kwargs)).lower(variables, images))
    sweeps = _sweep_groups(model, variables, images, labels, apply_kwargs=kwargs)
    assert own and len(sweeps) >= 2  # several chunk programs, each read
    for counts in sweeps:
        assert counts and set(counts) <= set(own), (counts, own)


def test_the_grouped_convolution_check_sees_kernels_vmapped_alongside_inputs():
    """The check can fail: masked kernels vmapped with their inputs (what the engine avoids) lower to convolutions
    grouped by the number of masks."""
    model, variables = _linen(VGG)
    images, _ = _data(4)
    kernels = jnp.stack([variables["params"]["Conv_0"]["kernel"]] * 6)

    def masked(kernel, x):
        params = {**variables["params"], "Conv_0": {**variables["params"]["Conv_0"], "kernel": kernel}}
        return model.apply({**variables, "params": params}, x)

    xs = jnp.broadcast_to(jnp.asarray(images, jnp.float32), (6, *images.shape))
    counts = engine.convolution_groups(jax.jit(jax.vmap(masked)).lower(kernels, xs))
    assert 6 in counts


# No silent wrong path ------------------------------------------------------------------------------

def test_a_model_that_trains_by_default_is_refused_with_the_fix():
    model, variables = _linen(FlaxExamplesResNet)
    images, labels = _data(8)
    layers = abl.catalogue(model, variables, images[:1])
    with pytest.raises(networks.ModelError, match=r"updates its batch statistics.*apply_kwargs=\{'train': False\}"):
        _engine_predictions(model, variables, [abl.Ablation("a", "zero-kernel", (layers[1].name,))], layers, images,
                            labels)


class IgnoresGates(VGG):
    """Says it takes the engine's gates, and drops them: the old silent path."""

    ablation_gates = True
    ablation_place = staticmethod(lambda path, module: LayerPlace(".".join(path), None, None, False)
                                  if isinstance(module, nn.Conv) else None)

    def __call__(self, x, train: bool = False, gates=None, branches=None):
        return super().__call__(x, train)


class DiscardsALayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        _ = nn.Dense(4, name="unused")(x)
        return nn.Dense(10)(x)


def test_a_gate_no_call_consumes_and_a_kernel_no_forward_reads_are_refused_naming_the_layer():
    images, labels = _data(8)
    model, variables = _linen(IgnoresGates)
    layers = abl.catalogue(model, variables, images[:1])
    assert [l.name for l in layers][:1] == ["Conv_0"] and "Dense_0" not in [l.name for l in layers]
    with pytest.raises(networks.ModelError, match="the kernel gate for 'Conv_1' reached no call"):
        _engine_predictions(model, variables, [abl.Ablation("a", "zero-kernel", ("Conv_1",))], layers, images, labels)
    model, variables = _linen(DiscardsALayer)
    layers = abl.catalogue(model, variables, images[:1])
    for method in ("gates", "weights"):
        with pytest.raises(networks.ModelError, match="params/unused/kernel, which the forward never reads"):
            _engine_predictions(model, variables, [abl.Ablation("u", "zero-kernel", ("unused",))], layers, images,
                                labels, method=method)


def test_the_baseline_runs_under_every_method():
    model, variables = _linen(MLP)
    images, labels = _data(8)
    layers = abl.catalogue(model, variables, images[:1])
    for method in ("auto", "gates", "weights"):
        got = _engine_predictions(model, variables, [protocols.BASELINE], layers, images, labels, method=method)
        np.testing.assert_array_equal(got["baseline"], _loop_predictions(
            functools.partial(jax.jit(model.apply), variables), images))


@pytest.mark.parametrize("make", [lambda: resnet.create_model("resnet34", num_classes=10),
                                  lambda: pspnet.PSPNet(encoder="resnet_tiny", head_features=8)])
def test_our_models_keep_torchvision_names_and_their_traced_norms_are_torchvisions(make):
    model = make()
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    layers = abl.catalogue(model, variables)
    prefix = "encoder." if layers[0].name.startswith("encoder.") else ""
    assert [l.norm for l in layers] == [prefix + resnet.norm_of(l.name.removeprefix(prefix)) for l in layers]
    assert all(l.type == "Conv" and l.roles for l in layers) and abl.declares_structure(layers)


def test_reinit_and_rerandomize_on_a_users_model_equal_the_hand_replaced_kernel():
    model, variables = _linen(VGG)
    images, labels = _data(8)
    layers = abl.catalogue(model, variables, images[:1])
    initial = model.init(jax.random.key(5), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
    ablations = [abl.Ablation("r", "reinit", ("Conv_2",)), abl.Ablation("d", "rerandomize", ("Dense_0",), seed=3)]
    got = _engine_predictions(model, variables, ablations, layers, images, labels, initial_params=initial)
    fresh = model.init(jax.random.key(3), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
    for a, source, path in ((ablations[0], initial, ("Conv_2",)), (ablations[1], fresh, ("Dense_0",))):
        params = jax.tree.map(lambda v: v, variables["params"])
        params[path[0]] = {**params[path[0]], "kernel": source[path[0]]["kernel"]}
        forward = functools.partial(jax.jit(model.apply), {**variables, "params": params})
        np.testing.assert_array_equal(got[a.name], _loop_predictions(forward, images), err_msg=a.name)


# Sharing the forward before each chunk's first module ----------------------------------------------

def _compositions(n):
    """Every split of range(n) into consecutive chunks."""
    if n == 0:
        yield []
        return
    for k in range(1, n + 1):
        for rest in _compositions(n - k):
            yield [(0, k)] + [(lo + k, hi + k) for lo, hi in rest]


@pytest.mark.parametrize("seed", range(5))
def test_the_chunk_plan_is_the_cheapest_split_found_by_trying_every_one(seed):
    rng = np.random.default_rng(seed)
    macs = rng.integers(1, 100, 6)
    suffix = np.cumsum(macs[::-1])[::-1]  # work from module i to the output
    firsts = np.sort(rng.integers(0, 6, 7))
    at_most = int(rng.integers(2, 5))

    def work(chunks):  # per chunk: the forward to its first module once, the rest once per mask, one forward more
        return sum(2 * suffix[0] - suffix[firsts[lo]] + (hi - lo) * suffix[firsts[lo]] for lo, hi in chunks)

    allowed = [c for c in _compositions(len(firsts)) if all(hi - lo <= at_most for lo, hi in c)]
    plan = engine.plan_chunks(list(firsts), suffix, at_most=at_most)
    assert plan in allowed
    assert work(plan) == min(work(c) for c in allowed)


def test_a_sweep_of_any_model_costs_less_than_the_loop_of_masked_forwards():
    """XLA's FLOPs of the sweep's programs against a plain forward's times the masks: masks on late modules reuse
    the forward before them."""
    model, variables = _linen(VGG)
    images, labels = _data(16)
    layers = abl.catalogue(model, variables, images[:1])
    ablations = [protocols.BASELINE] + [abl.Ablation(l.name, "zero-kernel", (l.name,)) for l in layers]
    results = engine.evaluate(model, variables, ablations, layers, images, labels, image_mean=0.0, image_std=1.0,
                              batch_size=8, progress=False)
    one = engine.program_flops(jax.jit(lambda v, x: model.apply(v, x)).lower(variables, images[:8]).compile())
    loop = one * 2 * len(ablations)  # two batches per model
    assert 0 < sum(r.flops for r in results) < 0.9 * loop
