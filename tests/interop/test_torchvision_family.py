"""The torchvision ResNet family (ResNet-18 to 152, Wide ResNets, ResNeXts) through import and export, and the
architectures a state_dict's tensors are recognised as.

The oracle is torchvision itself: each model built with random weights and non-trivial BatchNorms, its logits in
eval mode against ours on the imported weights, and its own state_dict against our export of them. Structures
are read from torchvision models built on the ``meta`` device, and checked with zero-stride tensors, so the
120-million-parameter models cost no memory where only their shapes matter.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from resnet_jax import cli  # noqa: E402
from resnet_jax.interop import convert  # noqa: E402
from resnet_jax.models import resnet as models  # noqa: E402
from tests.interop.torch_nets import cifar_images, compiled, nhwc, torch_net  # noqa: E402

pytestmark = pytest.mark.torch

LOGIT_TOL = 1e-4
FAMILY = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
          "resnext50_32x4d", "resnext101_32x8d"]  # torchvision.models' ResNets (resnext101_64x4d aside)
SUPPORTED = ", ".join(FAMILY)


def _upsampled(x: np.ndarray) -> np.ndarray:
    """32x32 CIFAR images as 64x64 (each pixel 2x2): the torchvision stem then leaves layer4 a 2x2 map."""
    return np.ascontiguousarray(x.repeat(2, axis=2).repeat(2, axis=3))


@pytest.mark.parametrize("arch", FAMILY)
def test_every_family_member_imports_with_torchvision_logits_and_exports_back(arch):
    images = cifar_images()
    x = _upsampled(images[:2])
    # Branch-ending BN scales of a trained net's size: with 0.5-1.5, ResNet152's float32 logits (about 3 in
    # size) are 1.7e-4 from a float64 run in torch and JAX alike, rounding alone.
    net = torch_net(arch, "torchvision", _upsampled(images[8:12]), branch_end=(0.2, 0.6)).eval()
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    state_dict = net.state_dict()
    variables = convert.from_torch_state_dict(state_dict, arch=arch)
    model = models.create_model(arch, num_classes=10)
    logits = np.asarray(compiled(lambda v, x: model.apply(v, x)[0], variables, nhwc(x)))

    diff = np.abs(logits - want).max()
    print(f"{arch}: max abs logit diff {diff:.3g} (logits' std {want.std():.3g})")
    assert want.std() > 0.2  # logits far from a constant
    assert diff <= LOGIT_TOL
    assert np.array_equal(logits.argmax(-1), want.argmax(-1))

    back = convert.to_torch_state_dict(variables, arch=arch)
    assert list(back) == list(state_dict)
    assert all(torch.equal(back[k], v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked"))


# --------------------------------------------------------------------------- recognising architectures


def _shapes_only(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """A torchvision model's state_dict as zero-stride zero tensors: its keys and shapes at no memory cost."""
    with torch.device("meta"):
        net = getattr(torchvision.models, name)(weights=None, **kwargs)
    return {k: torch.zeros(()).expand(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("arch", [*FAMILY, "resnet_tiny"])
def test_structure_read_from_tensors_names_each_architecture(arch):
    if arch == "resnet_tiny":  # no torchvision twin: our own export
        sd = convert.to_torch_state_dict(_random_variables(arch), arch=arch)
    else:
        sd = _shapes_only(arch)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert convert.read_structure(shapes) == convert.structure_of(arch)
    assert convert.identify(convert.read_structure(shapes)) == arch


def _random_variables(arch: str):
    import jax
    import jax.numpy as jnp

    model = models.create_model(arch, num_classes=10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    return jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)


@pytest.mark.parametrize("given, arch, message", [
    ("resnet101", "resnet50", "The given tensors match resnet101 (stem='torchvision', num_classes=1000): "
                              "Bottleneck units 3-4-23-3, groups=1, width_per_group=64"),
    ("wide_resnet50_2", "resnet50", "The given tensors match wide_resnet50_2 (stem='torchvision', "
                                    "num_classes=1000): Bottleneck units 3-4-6-3, groups=1, width_per_group=128"),
    ("resnext50_32x4d", "resnext101_32x8d", "The given tensors match resnext50_32x4d (stem='torchvision', "
                                            "num_classes=1000): Bottleneck units 3-4-6-3, groups=32, width_per_group=4"),
    ("resnet152", "resnet18", "The given tensors match resnet152"),
])
def test_weights_of_another_architecture_say_which_they_are(given, arch, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        convert.from_torch_state_dict(_shapes_only(given), arch=arch)


@pytest.mark.parametrize("given, what", [
    ("vgg11", "not a torchvision ResNet's (no 'layer1.0.conv1.weight' and 'layer1.0.conv2.weight' conv kernels; "
              "keys: features.0.weight, features.0.bias, features.3.weight, ...; 22 tensors)"),
    ("resnext101_64x4d", "a ResNet with Bottleneck units 3-4-23-3, groups=64, width_per_group=4 (units and widths "
                         "that no supported architecture has)"),
])
def test_unsupported_architectures_are_one_line_naming_the_supported(given, what):
    with pytest.raises(ValueError) as info:
        convert.from_torch_state_dict(_shapes_only(given), arch="resnet101")
    assert str(info.value) == f"unsupported architecture: the tensors are {what}; supported: {SUPPORTED}"


def test_cli_import_torch_refuses_an_unsupported_arch_in_one_line(tmp_path, capsys):
    path = tmp_path / "vgg11.pt"
    torch.save(_shapes_only("vgg11"), path)  # zero-stride tensors save a one-value storage each
    assert cli.main(["import-torch", str(path), "--workdir", str(tmp_path / "w"), "--arch", "vgg11",
                     "--data-name", "synthetic"]) == 2
    assert capsys.readouterr().err == (f"resnet-jax import-torch: error: unsupported architecture 'vgg11'; valid: "
                                       f"{SUPPORTED}\n")
    assert cli.main(["import-torch", str(path), "--workdir", str(tmp_path / "w"), "--arch", "resnet18",
                     "--data-name", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"resnet-jax import-torch: error: {path} is not a resnet18 checkpoint: unsupported "
                          f"architecture: ") and err.endswith(f"; supported: {SUPPORTED}\n") and err.count("\n") == 1


def test_cli_import_torch_names_the_architecture_of_wrong_arch_weights(tmp_path, capsys):
    path = tmp_path / "resnet101.pt"
    torch.save(_shapes_only("resnet101", num_classes=10), path)
    assert cli.main(["import-torch", str(path), "--workdir", str(tmp_path / "w"), "--arch", "resnet50",
                     "--data-name", "synthetic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"resnet-jax import-torch: error: {path} is not a resnet50 checkpoint: unexpected key "
                          f"'layer3.6.conv1.weight'") and err.count("\n") == 1, err
    assert err.endswith("The given tensors match resnet101 (stem='torchvision', num_classes=10): Bottleneck units "
                        "3-4-23-3, groups=1, width_per_group=64\n"), err


def test_a_grouped_conv_reads_as_its_whole_input_in_the_catalogue():
    """ResNeXt's 3x3 conv keeps its 128 channels (its kernel holds 128 / 32 = 4 inputs): like ResNet50's, it is
    no decomposition, so the stage protocols keep it in their masks."""
    import jax
    import jax.numpy as jnp

    from resnet_jax.ablation import catalogue, protocols

    model = models.create_model("resnext50_32x4d", num_classes=10, stem="cifar")
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    layers = {l.name: l for l in catalogue.catalogue(model, variables, input_shape=(1, 32, 32, 3))}
    grouped = layers["layer1.0.conv2"]
    assert (grouped.kernel_shape, grouped.in_channels, grouped.out_channels) == ((3, 3, 4, 128), 128, 128)
    assert grouped.roles == ("adjacent",) and layers["layer1.1.conv2"].roles == ("residual",)
    assert grouped.macs == 32 * 32 * 128 * 9 * 4  # each output reads its group's 4 channels
    specs = protocols.protocol_specs("stage-except-decomposition", list(layers.values()), kind="zero-kernel")
    assert [s.name for s in specs] == ["layer1", "layer2", "layer3", "layer4"]
