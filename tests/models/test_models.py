"""Model structure against torchvision's published numbers and the conv formulations against XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import batching
from resnet_jax.models import resnet as models


def _n_params(model, size=32):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("name, classes, expected", [
    ("resnet34", 1000, 21_797_672),  # torchvision.models.resnet34()
    ("resnet34", 10, 21_289_802),
    ("resnet18", 1000, 11_689_512),
    ("resnet50", 1000, 25_557_032),
    ("resnet101", 1000, 44_549_160),
    ("resnet152", 1000, 60_192_808),
    ("wide_resnet50_2", 1000, 68_883_240),
    ("wide_resnet101_2", 1000, 126_886_696),
    ("resnext50_32x4d", 1000, 25_028_904),
    ("resnext101_32x8d", 1000, 88_791_336),
])
def test_parameter_counts_match_torchvision(name, classes, expected):
    assert _n_params(models.create_model(name, num_classes=classes)) == expected


@pytest.mark.parametrize("stem, size, stage_hw", [
    ("torchvision", 32, [8, 4, 2, 1]),  # /2 conv, /2 pool, then /2 per stage
    ("cifar", 32, [32, 16, 8, 4]),
    ("torchvision", 64, [16, 8, 4, 2]),
])
def test_output_and_intermediate_shapes(stem, size, stage_hw):
    model = models.create_model("resnet_tiny", num_classes=7, stem=stem)
    x = jnp.zeros((2, size, size, 3))
    (logits, inter), _ = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
    assert logits.shape == (2, 7)
    for s, hw in enumerate(stage_hw, start=1):
        assert inter[f"layer{s}"].shape == (2, hw, hw, 4 * 2 ** (s - 1))
    assert inter["pre_logits"].shape == (2, 32)


def test_resnet34_has_the_36_canonical_conv_names():
    model = models.create_model("resnet34", num_classes=10)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    names = models.conv_names(variables)
    expected = ["conv1"] + [
        f"layer{s}.{b}.{c}" for s, n in zip(range(1, 5), [3, 4, 6, 3]) for b in range(n)
        for c in (["conv1", "conv2", "downsample"] if b == 0 and s > 1 else ["conv1", "conv2"])
    ]
    assert names == expected
    paths = models.layer_paths(variables)
    assert paths["layer3.0.downsample"] == ("layer3", "0", "downsample", "conv")
    assert paths["layer3.0.downsample.bn"] == ("layer3", "0", "downsample", "bn")
    assert paths["fc"] == ("fc",)
    assert models.norm_of("layer2.1.conv2") == "layer2.1.bn2"
    assert models.norm_of("conv1") == "bn1"
    assert models.norm_of("layer4.0.downsample") == "layer4.0.downsample.bn"


@pytest.mark.parametrize("k, stride, dilation, hw, cin, cout", [
    (3, 1, 1, 8, 5, 6), (3, 2, 1, 9, 4, 3), (7, 2, 1, 16, 3, 8), (1, 2, 1, 7, 6, 4), (1, 1, 1, 4, 3, 5),
    (3, 1, 2, 10, 4, 4),
])
def test_patches_conv_equals_xla_conv(k, stride, dilation, hw, cin, cout):
    kx, kw = jax.random.split(jax.random.key(k * 100 + stride))
    x = jax.random.normal(kx, (2, hw, hw, cin))
    w = jax.random.normal(kw, (k, k, cin, cout))
    pad = ((dilation * (k // 2),) * 2,) * 2
    expected = jax.lax.conv_general_dilated(x, w, (stride, stride), pad, rhs_dilation=(dilation, dilation),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=jax.lax.Precision.HIGHEST)
    got = models.conv_patches(x, w, strides=stride, padding=pad, dilation=dilation)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k, stride, dilation, hw, cin, cout", [
    (3, 1, 1, (1, 1), 5, 6), (3, 1, 1, (2, 2), 4, 3), (3, 2, 1, (2, 2), 4, 5), (3, 2, 1, (3, 2), 3, 4),
    (3, 1, 2, (2, 2), 4, 4), (5, 1, 1, (2, 3), 2, 3), (3, 2, 1, (5, 5), 3, 2),
])
def test_dense_conv_equals_xla_conv(k, stride, dilation, hw, cin, cout):
    kx, kw = jax.random.split(jax.random.key(k * 10 + stride + dilation))
    x = jax.random.normal(kx, (3, *hw, cin))
    w = jax.random.normal(kw, (k, k, cin, cout))
    pad = ((dilation * (k // 2),) * 2,) * 2
    conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (stride, stride), pad, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    dense = lambda x, w: models.conv_dense(x, w, strides=stride, padding=pad, dilation=dilation)  # noqa: E731
    np.testing.assert_allclose(dense(x, w), conv(x, w), rtol=1e-4, atol=1e-4)
    # Gradients too: the operator is gathered from the kernel, so the kernel's gradient is a scatter-add.
    cot = jax.random.normal(jax.random.key(7), conv(x, w).shape)
    want = jax.grad(lambda x, w: jnp.sum(conv(x, w) * cot), argnums=(0, 1))(x, w)
    got = jax.grad(lambda x, w: jnp.sum(dense(x, w) * cot), argnums=(0, 1))(x, w)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_auto_picks_dense_only_where_the_map_has_fewer_pixels_than_taps(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert models._formulation("auto", (1, 1), (1, 1), 9) == "dense"
    assert models._formulation("auto", (2, 2), (1, 1), 9) == "dense"
    assert models._formulation("auto", (4, 4), (2, 2), 9) == "patches"
    assert models._formulation("auto", (2, 2), (1, 1), 1) == "patches"  # a 1x1 conv reads no padding
    assert models._formulation("auto", (8, 8), (4, 4), 9) == "xla"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert models._formulation("auto", (1, 1), (1, 1), 9) == "xla"


@pytest.mark.parametrize("impl", ["patches", "auto"])
def test_conv_impls_give_the_same_network_output_and_gradients(impl):
    # At 32x32 the tiny ResNet's stages 3-4 run on 2x2 and 1x1 maps, so "auto" mixes all three forms.
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    a = models.create_model("resnet_tiny", num_classes=5, conv_impl="xla")
    b = models.create_model("resnet_tiny", num_classes=5, conv_impl=impl)
    variables = a.init(jax.random.key(0), x)
    loss = lambda m: lambda p: m.apply({**variables, "params": p}, x, train=True,  # noqa: E731
                                       mutable=["batch_stats"])[0][0].sum()
    np.testing.assert_allclose(a.apply(variables, x)[0], b.apply(variables, x)[0], rtol=1e-4, atol=1e-4)
    ga, gb = jax.grad(loss(a))(variables["params"]), jax.grad(loss(b))(variables["params"])
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-4)


def test_grouped_conv_is_independent_convs_side_by_side_in_both_formulations(monkeypatch):
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    conv = models.Conv(6, (3, 3), impl="xla", groups=2)
    variables = conv.init(jax.random.key(1), x)
    kernel = variables["params"]["kernel"]
    assert kernel.shape == (3, 3, 4, 6)  # torch's (6, 4, 3, 3): in / groups
    halves = [jax.lax.conv_general_dilated(x[..., 4 * g:4 * g + 4], kernel[..., 3 * g:3 * g + 3], (1, 1),
                                           ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
              for g in range(2)]
    want = np.concatenate(halves, -1)
    np.testing.assert_allclose(conv.apply(variables, x), want, rtol=1e-5, atol=1e-5)
    patches = models.Conv(6, (3, 3), impl="patches", groups=2).apply(variables, x)  # on a block-diagonal kernel
    np.testing.assert_allclose(patches, want, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert models._formulation("auto", (1, 1), (1, 1), 9, groups=2) == "xla"  # not groups times the work


def test_groups_and_width_need_bottleneck_units():
    model = models.ResNet(stage_sizes=(1, 1, 1, 1), groups=32, width_per_group=4, num_classes=10)
    with pytest.raises(ValueError, match="groups=32, width_per_group=4 need Bottleneck units; BasicBlock has"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="resnet34"):
        models.create_model("resnet35")
    with pytest.raises(ValueError, match="cifar"):
        models.create_model("resnet_tiny", stem="imagenet").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_branches_copy_the_clean_batch_and_unknown_points_list_the_valid_ones():
    model = models.create_model("resnet_tiny", num_classes=5)
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    plain = model.apply(variables, x)[0]
    branched = model.apply(variables, x, branches={"conv1": 1, "layer3.1": 2})[0]
    # Ungated copies are the unablated model again, whichever point they branch at.
    np.testing.assert_allclose(branched, np.tile(plain, (4, 1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"layer9\.0.*valid.*layer4\.1"):
        model.apply(variables, x, branches={"layer9.0": 1})


def _gates_for(copies, sites):
    """Gate vectors with one zero per copy (copy ``k + 1`` silences ``sites[k]``), one value per row."""
    gates = {}
    for k, site_list in enumerate(sites):
        for kind, name in site_list:
            gates.setdefault(kind, {}).setdefault(name, np.ones(1 + copies, np.float32))[k + 1] = 0.0
    return gates


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_copies_joining_from_the_clean_rows_equal_full_copies(block):
    # A copy whose zero gate cuts a unit's residual branch (or its shortcut) takes the clean rows'
    # other part and computes the cut part on one row. The truth: the same gates on full copies,
    # which run the whole unit on every row.
    if block == "basic":
        model, last = models.create_model("resnet_tiny", num_classes=5), "conv2"
    else:
        model, last = models.ResNet((1, 2, 1, 1), models.Bottleneck, num_classes=5, num_filters=4), "conv3"
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    rng = np.random.default_rng(0)  # BatchNorm statistics away from the init's zeros and ones
    variables = jax.tree.map(lambda v: v + rng.normal(0, 0.2, v.shape).astype(np.float32), variables)
    sites = [
        [("kernel", "layer2.0.conv1"), ("kernel", "layer4.0.conv1")],  # joins at layer2.0, cut again later
        [("kernel", "layer2.0.downsample")],
        [("unit", "layer3.0")],
        [("output", f"layer4.0.{last}")],
        [("output", "layer4.0.downsample")],
    ]
    gates = jax.tree.map(lambda g: np.repeat(g, 3), _gates_for(len(sites), sites))
    full = model.apply(variables, x, gates=gates, branches={"layer2.0": 2, "layer3.0": 1, "layer4.0": 2})[0]
    joined = model.apply(variables, x, gates=gates, branches={
        "layer2.0": batching.Copies(residual=1, shortcut=1), "layer3.0": batching.Copies(residual=1),
        "layer4.0": batching.Copies(residual=1, shortcut=1)})[0]
    np.testing.assert_allclose(joined, full, rtol=1e-4, atol=1e-4)
    per_copy = np.asarray(joined).reshape(1 + len(sites), 3, -1)
    assert all(np.abs(per_copy[k] - per_copy[0]).max() > 1e-2 for k in range(1, 1 + len(sites)))  # gates bite


def test_copies_that_cannot_join_from_the_clean_rows_are_refused():
    model = models.create_model("resnet_tiny", num_classes=5)
    x = jnp.zeros((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"layer1\.1 has an identity shortcut"):
        model.apply(variables, x, branches={"layer1.1": batching.Copies(shortcut=1)})
    with pytest.raises(ValueError, match="stem"):
        model.apply(variables, x, branches={"conv1": batching.Copies(residual=1)})
    with pytest.raises(ValueError, match=r"unknown branch points \['layer5\.0'\]; valid: \['conv1', 'layer1\.0', "):
        model.apply(variables, x, branches={"layer5.0": 1})
    slim = models.create_model("resnet_tiny", num_classes=5, eliminated=(("conv1", "zero"),))
    with pytest.raises(ValueError, match=r"unknown eliminated unit\(s\) \['conv1'\]; valid: \['layer1\.0', "):
        slim.init(jax.random.key(0), x)  # the stem is no residual unit
