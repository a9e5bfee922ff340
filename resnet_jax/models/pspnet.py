"""PSPNet on a torchvision-layout ResNet encoder.

The encoder is :class:`resnet.ResNet` itself (``num_classes=None``) under the submodule name
``encoder``, so its layers are ``encoder.conv1``, ``encoder.layer3.0.downsample``...: the ablation
catalogue, specs and gates work on it unchanged. The head uses plain ``flax.linen.Conv`` on purpose:
only the encoder's convs enter the catalogue, so the protocols ablate the encoder, as the study does.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models import batching, resnet

Array = jax.Array

CLASS_NAMES = ("background", "LV", "MYO", "RV")
"""Mask ids of ``shared/data/acdc_lv_myo`` (sunnybrook_lv_myo uses the first three)."""

OUTPUT_STRIDES = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
"""Output stride -> ``dilate_stages`` of the encoder (stages 2..4)."""


# Pyramid pooling --------------------------------------------------------------------------------

def adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
    """``(bins, size)`` averaging weights with PyTorch's adaptive bins ``floor(i*n/b) .. ceil((i+1)*n/b)``.

    Bins may overlap (when ``size`` is not a multiple of ``bins``) and may repeat pixels (when
    ``bins > size``), exactly as ``torch.nn.AdaptiveAvgPool2d`` does.
    """
    weights = np.zeros((bins, size), np.float32)
    for i in range(bins):
        start, stop = (i * size) // bins, -(-((i + 1) * size) // bins)
        weights[i, start:stop] = 1.0 / (stop - start)
    return weights


def adaptive_avg_pool(x: Array, bins: int) -> Array:
    """NHWC adaptive average pooling to ``bins x bins`` (two small matmuls, any input size)."""
    ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], bins), x.dtype)
    pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], bins), x.dtype)
    return jnp.einsum("ih,jw,nhwc->nijc", ph, pw, x)


def resize_bilinear(x: Array, hw: tuple[int, int]) -> Array:
    """Bilinear resize of an NHWC map (half-pixel centres: torch's ``align_corners=False``)."""
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), method="bilinear")


class ConvBNReLU(nn.Module):
    """Head block: bias-free conv, BatchNorm (torch defaults), ReLU."""

    features: int
    kernel_size: tuple[int, int]
    norm: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(self.features, self.kernel_size, padding="SAME", use_bias=False, dtype=self.dtype,
                    kernel_init=resnet.conv_init, name="conv")(x)
        return nn.relu(self.norm(name="bn")(x))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: per bin size, pool, 1x1 conv+BN+ReLU, upsample; concat with the input."""

    bins: Sequence[int]
    features: int
    norm: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        outs = [x]
        for b in self.bins:
            y = ConvBNReLU(self.features, (1, 1), self.norm, self.dtype, name=f"bin{b}")(adaptive_avg_pool(x, b))
            outs.append(resize_bilinear(y, x.shape[1:3]))
        return jnp.concatenate(outs, axis=-1)


# PSPNet -----------------------------------------------------------------------------------------

class PSPNet(nn.Module):
    """PSPNet returning ``(logits, intermediates)``; logits are float32 at the input's size.

    Attributes:
      num_classes: output classes, background included.
      encoder: a name in :data:`resnet.MODELS` (``resnet34``; ``resnet_tiny`` for tests).
      output_stride: 8 (stages 3-4 dilated, PSPNet's default), 16 or 32 (the plain ResNet).
      bins: pyramid pooling grid sizes.
      pool_features: channels per pyramid branch; ``None`` = encoder channels / len(bins).
      head_features: channels of the 3x3 conv after the pyramid.
      dropout: before the 1x1 classifier (needs a ``'dropout'`` rng in training).
      stem, conv_impl, dtype: passed to the encoder (``dtype`` also to the head).
      eliminated: encoder units replaced by ``relu(x + b)`` (a slim encoder; see :class:`resnet.ResNet`), named
        as the catalogue names them (``encoder.layer3.1``).

    Any input size works (also non-multiples of the output stride); ``gates`` and ``branches`` go to
    the encoder, so the ablation engine's gate formulation and shared prefixes work unchanged.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from resnet_jax.models import PSPNet
      >>> model = PSPNet(num_classes=4, encoder="resnet_tiny", pool_features=4, head_features=8)
      >>> x = jnp.zeros((1, 20, 20, 1))                    # not a multiple of the output stride
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
      >>> logits, intermediates = jax.eval_shape(model.apply, variables, x)
      >>> logits.shape, logits.dtype, sorted(intermediates)
      ((1, 20, 20, 4), dtype('float32'), ['head', 'layer1', 'layer2', 'layer3', 'layer4', 'pyramid', 'stem'])
    """

    num_classes: int = 4
    encoder: str = "resnet34"
    output_stride: int = 8
    bins: Sequence[int] = (1, 2, 3, 6)
    pool_features: int | None = None
    head_features: int = 512
    dropout: float = 0.1
    stem: str = "torchvision"
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    eliminated: Sequence[tuple[str, str]] = ()

    ablation_gates = True  # gates and branches go to the encoder; only its convs are catalogued
    ablation_place = staticmethod(resnet.ablation_place)

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False, gates: batching.Gates | None = None,
                 branches: Mapping[str, int | batching.Copies] | None = None, batch_stats: bool = False):
        """``batch_stats``: every BatchNorm normalises by the batch's statistics, dropout stays off (evaluation)."""
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"unknown output_stride {self.output_stride}; valid: {sorted(OUTPUT_STRIDES)}")
        norm = functools.partial(nn.BatchNorm, use_running_average=not (train or batch_stats), momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype, use_fast_variance=False)
        if self.encoder not in resnet.MODELS:
            raise ValueError(f"unknown encoder {self.encoder!r}; valid: {sorted(resnet.MODELS)}")
        encoder = resnet.MODELS[self.encoder](num_classes=None, stem=self.stem, conv_impl=self.conv_impl,
                                              dilate_stages=OUTPUT_STRIDES[self.output_stride], dtype=self.dtype,
                                              eliminated=tuple(self.eliminated), name="encoder")
        features, intermediates = encoder(x, train=train, gates=gates, branches=branches, batch_stats=batch_stats)
        pool_features = self.pool_features or features.shape[-1] // len(self.bins)
        y = PyramidPooling(self.bins, pool_features, norm, self.dtype, name="pyramid")(features)
        intermediates["pyramid"] = y
        y = ConvBNReLU(self.head_features, (3, 3), norm, self.dtype, name="head")(y)
        intermediates["head"] = y
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(y)
        return resize_bilinear(y.astype(jnp.float32), x.shape[1:3]), intermediates
