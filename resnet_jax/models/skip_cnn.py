"""Study B's networks: a three-conv CNN whose depth is chosen per example, and the router (PROTOCOLS.md).

CNN-1 and CNN-3 are one module, :class:`SkipCNN`: ``conv1`` maps the input channels to
``channels``; ``conv2`` and ``conv3`` map ``channels -> channels``; 3x3 kernels, SAME padding,
bias, ReLU, no pooling; then one dense layer over the flattened map. Only conv2 and conv3 are ever
skipped (layer label 0 skips both, label 1 skips conv3, label 2 none), so conv1 may change the
channel count and no input projection is needed. An example's *depth* is its layer label: it runs
``conv1 .. conv{depth+1}``.

Two executions of the same parameters:
  * masked (``SkipCNN.__call__(x, depth)``): every layer runs on the whole batch and
    ``jnp.where`` keeps a skipped layer's input, so the layer is the identity for that example and
    receives exactly zero gradient from it. Training uses this; it saves no compute.
  * bucketed (``studies.skipping.predict_bucketed``): examples grouped by depth run only their
    layers (``SkipCNN.truncated``), padded to a few static batch sizes. This is where compute is saved.

CNN-2, the router, is :class:`Router`: a small strided CNN over the three layer labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
DEPTHS = (0, 1, 2)
CONVS = ("conv1", "conv2", "conv3")
SITES = ("relu", "pre_relu")
"""Where a conv's activation is read for selection: after its ReLU (a Keras ``Conv2D(activation=
'relu')`` output, the default) or before it."""


# Models ------------------------------------------------------------------------------------------

def _conv3x3(channels: int, *, strides: int = 1, name: str | None = None) -> nn.Conv:
    return nn.Conv(channels, (3, 3), strides=strides, padding="SAME", name=name)


class SkipCNN(nn.Module):
    """CNN-1 (``depth=None``: full depth) and CNN-3 (``depth``: one of 0, 1, 2 per example).

    ``__call__`` returns ``(logits, activations)``; ``activations[name]`` is conv ``name``'s
    output after ReLU and ``activations[name + '_pre']`` before, computed for the whole batch (for
    an example that skips the layer: on the input it would have had, then discarded).
    """

    num_classes: int
    channels: int = 32

    def setup(self):
        self.conv1 = _conv3x3(self.channels)
        self.conv2 = _conv3x3(self.channels)
        self.conv3 = _conv3x3(self.channels)
        self.head = nn.Dense(self.num_classes)

    def _run(self, name: str, h: Array, acts: dict[str, Array]) -> Array:
        z = getattr(self, name)(h)
        acts[f"{name}_pre"], acts[name] = z, nn.relu(z)
        return acts[name]

    def __call__(self, x: Array, depth: Array | None = None) -> tuple[Array, dict[str, Array]]:
        acts: dict[str, Array] = {}
        h = self._run("conv1", x, acts)
        for level, name in enumerate(CONVS[1:], start=1):
            out = self._run(name, h, acts)
            # where, not a multiply: the cotangent of `out` is exactly zero where the layer is skipped.
            h = out if depth is None else jnp.where((depth >= level)[:, None, None, None], out, h)
        return self.head(h.reshape(h.shape[0], -1)), acts

    def truncated(self, x: Array, depth: int) -> Array:
        """Logits of a batch whose examples all have ``depth``: only the layers they run."""
        h = nn.relu(self.conv1(x))
        for conv in (self.conv2, self.conv3)[:depth]:
            h = nn.relu(conv(h))
        return self.head(h.reshape(h.shape[0], -1))


class Router(nn.Module):
    """CNN-2: stride-2 3x3 convs (widths ``channels``) with ReLU, then a dense layer over the labels.

    The study does not describe CNN-2; this one is deliberately small so that routing costs well
    under 1 % of CNN-1 (see :func:`router_macs`).
    """

    channels: tuple[int, ...] = (8, 16)
    num_labels: int = len(DEPTHS)

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, dict[str, Array]]:
        for i, c in enumerate(self.channels):
            x = nn.relu(_conv3x3(c, strides=2, name=f"conv{i + 1}")(x))
        return nn.Dense(self.num_labels, name="head")(x.reshape(x.shape[0], -1)), {}


def skip_cnn_macs(image_shape: Sequence[int], *, channels: int, num_classes: int) -> dict[int, int]:
    """Multiply-accumulates per image of :class:`SkipCNN` at each depth (bias adds and ReLUs not counted)."""
    h, w, c = image_shape
    conv1, conv = h * w * 9 * c * channels, h * w * 9 * channels * channels
    head = h * w * channels * num_classes
    return {d: conv1 + d * conv + head for d in DEPTHS}


def router_macs(image_shape: Sequence[int], *, channels: Sequence[int]) -> int:
    """Multiply-accumulates per image of :class:`Router`."""
    h, w, c = image_shape
    total = 0
    for out in channels:
        h, w = -(-h // 2), -(-w // 2)
        total += h * w * 9 * c * out
        c = out
    return total + h * w * c * len(DEPTHS)



# Inputs --------------------------------------------------------------------------------------------

def to_input(images: Array) -> Array:
    """uint8 images to float32 in [0, 1] (the Keras-style scaling the study's code would use)."""
    return images.astype(jnp.float32) / 255.0


def depth_kwargs(depth: Array | None) -> dict[str, Array]:
    return {} if depth is None else {"depth": depth}
