"""Weight conversion against torchvision: key order and shapes, bitwise round trips, forward parity.

The oracle is torchvision itself: its ``state_dict`` names and shapes, and its forward pass on
the same weights (random, with BatchNorm statistics far from the identity so that every BN
term matters), in eval mode and in train mode, for both stems and both conv formulations.
"""

from __future__ import annotations

import functools
import re
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from resnet_jax.interop import convert  # noqa: E402
from resnet_jax.models import resnet as models  # noqa: E402
from tests.interop.torch_nets import cifar_images  # noqa: E402
from tests.interop.torch_nets import compiled as _compiled  # noqa: E402
from tests.interop.torch_nets import nhwc as _nhwc  # noqa: E402
from tests.interop.torch_nets import torch_net as _torch_net  # noqa: E402

pytestmark = pytest.mark.torch

LOGIT_TOL = 1e-4


# --------------------------------------------------------------------------- helpers


def _random_variables(arch: str, *, num_classes: int = 10, stem: str = "torchvision", seed: int = 0):
    """Flax variables of the right shapes filled from numpy (no JAX init, no compile)."""
    model = models.create_model(arch, num_classes=num_classes, stem=stem)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return cifar_images()


def _torch_forward(net, x: np.ndarray):
    """Logits and the outputs of the stem (after the max-pool), each stage and the pooling."""
    inter = {}
    hooks = [
        getattr(net, mod).register_forward_hook(lambda m, i, o, key=key: inter.__setitem__(key, o.detach()))
        for mod, key in [("maxpool", "stem"), ("layer1", "layer1"), ("layer2", "layer2"),
                         ("layer3", "layer3"), ("layer4", "layer4"), ("avgpool", "pre_logits")]
    ]
    try:
        with torch.no_grad():
            logits = net(torch.from_numpy(x)).numpy()
    finally:
        for h in hooks:
            h.remove()
    inter = {k: (_nhwc(v) if k != "pre_logits" else v.flatten(1).numpy()) for k, v in inter.items()}
    return logits, inter


def _assert_close(got, want, what: str, rtol: float = 5e-5):
    """Absolute error within ``rtol`` of the activations' own scale.

    float32 rounding differences grow with depth (~1e-7 after the stem, ~1e-5 after layer4 in
    both directions: torch float32 is as far from a float64 run as JAX is).
    """
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err, scale = np.abs(got - want).max(), max(1.0, np.abs(want).max())
    assert err <= rtol * scale, f"{what}: max abs diff {err:.3g} at scale {scale:.3g}"


# --------------------------------------------------------------------------- layout and round trips


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_round_trip_is_bitwise_and_matches_torchvision_keys(arch):
    variables = _random_variables(arch)
    sd = convert.to_torch_state_dict(variables, arch=arch, num_batches_tracked=7)
    net = convert.torchvision_model(arch, 10, "torchvision")
    reference = net.state_dict()
    assert list(sd) == list(reference)  # same keys in torchvision's own order
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert all(int(sd[k]) == 7 and sd[k].dtype == torch.long for k in sd if k.endswith("num_batches_tracked"))

    net.load_state_dict(sd, strict=True)
    back = convert.from_torch_state_dict(net.state_dict(), arch=arch)
    chex.assert_trees_all_equal(back, variables, strict=True)  # structure, dtypes and values

    again = convert.to_torch_state_dict(back, arch=arch)  # torch -> flax -> torch
    assert all(torch.equal(again[k], v) for k, v in net.state_dict().items() if "num_batches" not in k)


def test_layouts_follow_torch_conventions():
    variables = _random_variables("resnet18")
    sd = convert.to_torch_state_dict(variables, arch="resnet18")
    p, s = variables["params"], variables["batch_stats"]
    # conv HWIO[h, w, i, o] == OIHW[o, i, h, w]; Dense (in, out) == Linear (out, in).T
    assert sd["conv1.weight"][5, 2, 1, 6] == p["conv1"]["kernel"][1, 6, 2, 5]
    down = p["layer2"]["0"]["downsample"]
    assert sd["layer2.0.downsample.0.weight"][7, 3, 0, 0] == down["conv"]["kernel"][0, 0, 3, 7]
    assert sd["fc.weight"][4, 100] == p["fc"]["kernel"][100, 4]
    assert np.array_equal(sd["layer3.1.bn2.weight"].numpy(), p["layer3"]["1"]["bn2"]["scale"])
    assert np.array_equal(sd["layer2.0.downsample.1.running_var"].numpy(), 
                          s["layer2"]["0"]["downsample"]["bn"]["var"])
    assert int(sd["bn1.num_batches_tracked"]) == 0


