"""Helpers of the cross-framework tests: torchvision ResNets with non-trivial BatchNorms, real test images, and
one-shot compiles. Import after ``pytest.importorskip("torch")``."""

from __future__ import annotations

import functools
import io
import zipfile

import jax
import numpy as np
import torch

from resnet_jax.interop import convert
from tests.conftest import shared_dataset

CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def torch_net(arch: str, stem: str, calibration: np.ndarray, *, num_classes: int = 10, seed: int = 0,
              branch_end: tuple[float, float] = (0.5, 1.5)):
    """torchvision's own init for the weights; BN affine and running statistics drawn from numpy.

    Running statistics start as those of ``calibration`` (so activations keep a sane scale over
    16 residual units, as in a trained net) and are then perturbed, so none is trivial. The BatchNorm
    ending each residual branch draws its scale from ``branch_end`` (the others from 0.5-1.5): smaller
    scales keep the residual stream of a deep net (ResNet152: 50 units) at the scale a trained one has.
    """
    torch.manual_seed(seed)
    net = convert.torchvision_model(arch, num_classes, stem)
    rng = np.random.default_rng(seed)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    ends = {id(getattr(unit, "bn3", None) or unit.bn2) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)
            for unit in stage}

    def draw(fn, *args):
        return torch.from_numpy(fn(*args).astype(np.float32))

    with torch.no_grad():
        for m in bns:
            m.weight.copy_(draw(rng.uniform, *(branch_end if id(m) in ends else (0.5, 1.5)), m.num_features))
            m.bias.copy_(draw(rng.normal, 0.0, 0.2, m.num_features))
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one batch sets the statistics outright
        net.train()(torch.from_numpy(calibration))
        for m in bns:
            m.momentum = 0.1
            std = m.running_var.sqrt()
            m.running_mean.add_(std * draw(rng.normal, 0.0, 0.3, m.num_features))
            m.running_var.mul_(draw(rng.uniform, 0.5, 2.0, m.num_features))
    return net


@functools.cache
def cifar_images() -> np.ndarray:
    """16 CIFAR-10 test images spread over the classes (NCHW, normalised), from the shared copy: real images, not
    noise, so that parity holds on the activations a converted model meets."""
    path = shared_dataset("cifar10") / "test.zip"
    from PIL import Image

    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[::625][:16]
        pixels = [np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB"), np.float32) for n in names]
    x = (np.stack(pixels) / 255.0 - CIFAR_MEAN) / CIFAR_STD
    assert x.shape == (16, 32, 32, 3)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def compiled(fn, *args):
    """``jax.jit(fn)(*args)`` without LLVM optimisation: halves the compile time of these one-shot
    forward passes (the patches formulation compiles slowly) and leaves the arithmetic as is."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})(*args)


def nhwc(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 2, 3, 1)
