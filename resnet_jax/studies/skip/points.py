"""Every method's operating points (accuracy, depth counts, MACs) on the validation and test images, the point
chosen per method on validation, and paired comparisons of the chosen points with CNN-1 and random depth."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from resnet_jax import files, metrics
from resnet_jax.ablation import statistics
from resnet_jax.models import skip_cnn as nets
from resnet_jax.studies.skip import analysis, routers
from resnet_jax.training import skipping as skip_train

# Methods: every operating point as (depths or exits, predictions), scored on validation and test -----------

METHODS = {
    "full": "CNN-1 (full network)",
    "early_exit": "early exit (threshold on top softmax probability)",
    "dense_router": "activation-chosen depth, dense labelling (CNN-2 on dense labels)",
    "selection_router": "activation-chosen depth, the study's selection (strongest images per map)",
    "random": "random depth, the dense router's histogram",
    "fixed": "CNN-3 (dense) at a fixed depth",
    "oracle_cnn3": "oracle depth, CNN-3 (dense): shallowest correct (needs the label)",
    "oracle_early_exit": "oracle exit, early-exit network: shallowest correct (needs the label)",
}
"""Every method whose operating points Study B scores, with the label its tables and figures give it."""


class Models:
    """The trained networks and their per-image outputs on one split, computed once."""

    def __init__(self, config, nets_and_params: Mapping[str, tuple], images: np.ndarray):
        e = config["evaluation"]
        self.b, self.mb, self.images = e["batch_size"], e["min_bucket"], images
        self.nets = nets_and_params
        n = len(images)
        bucketed = lambda key, d: analysis.predict_bucketed(*self.nets[key], images, np.full(n, d),  # noqa: E731
                                                            batch_size=self.b, min_bucket=self.mb).argmax(-1)
        self.full = bucketed("cnn1", 2)
        self.fixed = {key: np.stack([bucketed(key, d) for d in nets.DEPTHS]) for key in ("cnn3_dense", "cnn3_selection")}
        self.router_logits = {key: skip_train.predict_logits(*self.nets[key], images, batch_size=self.b)
                              for key in ("router_dense", "router_selection")}
        self.exit_logits = skip_train.predict_logits(*self.nets["early_exit"], images, batch_size=self.b)

    def router_depths(self, key: str, quantile: float | None) -> np.ndarray:
        logits = self.router_logits[key]
        return logits.argmax(-1) if quantile is None else analysis.quantile_depths(logits, quantile)


def _oracle(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image, the shallowest depth (or exit) whose prediction is right; the deepest when none is."""
    correct = predictions == labels
    return np.where(correct.any(0), correct.argmax(0), len(nets.DEPTHS) - 1)


def operating_points(config: Mapping, m: Models, labels: np.ndarray, macs: Mapping) -> list[dict]:
    """Every method's points on one split: accuracy with its interval, depth counts, MACs per image, and (not
    for JSON) each image's depth or exit and prediction under ``"depths"`` and ``"predictions"``."""
    e, seed, n = config["evaluation"], config["train"]["seed"], len(labels)
    cnn, ee = (np.array([macs[key][str(d)] for d in nets.DEPTHS], np.float64) for key in ("cnn", "early_exit"))
    at = lambda key, depths: m.fixed[key][depths, np.arange(n)]  # noqa: E731  (each image at its depth)
    exit_preds = m.exit_logits.argmax(-1)
    points = []

    def add(method, setting, depths, predictions, per_depth, path, extra_macs=0.0):
        mean_macs = float(per_depth[depths].mean() + extra_macs)
        points.append({"method": method, "label": METHODS[method], "setting": setting,
                       **routers.accuracy(predictions, labels),
                       "depth_counts": np.bincount(depths, minlength=3).tolist(),
                       "mean_conv_layers": float(depths.mean() + 1), "macs_per_image": mean_macs,
                       "mac_ratio_vs_cnn1": mean_macs / float(cnn[2]), "path": path, "depths": depths,
                       "predictions": predictions})

    add("full", "", np.full(n, 2), m.full, cnn, {"kind": "full"})
    for t in e["exit_thresholds"]:
        exits = analysis.exit_at_threshold(m.exit_logits, t)
        add("early_exit", f"threshold {t:g}", exits, exit_preds[exits, np.arange(n)], ee,
            {"kind": "early_exit", "threshold": t})
    for key in ("dense", "selection"):
        for q in (None, *e["router_quantiles"]):
            depths = m.router_depths(f"router_{key}", q)
            setting = "argmax (the study's rule)" if q is None else f"quantile {q:g}"
            add(f"{key}_router", setting, depths, at(f"cnn3_{key}", depths), cnn,
                {"kind": "routed", "router": f"router_{key}", "cnn3": f"cnn3_{key}", "quantile": q}, macs["router"])
            if key == "dense":
                shuffled = np.random.default_rng(seed).permutation(depths)
                add("random", f"as {setting}", shuffled, at("cnn3_dense", shuffled), cnn,
                    {"kind": "given", "cnn3": "cnn3_dense"})
    for d in nets.DEPTHS:
        add("fixed", f"depth {d}", np.full(n, d), m.fixed["cnn3_dense"][d], cnn, {"kind": "given", "cnn3": "cnn3_dense"})
    oracle = _oracle(m.fixed["cnn3_dense"], labels)
    add("oracle_cnn3", "", oracle, at("cnn3_dense", oracle), cnn, {"kind": "given", "cnn3": "cnn3_dense"})
    oracle = _oracle(exit_preds, labels)
    add("oracle_early_exit", "", oracle, exit_preds[oracle, np.arange(n)], ee, {"kind": "given_exits"})
    return points