def test_import_ignores_num_batches_tracked_and_accepts_numpy():
    sd = convert.torchvision_model("resnet18", 10, "cifar").state_dict()
    bare = {k: v.numpy() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    a = convert.from_torch_state_dict(sd, arch="resnet18")
    b = convert.from_torch_state_dict(bare, arch="resnet18", num_classes=10, stem="cifar")
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert a["params"]["conv1"]["kernel"].shape == (3, 3, 3, 64)


# --------------------------------------------------------------------------- mismatches


@functools.cache
def _resnet18_tensors():
    return convert.torchvision_model("resnet18", 10, "torchvision").state_dict()


def _resnet18_sd():
    return dict(_resnet18_tensors())  # a fresh dict over shared (never mutated) tensors


def _drop(key):
    return lambda sd: {k: v for k, v in sd.items() if k != key}


def _set(key, value_of):
    return lambda sd: {**sd, key: value_of(sd)}


@pytest.mark.parametrize("edit, kwargs, message", [
    # resnet18 in a resnet34: the first of many differences, in torchvision's order
    (dict, {"arch": "resnet34"}, "missing key 'layer1.2.conv1.weight' (expected shape (64, 64, 3, 3))"),
    (dict, {"arch": "resnet18", "num_classes": 100},
     "shape mismatch at 'fc.weight': got (10, 512), expected (100, 512)"),
    (dict, {"arch": "resnet18", "stem": "cifar"},
     "shape mismatch at 'conv1.weight': got (64, 3, 7, 7), expected (64, 3, 3, 3)"),
    (_drop("layer2.0.downsample.1.running_mean"), {"arch": "resnet18"},
     "missing key 'layer2.0.downsample.1.running_mean' (expected shape (128,))"),
    (_set("layer4.2.conv1.weight", lambda sd: sd["layer4.1.conv1.weight"]), {"arch": "resnet18"},
     "unexpected key 'layer4.2.conv1.weight' (shape (512, 512, 3, 3))"),
    (_set("layer1.0.conv1.weight", lambda sd: sd["layer1.0.conv1.weight"][:, :, :1, :1]), {"arch": "resnet18"},
     "shape mismatch at 'layer1.0.conv1.weight': got (64, 64, 1, 1), expected (64, 64, 3, 3)"),
])
def test_import_mismatch_names_the_first_differing_key(edit, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        convert.from_torch_state_dict(edit(_resnet18_sd()), **kwargs)
    assert "expects" in str(info.value)  # and lists what was expected around that key


def test_mismatch_message_names_the_architecture_that_fits():
    with pytest.raises(ValueError, match=r"match resnet18 \(stem='torchvision', num_classes=10\)"):
        convert.from_torch_state_dict(_resnet18_sd(), arch="resnet50")


def test_export_mismatch_and_unknown_arch():
    variables = _random_variables("resnet18")
    with pytest.raises(ValueError, match=r"missing key 'layer1\.2\.conv1\.weight'"):
        convert.to_torch_state_dict(variables, arch="resnet34")
    with pytest.raises(ValueError, match=r"unknown arch 'resnet35'"):
        convert.to_torch_state_dict(variables, arch="resnet35")
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        convert.torchvision_model("resnet_tiny", 10)


def test_missing_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'resnet-jax\[torch\]'"):
        convert.to_torch_state_dict(_random_variables("resnet18"), arch="resnet18")


# --------------------------------------------------------------------------- checkpoint files


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {}},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
])
def test_load_torch_checkpoint_accepts_common_layouts(tmp_path, wrap):
    sd = _resnet18_sd()
    torch.save(wrap(sd), tmp_path / "ckpt.pt")
    variables = convert.load_torch_checkpoint(tmp_path / "ckpt.pt", arch="resnet18")
    assert np.array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].numpy().T)


@pytest.mark.parametrize("obj, message", [
    ({"epoch": 3, "lr": 0.1}, r"not a state_dict .* top-level keys: \['epoch', 'lr'\]"),
    ([1, 2, 3], r"got list"),
])
def test_load_torch_checkpoint_rejects_other_files(tmp_path, obj, message):
    torch.save(obj, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=message):
        convert.load_torch_checkpoint(tmp_path / "ckpt.pt", arch="resnet18")


# --------------------------------------------------------------------------- forward parity


