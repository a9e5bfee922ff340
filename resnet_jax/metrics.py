"""Metrics as plug-ins: per-example values on device, aggregation with a 95 % interval on host.

A metric is an object with ``name``, ``per_example(logits, targets) -> dict of (N,) arrays`` (jitted
with the model) and ``aggregate(per_example) -> (value, ci_low, ci_high)``, and optionally
``breakdown(per_example) -> dict of named values`` (extra table columns, e.g. Dice per class). The
ablation engine only ever calls these, so segmentation plugs in a Dice metric without touching it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved near 0 and 1)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: np.ndarray, *, z: float = Z95) -> tuple[float, float]:
    """Normal-approximation interval of a mean over examples."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    half = z * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy; keeps per-example correctness, loss, prediction and top-2 margin."""

    name: str = "accuracy"

    def per_example(self, logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        top2 = jax.lax.top_k(logits, 2)[0]
        return {
            "correct": jnp.argmax(logits, -1) == labels,
            "loss": -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1)[..., 0],
            "prediction": jnp.argmax(logits, -1).astype(jnp.int32),
            "margin": top2[..., 0] - top2[..., 1],
        }

    def aggregate(self, per_example: dict[str, np.ndarray]) -> tuple[float, float, float]:
        correct = np.asarray(per_example["correct"], bool)
        low, high = wilson_interval(int(correct.sum()), correct.size)
        return float(correct.mean()), low, high
