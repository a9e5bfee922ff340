"""How well Study B's routers and the literal CNN-3 predict layer labels (accuracies with Wilson intervals)."""

from __future__ import annotations

import numpy as np

from resnet_jax import metrics
from resnet_jax.training import skipping as skip_train


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    correct = int((predictions == labels).sum())
    low, high = metrics.wilson_interval(correct, len(labels))
    return {"accuracy": correct / max(1, len(labels)), "ci_low": low, "ci_high": high, "n": int(len(labels))}


def router_scores(config, router, params, images, labels) -> dict:
    """Held-out accuracy of a router on labelled images, with the majority-label rate beside it."""
    logits = skip_train.predict_logits(router, params, images, batch_size=config["evaluation"]["batch_size"])
    pred = logits.argmax(-1)
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (labels, pred), 1)
    return {**accuracy(pred, labels), "confusion_true_by_predicted": confusion.tolist(),
            "held_out_label_counts": np.bincount(labels, minlength=3).tolist(),
            "majority_rate": float(np.bincount(labels, minlength=3).max() / max(1, len(labels)))}


def literal(config, model, params, images, labels, router_depths) -> dict:
    b = config["evaluation"]["batch_size"]
    pred = lambda depths: skip_train.predict_logits(model, params, images, depths, batch_size=b).argmax(-1)  # noqa: E731
    return {
        "depth_true_label": accuracy(pred(labels), labels),
        "depth_router": accuracy(pred(router_depths), labels),
        "depth_full": accuracy(pred(np.full_like(labels, 2)), labels),
        "majority_baseline": float(np.bincount(labels, minlength=3).max() / max(1, len(labels))),
    }