def best_points(validation: list[dict], test: list[dict], *, tolerance: float) -> list[dict]:
    """Per method, the test point of the operating point chosen on validation: the cheapest (MACs) whose
    validation accuracy is within ``tolerance`` of CNN-1's, else the most accurate one.

    Example:
        >>> from resnet_jax.studies.skip import best_points
        >>> validation = [{"method": "full", "setting": "", "accuracy": 0.98, "macs_per_image": 100},
        ...               {"method": "early_exit", "setting": "threshold 0.5", "accuracy": 0.95, "macs_per_image": 40},
        ...               {"method": "early_exit", "setting": "threshold 0.9", "accuracy": 0.978, "macs_per_image": 60}]
        >>> test = [{**p, "accuracy": a} for p, a in zip(validation, (0.97, 0.94, 0.969))]
        >>> [(p["method"], p["setting"], p["accuracy"]) for p in best_points(validation, test, tolerance=0.005)]
        [('full', '', 0.97), ('early_exit', 'threshold 0.9', 0.969)]
    """
    target = next(p["accuracy"] for p in validation if p["method"] == "full") - tolerance
    best = []
    for method in dict.fromkeys(p["method"] for p in validation):
        pairs = [(v, t) for v, t in zip(validation, test) if v["method"] == method]
        good = [pair for pair in pairs if pair[0]["accuracy"] >= target]
        v, t = (min(good, key=lambda pair: pair[0]["macs_per_image"]) if good
                else max(pairs, key=lambda pair: pair[0]["accuracy"]))
        best.append({**t, "validation_accuracy": v["accuracy"], "meets_validation_target": bool(good)})
    return best


def curves(config, workdir, models_val: Models, models_test: Models, val_labels, test_labels, macs) -> dict:
    validation = operating_points(config, models_val, val_labels, macs)
    test = operating_points(config, models_test, test_labels, macs)
    tolerance = config["evaluation"]["tolerance"]
    best = best_points(validation, test, tolerance=tolerance)
    paired_with_cnn1(best, test, test_labels)
    files.savez(workdir / "operating_points.npz", **{f"{kind}_{i}": p.pop(kind) for i, p in enumerate(test)
                                                     for kind in ("depths", "predictions")})  # for timing
    for p in (*validation, *best):
        del p["depths"], p["predictions"]
    return {"validation": validation, "test": test, "tolerance": tolerance, "best": best}


def paired_with_cnn1(best: list[dict], test: list[dict], labels: np.ndarray) -> None:
    """Adds ``vs_cnn1`` to every chosen point but CNN-1's own (its test accuracy minus CNN-1's, paired on the same
    images) and ``vs_random`` to the dense router's (minus random depth of the same histogram); the intervals are
    simultaneous over all these comparisons (Bonferroni)."""
    correct = lambda p: {"correct": p["predictions"] == labels}  # noqa: E731
    full = next(p for p in best if p["method"] == "full")
    random = {p["setting"]: p for p in test if p["method"] == "random"}
    asks = [(p, "vs_cnn1", full) for p in best if p["method"] != "full"]
    asks += [(p, "vs_random", random[f"as {p['setting']}"]) for p in best
             if p["method"] == "dense_router" and f"as {p['setting']}" in random]
    tester = statistics.paired_tester(metrics.Accuracy())
    rows = statistics.compare_models(tester, [(correct(other), correct(p)) for p, _, other in asks])
    for (p, key, _), row in zip(asks, rows):
        p[key] = row
