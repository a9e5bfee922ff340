"""Study B's networks: a three-conv CNN whose depth is chosen per example, its early-exit twin, and the router.

CNN-1 and CNN-3 are one module, :class:`SkipCNN`: three 3x3 convs of widths ``widths`` (the study's
three layers differ only in their number of feature maps), SAME padding, bias, ReLU, no pooling;
then one dense layer over the flattened map. Only conv2 and conv3 are ever skipped (layer label 0
skips both, label 1 skips conv3, label 2 none). A skipped layer passes its input on through a
parameter-free channel adapter (:func:`adapt_channels`: zero-padding to a wider layer, slicing to a
narrower one), so skipping stays identity-like and adds no parameters; with equal widths the adapter
is the identity. An example's *depth* is its layer label: it runs ``conv1 .. conv{depth+1}``.

Two executions of the same parameters:
  * masked (``SkipCNN.__call__(x, depth)``): every layer runs on the whole batch and
    ``jnp.where`` keeps a skipped layer's (adapted) input, so the layer receives exactly zero
    gradient from that example. Training uses this; it saves no compute.
  * bucketed (``studies.skip.analysis.predict_bucketed``): examples grouped by depth run only their
    layers (``SkipCNN.truncated``), padded to a few static batch sizes. This is where compute is saved.

:class:`EarlyExitCNN` is the early-exit baseline (BranchyNet): the same three convs and final head,
plus a dense exit classifier after conv1 and conv2, all exits trained jointly.

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


def adapt_channels(h: Array, width: int) -> Array:
    """``h`` with its last axis zero-padded or sliced to ``width``: how a skipped layer passes its input on."""
    c = h.shape[-1]
    if c >= width:
        return h[..., :width]
    return jnp.pad(h, ((0, 0),) * (h.ndim - 1) + ((0, width - c),))


def _flat(h: Array) -> Array:
    return h.reshape(h.shape[0], -1)


class SkipCNN(nn.Module):
    """CNN-1 (``depth=None``: full depth) and CNN-3 (``depth``: one of 0, 1, 2 per example).

    ``__call__`` returns ``(logits, activations)``; ``activations[name]`` is conv ``name``'s
    output after ReLU and ``activations[name + '_pre']`` before, computed for the whole batch (for
    an example that skips the layer: on the input it would have had, then discarded).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from resnet_jax.models import SkipCNN
        >>> model = SkipCNN(num_classes=10, widths=(4, 8, 16))
        >>> x = jnp.zeros((2, 28, 28, 1))
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
        >>> depth = jnp.array([0, 2])            # CNN-3: the first image runs conv1 only, the second all three
        >>> logits, activations = jax.eval_shape(model.apply, variables, x, depth)
        >>> logits.shape, activations["conv3"].shape, sorted(activations)
        ((2, 10), (2, 28, 28, 16), ['conv1', 'conv1_pre', 'conv2', 'conv2_pre', 'conv3', 'conv3_pre'])
    """

    num_classes: int
    widths: tuple[int, int, int] = (32, 64, 128)

    def setup(self):
        self.conv1, self.conv2, self.conv3 = (_conv3x3(w) for w in self.widths)
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
            h = out if depth is None else jnp.where((depth >= level)[:, None, None, None], out,
                                                     adapt_channels(h, self.widths[level]))
        return self.head(_flat(h)), acts

    def truncated(self, x: Array, depth: int) -> Array:
        """Logits of a batch whose examples all have ``depth``: only the layers they run.

        The zero channels an adapter would add are never built: the head multiplies only the kernel
        rows of the channels that carry data (the others meet zeros), the same logits for less work.
        """
        h = nn.relu(self.conv1(x))
        for level, conv in enumerate((self.conv2, self.conv3), start=1):
            h = nn.relu(conv(h)) if level <= depth else h[..., :self.widths[level]]
        if h.shape[-1] == self.widths[-1]:
            return self.head(h.reshape(h.shape[0], -1))
        params = self.head.variables["params"]
        rows = params["kernel"].reshape(*h.shape[1:3], self.widths[-1], -1)[:, :, :h.shape[-1]]
        return _flat(h) @ rows.reshape(-1, rows.shape[-1]) + params["bias"]


class EarlyExitCNN(SkipCNN):
    """CNN-1 with an exit classifier (dense over the flattened map) after conv1 and conv2.

    ``__call__(x)`` returns ``(logits of every exit, stacked: (3, batch, classes), activations)``;
    the last exit is CNN-1's head. :meth:`stage` runs one conv and its exit, for inference that
    stops an example at the first exit confident enough (``studies.skip.analysis.predict_early_exit``).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from resnet_jax.models import EarlyExitCNN
        >>> model = EarlyExitCNN(num_classes=10, widths=(4, 8, 16))
        >>> x = jnp.zeros((2, 28, 28, 1))
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
        >>> exits, _ = jax.eval_shape(model.apply, variables, x)
        >>> exits.shape                          # (exit, batch, classes): after conv1, conv2 and conv3
        (3, 2, 10)
    """

    def setup(self):
        super().setup()
        self.exit1, self.exit2 = nn.Dense(self.num_classes), nn.Dense(self.num_classes)

    def _exits(self):
        return (self.exit1, self.exit2, self.head)

    def __call__(self, x: Array, depth: Array | None = None) -> tuple[Array, dict[str, Array]]:
        if depth is not None:
            raise ValueError("EarlyExitCNN runs every exit; per-example depth is SkipCNN's")
        acts: dict[str, Array] = {}
        h, logits = x, []
        for name, exit_head in zip(CONVS, self._exits()):
            h = self._run(name, h, acts)
            logits.append(exit_head(_flat(h)))
        return jnp.stack(logits), acts

    def stage(self, h: Array, level: int) -> tuple[Array, Array]:
        """``(conv{level+1}'s output, its exit's logits)`` from the previous conv's output (the image at level 0)."""
        h = nn.relu((self.conv1, self.conv2, self.conv3)[level](h))
        return h, self._exits()[level](_flat(h))


