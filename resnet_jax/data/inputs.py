"""The one input normalisation of every model here, and the statistics it uses.

Images arrive as uint8 (photographs, scaled to [0, 1] first) or float32 already in [0, 1] (MRI slices,
normalised per image by the loader). Training, evaluation, the ablation engine and the PyTorch
cross-check all call :func:`normalize`, so a model sees the same inputs on every path.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def to_unit_range(images):
    """Float32 in [0, 1]: uint8 divided by 255, floats unchanged."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def normalize(images, mean, std):
    """``(images in [0, 1] - mean) / std``, per channel (or one value for all channels)."""
    return (to_unit_range(images) - mean) / std


def image_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One mean and std over every pixel and channel, shape ``(1,)`` (segmentation: slices already
    normalised per image by the loader)."""
    x = images.astype(np.float64)
    if images.dtype == np.uint8:
        x = x / 255.0
    return np.asarray([x.mean()], np.float32), np.asarray([max(x.std(), 1e-6)], np.float32)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over a training split, in [0, 1] units."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64)
    if images.dtype == np.uint8:
        x = x / 255.0
    return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32)