@pytest.mark.parametrize("impl", ["xla", "patches", "auto"])
@pytest.mark.parametrize("stem", ["torchvision", "cifar"])
def test_eval_forward_matches_torchvision(images, stem, impl):
    x = images[:8]
    net = _torch_net("resnet34", stem, images[8:]).eval()
    want_logits, want = _torch_forward(net, x)
    variables = convert.from_torch_state_dict(net.state_dict(), arch="resnet34")
    model = models.create_model("resnet34", num_classes=10, stem=stem, conv_impl=impl)
    logits, inter = _compiled(lambda v, x: model.apply(v, x, train=False), variables, _nhwc(x))

    diff = np.abs(np.asarray(logits) - want_logits).max()
    print(f"resnet34 stem={stem} impl={impl} eval: max abs logit diff {diff:.3g}")
    assert diff <= LOGIT_TOL
    assert want_logits.std() > 0.3  # the weights give logits far from a constant
    for key in ("stem", "layer1", "layer2", "layer3", "layer4", "pre_logits"):
        _assert_close(inter[key], want[key], key)


@pytest.mark.parametrize("impl", ["xla", "patches"])
@pytest.mark.parametrize("stem", ["torchvision", "cifar"])
def test_train_forward_and_running_stats_match_torchvision(images, stem, impl):
    x = images[:8]
    net = _torch_net("resnet34", stem, images[8:], seed=1)
    variables = convert.from_torch_state_dict(net.state_dict(), arch="resnet34")
    net.train()
    want_logits, want = _torch_forward(net, x)  # updates net's running stats in place
    model = models.create_model("resnet34", num_classes=10, stem=stem, conv_impl=impl)
    (logits, inter), updates = _compiled(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, _nhwc(x)
    )

    diff = np.abs(np.asarray(logits) - want_logits).max()
    print(f"resnet34 stem={stem} impl={impl} train: max abs logit diff {diff:.3g}")
    assert diff <= LOGIT_TOL
    for key in ("stem", "layer1", "layer2", "layer3", "layer4"):
        _assert_close(inter[key], want[key], key)

    # Both normalise with the biased batch variance, and torch momentum 0.1 is flax momentum
    # 0.9, so the running means agree. The running variances do not: torch folds the UNBIASED
    # variance (n / (n - 1) times the biased one, n = batch * H * W) into running_var, flax the
    # biased one (flax.linen.BatchNorm, `ra_var = m * ra_var + (1 - m) * var`). Undoing that
    # factor on flax's update must give torch's, up to rounding.
    old = convert.to_torch_state_dict(variables, arch="resnet34")
    new = convert.to_torch_state_dict({"params": variables["params"], **updates}, arch="resnet34")
    got = net.state_dict()
    stem_hw = inter["stem"].shape[1] * (2 if stem == "torchvision" else 1)  # before the max-pool
    for key in got:
        if key.endswith("running_mean"):
            _assert_close(new[key], got[key], key)
        elif key.endswith("running_var"):
            layer = key.split(".")[0]
            hw = stem_hw if layer == "bn1" else inter[layer].shape[1]
            n = x.shape[0] * hw * hw
            batch_var_biased = (new[key].numpy() - 0.9 * old[key].numpy()) / 0.1
            _assert_close(0.9 * old[key].numpy() + 0.1 * batch_var_biased * n / (n - 1), got[key], key)
    key = "layer4.0.bn1.running_var"  # the fewest values per channel: the largest n / (n - 1)
    assert not np.allclose(new[key].numpy(), got[key].numpy(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("impl", ["xla", "patches"])
def test_resnet50_eval_forward_matches_torchvision(images, impl):
    # The CIFAR stem: the torchvision one is covered above, and with it layer4 is 1x1 and float32
    # rounding alone (torch float32 vs torch float64) reaches ~1e-4 in ResNet50's logits.
    x = images[:4]
    net = _torch_net("resnet50", "cifar", images[8:], seed=2).eval()
    want_logits, want = _torch_forward(net, x)
    variables = convert.from_torch_state_dict(net.state_dict(), arch="resnet50")
    model = models.create_model("resnet50", num_classes=10, stem="cifar", conv_impl=impl)
    logits, inter = _compiled(lambda v, x: model.apply(v, x, train=False), variables, _nhwc(x))

    diff = np.abs(np.asarray(logits) - want_logits).max()
    print(f"resnet50 impl={impl} eval: max abs logit diff {diff:.3g}")
    assert diff <= LOGIT_TOL
    for key in ("stem", "layer1", "layer2", "layer3", "layer4", "pre_logits"):
        _assert_close(inter[key], want[key], key)