class Router(nn.Module):
    """CNN-2: stride-2 3x3 convs (widths ``channels``) with ReLU, then a dense layer over the labels.

    The study does not describe CNN-2; this one is deliberately small so that routing costs well
    under 1 % of CNN-1 (see :func:`router_macs`).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from resnet_jax.models import Router
        >>> model = Router(channels=(8, 16))
        >>> x = jnp.zeros((2, 28, 28, 1))
        >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
        >>> logits, _ = jax.eval_shape(model.apply, variables, x)
        >>> logits.shape, variables["params"]["conv2"]["kernel"].shape   # one logit per layer label 0, 1, 2
        ((2, 3), (3, 3, 8, 16))
    """

    channels: tuple[int, ...] = (8, 16)
    num_labels: int = len(DEPTHS)

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, dict[str, Array]]:
        for i, c in enumerate(self.channels):
            x = nn.relu(_conv3x3(c, strides=2, name=f"conv{i + 1}")(x))
        return nn.Dense(self.num_labels, name="head")(x.reshape(x.shape[0], -1)), {}


def _conv_and_head_macs(image_shape: Sequence[int], widths: Sequence[int], num_classes: int):
    h, w, c = image_shape
    ins = (c, *widths[:-1])
    convs = [h * w * 9 * i * o for i, o in zip(ins, widths)]
    heads = [h * w * o * num_classes for o in widths]
    return convs, heads


def skip_cnn_macs(image_shape: Sequence[int], *, widths: Sequence[int], num_classes: int) -> dict[int, int]:
    """Multiply-accumulates per image of :class:`SkipCNN` at each depth, as :meth:`SkipCNN.truncated` runs it
    (bias adds, ReLUs, adapters not counted): the head reads only the channels that carry data."""
    h, w, _ = image_shape
    convs, _ = _conv_and_head_macs(image_shape, widths, num_classes)
    return {d: sum(convs[:d + 1]) + h * w * min(widths[d:]) * num_classes for d in DEPTHS}


def early_exit_macs(image_shape: Sequence[int], *, widths: Sequence[int], num_classes: int) -> dict[int, int]:
    """Multiply-accumulates per image of :class:`EarlyExitCNN` leaving at each exit (every exit passed is run)."""
    convs, heads = _conv_and_head_macs(image_shape, widths, num_classes)
    return {d: sum(convs[:d + 1]) + sum(heads[:d + 1]) for d in DEPTHS}


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
