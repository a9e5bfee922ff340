"""Study B end to end: CNN-1, layer labels (the study's selection and dense labelling), routers, CNN-3,
and the baselines a reader compares per-image depth with.

``run_study(config, workdir)`` is the whole job (``resnet-jax train`` with a Study B preset). Each stage's result is
kept in the workdir's ledger (``<workdir>/stages.json``, :mod:`resnet_jax.ledger`) and each model is checkpointed every epoch under
``<workdir>/models/<model>/``, so an interrupted run loses at most one epoch and a rerun skips
finished stages. Outputs: ``skip_results.json`` (every number) and ``skip_report.md`` (tables,
figures under ``figures/``).

The training split is cut once (seeded) into a *fit* part, on which every model trains, and a
*validation* part, on which the routers' accuracy is measured and every method's operating point is
chosen; the test split is scored once per operating point.

Readings of CNN-3 (PROTOCOLS.md, Study B):
  * literal: CNN-3 with a 3-way head learns the layer labels of the selected images; each image's
    depth is its label in training; on held-out images it is reported with depth = true label
    (the study; note the depth itself reveals the label), depth = router prediction, and full depth.
  * useful: CNN-3 classifies the dataset's classes, every image (fit and test) at the depth a router
    predicts for it; one CNN-3 per labelling (the study's 10 x 10 selection, dense labelling).
Baselines on the same data and CNN-1 architecture: early exit (:class:`EarlyExitCNN`, a threshold
sweep), random depth with the dense router's histogram, the oracle depth (the shallowest depth at
which the network is right: a bound that needs the label), fixed depths and the full network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from resnet_jax import files, ledger, metrics
from resnet_jax.ablation import statistics
from resnet_jax.data import images as data
from resnet_jax.models import skip_cnn as nets
from resnet_jax.reporting import figures, markdown
from resnet_jax.studies import skipping as analysis
from resnet_jax.training import core
from resnet_jax.training import skipping as skip_train

# Data ---------------------------------------------------------------------------------------------

def load_data(config: Mapping) -> tuple[data.Split, data.Split]:
    """Train and test splits; ``synthetic`` is sized by ``data.synthetic`` (e.g. 32x32x3, 100 classes)."""
    d, seed = config["data"], config["train"]["seed"]
    if d["name"] != "synthetic":
        return data.load_train_test(d["name"], data_dir=d["data_dir"], seed=seed,
                                    max_train_examples=d["max_train_examples"],
                                    max_test_examples=d["max_test_examples"])
    s = d["synthetic"]
    splits = []
    for split in ("train", "test"):
        made = data.synthetic_split(split, seed=seed, n=s[f"{split}_examples"], num_classes=s["num_classes"],
                                    size=s["size"], channels=s["channels"])
        splits.append(made.take(d[f"max_{split}_examples"], seed=seed))
    return splits[0], splits[1]


def validation_split(n: int, count: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, validation)`` sorted positions of a split of ``n``: ``count`` random ones held out (seeded)."""
    if not 0 < count < n:
        raise ValueError(f"data.validation_examples must be between 1 and {n - 1} (the training split has {n} "
                         f"images), got {count}")
    held = np.sort(np.random.default_rng(seed).permutation(n)[:count])
    return np.setdiff1d(np.arange(n), held), held


def stratified_split(labels: np.ndarray, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)`` positions: ``round(fraction * n_c)`` of each label held out (>= 1 when n_c >= 2)."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) >= 2 else 0
        held.append(members[:k])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


# Stages ----------------------------------------------------------------------------------------------

STAGE_OUTPUTS = {"selection": ("selection.npz", "figures/selection.png"), "dense": ("dense_labels.npz",),
                 "curves": ("operating_points.npz",)}
"""What each stage writes beside its ledger record (the others write only the record)."""


def _stage(workdir: Path, name: str, compute: Callable[[], dict], log: Callable[[str], None], *,
           inputs: Any = None) -> dict:
    """Run ``compute`` once per workdir (the workdir's ledger keeps its result); ``inputs`` (JSON data) are
    what the stage was computed from beyond the run's config and models: a result made from other inputs is
    stale and is computed again, never reused."""
    return ledger.run(workdir, ledger.Stage(name, compute, STAGE_OUTPUTS.get(name, ()), inputs), log)


def _trained(config: Mapping, workdir: Path, name: str, model, images, labels, *, depths=None,
             section: str, log) -> Any:
    """Parameters of ``model`` trained by the ``section`` settings (resumed or restored from its checkpoints)."""
    t, s = config["train"], config[section]
    ledger.declare(workdir, "models", ["models"])
    tx = skip_train.rmsprop(learning_rate=s["learning_rate"], rho=t["rho"], eps=t["eps"])
    state = skip_train.fit(model, images, labels, tx=tx, depths=depths, epochs=s["epochs"], batch_size=s["batch_size"],
                           seed=t["seed"], workdir=workdir / "models" / name, log=log)
    return state.params


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    correct = int((predictions == labels).sum())
    low, high = metrics.wilson_interval(correct, len(labels))
    return {"accuracy": correct / max(1, len(labels)), "ci_low": low, "ci_high": high, "n": int(len(labels))}


def _n_maps(config: Mapping) -> int:
    """Maps read per layer: the study's first 10, or all of the narrowest layer's (every layer the same count)."""
    return min(config["selection"]["maps_per_layer"], *config["model"]["widths"])


def _select(config: Mapping, workdir: Path, cnn1, params, fit: data.Split) -> dict:
    s = config["selection"]
    n_maps = _n_maps(config)
    scores = analysis.activation_scores(cnn1, params, fit.images, n_maps=n_maps, batch_size=s["batch_size"],
                                        site=s["site"])
    chosen = analysis.select_strongest(scores, per_map=min(s["images_per_map"], len(fit)))
    indices, labels = analysis.layer_labels(chosen)
    files.savez(workdir / "selection.npz", scores=scores, chosen=chosen, indices=indices, labels=labels,
                images=fit.images[indices])
    figure = figures.plot_selection(fit.images, chosen, labels=dict(zip(indices.tolist(), labels.tolist())),
                                    path=workdir / "figures" / "selection.png")
    per_layer = [{"layer": nets.CONVS[l], "picks": int(chosen[l].size), "unique": int(len(np.unique(chosen[l]))),
                  "labelled_here": int((labels == l).sum())} for l in range(len(nets.CONVS))]
    return {"n_maps": n_maps, "site": s["site"], "per_layer": per_layer, "n_labelled": int(len(indices)),
            "indices": indices.tolist(), "labels": labels.tolist(), "chosen": chosen.tolist(),
            "figure": str(figure.relative_to(workdir)),
            "index_meaning": "position in the fit part of the training split (skip_results.json: fit_positions)"}


def _dense(config: Mapping, workdir: Path, cnn1, params, val: data.Split) -> dict:
    """Dense labels of every fit and validation image; the fit images' scores are the selection stage's."""
    s = config["selection"]
    with np.load(workdir / "selection.npz") as z:
        fit_scores = z["scores"]
    val_scores = analysis.activation_scores(cnn1, params, val.images, n_maps=_n_maps(config),
                                            batch_size=s["batch_size"], site=s["site"])
    fit_labels, val_labels = analysis.dense_labels(fit_scores, fit_scores), analysis.dense_labels(fit_scores, val_scores)
    files.savez(workdir / "dense_labels.npz", fit=fit_labels, validation=val_labels)
    return {"n_maps": _n_maps(config), "fit_counts": np.bincount(fit_labels, minlength=3).tolist(),
            "validation_counts": np.bincount(val_labels, minlength=3).tolist()}


def _router(config, router, params, images, labels) -> dict:
    """Held-out accuracy of a router on labelled images, with the majority-label rate beside it."""
    logits = skip_train.predict_logits(router, params, images, batch_size=config["evaluation"]["batch_size"])
    pred = logits.argmax(-1)
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (labels, pred), 1)
    return {**_accuracy(pred, labels), "confusion_true_by_predicted": confusion.tolist(),
            "held_out_label_counts": np.bincount(labels, minlength=3).tolist(),
            "majority_rate": float(np.bincount(labels, minlength=3).max() / max(1, len(labels)))}


def _literal(config, model, params, images, labels, router_depths) -> dict:
    b = config["evaluation"]["batch_size"]
    pred = lambda depths: skip_train.predict_logits(model, params, images, depths, batch_size=b).argmax(-1)  # noqa: E731
    return {
        "depth_true_label": _accuracy(pred(labels), labels),
        "depth_router": _accuracy(pred(router_depths), labels),
        "depth_full": _accuracy(pred(np.full_like(labels, 2)), labels),
        "majority_baseline": float(np.bincount(labels, minlength=3).max() / max(1, len(labels))),
    }


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


class _Models:
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


def _operating_points(config: Mapping, m: _Models, labels: np.ndarray, macs: Mapping) -> list[dict]:
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
                       **_accuracy(predictions, labels),
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
    validation accuracy is within ``tolerance`` of CNN-1's, else the most accurate one."""
    target = next(p["accuracy"] for p in validation if p["method"] == "full") - tolerance
    best = []
    for method in dict.fromkeys(p["method"] for p in validation):
        pairs = [(v, t) for v, t in zip(validation, test) if v["method"] == method]
        good = [pair for pair in pairs if pair[0]["accuracy"] >= target]
        v, t = (min(good, key=lambda pair: pair[0]["macs_per_image"]) if good
                else max(pairs, key=lambda pair: pair[0]["accuracy"]))
        best.append({**t, "validation_accuracy": v["accuracy"], "meets_validation_target": bool(good)})
    return best


def _curves(config, workdir, models_val: _Models, models_test: _Models, val_labels, test_labels, macs) -> dict:
    validation = _operating_points(config, models_val, val_labels, macs)
    test = _operating_points(config, models_test, test_labels, macs)
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


def _path_fn(m: _Models, path: Mapping, depths: np.ndarray) -> Callable[[], np.ndarray]:
    """The inference a test point stands for, as it would run: only the layers each image needs.

    Routers and early exits decide inside the timed call; random, fixed and oracle depths are given.
    """
    images, b, mb, kind = m.images, m.b, m.mb, path["kind"]
    run = lambda key, d: analysis.predict_bucketed(*m.nets[key], images, d, batch_size=b,  # noqa: E731
                                                   min_bucket=mb).argmax(-1)
    ee = m.nets["early_exit"]
    if kind == "full":
        return lambda: run("cnn1", depths)
    if kind == "early_exit":
        return lambda: analysis.predict_early_exit(*ee, images, path["threshold"], batch_size=b,
                                                   min_bucket=mb)[0].argmax(-1)
    if kind == "given_exits":
        return lambda: analysis.predict_early_exit(*ee, images, exits=depths, batch_size=b, min_bucket=mb)[0].argmax(-1)
    if kind == "routed":
        def routed():
            logits, q = skip_train.predict_logits(*m.nets[path["router"]], images, batch_size=b), path["quantile"]
            return run(path["cnn3"], logits.argmax(-1) if q is None else analysis.quantile_depths(logits, q))
        return routed
    return lambda: run(path["cnn3"], depths)


def point_key(point: Mapping) -> str:
    return f"{point['method']}: {point['setting']}" if point["setting"] else point["method"]


def _timing(config, workdir: Path, m: _Models, points: list[dict]) -> dict:
    """Wall seconds of every test point's path, all interleaved in one run (CNN-1's first, the reference);
    each timed path's predictions are compared with its point's, computed from every depth's or exit's outputs."""
    with np.load(workdir / "operating_points.npz") as z:
        stored = [(z[f"depths_{i}"], z[f"predictions_{i}"]) for i in range(len(points))]
    paths = {point_key(p): _path_fn(m, p["path"], depths) for p, (depths, _) in zip(points, stored)}
    load_before = os.getloadavg()
    runs = analysis.time_paths(paths, repeats=config["evaluation"]["timing_repeats"])
    base = runs[point_key(points[0])]["median_s"]
    out = {key: {**runs[key], "wall_ratio_vs_cnn1": runs[key]["median_s"] / base,
                 "prediction_agreement": float(np.mean(fn() == predictions))}
           for (key, fn), (_, predictions) in zip(paths.items(), stored)}
    return {"paths": out, "n_examples": len(m.images), "batch_size": m.b,
            "bucket_sizes": list(analysis.bucket_sizes(m.b, m.mb)), "repeats": config["evaluation"]["timing_repeats"],
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


def run_study(config: Mapping, workdir: str | Path, *, force_new: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) Study B in ``workdir``; write ``skip_results.json`` and ``skip_report.md``."""
    workdir = Path(workdir)
    train, test = load_data(config)  # before touching the workdir: bad data leaves nothing behind
    seed, widths = config["train"]["seed"], tuple(config["model"]["widths"])
    fit_pos, val_pos = validation_split(len(train), config["data"]["validation_examples"], seed=seed)
    core.prepare_workdir(config, workdir, force_new=force_new)
    fit, val = train.select(fit_pos), train.select(val_pos)
    shape, k = train.images.shape[1:], train.num_classes
    macs = {"cnn": {str(d): v for d, v in nets.skip_cnn_macs(shape, widths=widths, num_classes=k).items()},
            "early_exit": {str(d): v for d, v in nets.early_exit_macs(shape, widths=widths, num_classes=k).items()},
            "router": nets.router_macs(shape, channels=config["model"]["router_channels"])}  # depth keys as in JSON
    res: dict[str, Any] = {"config": dict(config), "macs": macs, "environment": markdown.environment(),
                           "split_sizes": {"fit": len(fit), "validation": len(val), "test": len(test)}}
    trained = lambda name, model, images, labels, section, depths=None: (model, _trained(  # noqa: E731
        config, workdir, name, model, images, labels, depths=depths, section=section, log=log))

    # CNN-1 and the CNN-3s share one module object, hence compiled functions; the same seed gives them the same
    # initial weights and example order: only the depths differ.
    cnn = nets.SkipCNN(k, widths)
    m = {"cnn1": trained("cnn1", cnn, fit.images, fit.labels, "train")}
    res["cnn1"] = _stage(workdir, "cnn1", lambda: {"test": _accuracy(analysis.predict_bucketed(
        *m["cnn1"], test.images, np.full(len(test), 2), batch_size=config["evaluation"]["batch_size"],
        min_bucket=config["evaluation"]["min_bucket"]).argmax(-1), test.labels)}, log)

    # The study's labelling: 10 maps x 10 strongest images per layer; its router and literal CNN-3.
    res["selection"] = _stage(workdir, "selection", lambda: _select(config, workdir, *m["cnn1"], fit), log)
    idx, labels = np.asarray(res["selection"]["indices"]), np.asarray(res["selection"]["labels"], np.int32)
    fit_sel, held = stratified_split(labels, fraction=config["router"]["holdout"], seed=seed)
    labelled = fit.images[idx]
    router = nets.Router(tuple(config["model"]["router_channels"]))
    m["router_selection"] = trained("router", router, labelled[fit_sel], labels[fit_sel], "router")
    res["router"] = _stage(workdir, "router", lambda: {
        **_router(config, *m["router_selection"], labelled[held], labels[held]),
        "train_label_counts": np.bincount(labels[fit_sel], minlength=3).tolist()}, log)
    route = lambda key, images: skip_train.predict_logits(  # noqa: E731
        *m[key], images, batch_size=config["evaluation"]["batch_size"]).argmax(-1).astype(np.int32)
    literal = nets.SkipCNN(len(nets.DEPTHS), widths)
    pl = _trained(config, workdir, "cnn3_literal", literal, labelled[fit_sel], labels[fit_sel],
                  depths=labels[fit_sel], section="literal", log=log)
    res["literal"] = _stage(workdir, "literal", lambda: _literal(config, literal, pl, labelled[held], labels[held],
                                                                 route("router_selection", labelled[held])), log)

    # Dense labelling: every image labelled; the router is scored on the validation images' labels.
    res["dense"] = _stage(workdir, "dense", lambda: _dense(config, workdir, *m["cnn1"], val), log)
    with np.load(workdir / "dense_labels.npz") as z:
        dense_fit, dense_val = z["fit"], z["validation"]
    m["router_dense"] = trained("router_dense", router, fit.images, dense_fit, "dense")
    res["dense_router"] = _stage(workdir, "dense_router", lambda: {
        **_router(config, *m["router_dense"], val.images, dense_val),
        "train_label_counts": np.bincount(dense_fit, minlength=3).tolist()}, log)

    # The useful CNN-3s (each trained at its router's depths) and the early-exit network.
    for key in ("selection", "dense"):
        depths = route(f"router_{key}", fit.images)
        res[f"fit_depth_counts_{key}"] = np.bincount(depths, minlength=3).tolist()
        m[f"cnn3_{key}"] = trained(f"cnn3_{key}", cnn, fit.images, fit.labels, "train", depths)
    m["early_exit"] = trained("early_exit", nets.EarlyExitCNN(k, widths), fit.images, fit.labels, "train")

    res["curves"] = _stage(workdir, "curves", lambda: _curves(
        config, workdir, _Models(config, m, val.images), _Models(config, m, test.images), val.labels, test.labels,
        macs), log)
    res["timing"] = _stage(workdir, "timing", lambda: _timing(
        config, workdir, _Models(config, m, test.images), res["curves"]["test"]), log,
        inputs=[[point_key(p), p["accuracy"]] for p in res["curves"]["test"]])
    attach_wall_ratios(res)
    res["figures"] = {"selection": res["selection"]["figure"],
                      "tradeoff": str(figures.plot_skip_curves(res["curves"]["test"], METHODS,
                                                               workdir / "figures" / "tradeoff.png")
                                      .relative_to(workdir))}
    res["verdict"] = verdict(res["curves"])
    warning = metrics.competence_warning(metrics.Accuracy(), res["cnn1"]["test"]["accuracy"], test.labels)
    if warning:
        res["warning"] = f"CNN-1: {warning}"
        res["verdict"] = [f"WARNING: {res['warning']}", *res["verdict"]]
        log(f"WARNING: {res['warning']}")
    res["fit_positions"] = fit_pos.tolist()
    ledger.declare(workdir, "skip-report", ["skip_results.json", "skip_report.md", "figures/tradeoff.png"])
    files.write_json(workdir / "skip_results.json", res)
    report = write_report(res, workdir)
    log(f"wrote {report} and {workdir / 'skip_results.json'}")
    return res


def attach_wall_ratios(res: dict) -> None:
    """Each test point (and best point) gets the wall ratio measured for it, matched by name."""
    timed = res["timing"]["paths"]
    for point in (*res["curves"]["test"], *res["curves"]["best"]):
        point["wall_ratio_vs_cnn1"] = timed[point_key(point)]["wall_ratio_vs_cnn1"]


# Figures and report ----------------------------------------------------------------------------------

def _acc(a: Mapping) -> str:
    return f"{a['accuracy']:.4f} [{a['ci_low']:.4f}, {a['ci_high']:.4f}] (n={a['n']})"


def _row(p: Mapping) -> str:
    return (f"| {METHODS[p['method']]} | {p['setting'] or '-'} | {p['accuracy']:.4f} [{p['ci_low']:.4f}, "
            f"{p['ci_high']:.4f}] | {p['mean_conv_layers']:.3f} | {p['mac_ratio_vs_cnn1']:.3f} | "
            f"{p.get('wall_ratio_vs_cnn1', float('nan')):.3f} |")


def verdict(curves: Mapping) -> list[str]:
    """Plain sentences: does activation-chosen depth save compute at equal accuracy, and how does early exit do?

    "Equal accuracy" is the validation rule that chose the point (within the tolerance of CNN-1) *and* a test
    accuracy no lower than CNN-1's by more than the tolerance; "saves" needs at least 2 % fewer MACs. Wall
    time is reported beside, and the dense router beside random depth of its own histogram.
    """
    best, tol = {p["method"]: p for p in curves["best"]}, curves["tolerance"]
    full, lines = best["full"], []
    random = {p["setting"]: p for p in curves["test"] if p["method"] == "random"}
    for method in ("dense_router", "selection_router", "early_exit"):
        p = best.get(method)
        if not p:
            continue
        gap = p["accuracy"] - full["accuracy"]
        wall = p.get("wall_ratio_vs_cnn1", float("nan"))
        paired = f"paired difference {statistics.comparison_text(p['vs_cnn1'])}" if "vs_cnn1" in p else f"{gap:+.4f}"
        text = (f"{METHODS[method]}, at the point chosen on validation ({p['setting']}): test accuracy "
                f"{p['accuracy']:.4f} [{p['ci_low']:.4f}, {p['ci_high']:.4f}] vs CNN-1 {full['accuracy']:.4f} "
                f"[{full['ci_low']:.4f}, {full['ci_high']:.4f}] ({paired}), MAC ratio {p['mac_ratio_vs_cnn1']:.3f}, "
                f"wall-time ratio {wall:.3f}")
        shuffled = random.get(f"as {p['setting']}") if method == "dense_router" else None
        if shuffled:
            added = (statistics.comparison_text(p["vs_random"]) if "vs_random" in p
                     else f"{p['accuracy'] - shuffled['accuracy']:+.4f}")
            text += (f"; random depth with the same histogram {shuffled['accuracy']:.4f}, so the activation-chosen "
                     f"depths add {added}")
        if not p["meets_validation_target"]:
            lines.append(f"{text}. No operating point reaches CNN-1's validation accuracy: it does not save compute "
                         f"at equal accuracy.")
        elif gap < -tol:
            lines.append(f"{text}. On test it falls {-gap:.4f} below CNN-1 (more than {tol}): no saving at equal "
                         f"accuracy is shown.")
        elif p["mac_ratio_vs_cnn1"] > 0.98:
            lines.append(f"{text}. At equal accuracy it saves no compute (under 2 % of the MACs).")
        else:
            faster = "and is faster in wall time" if wall < 1 else "but is not faster in wall time here"
            lines.append(f"{text}. At equal accuracy it saves {1 - p['mac_ratio_vs_cnn1']:.1%} of the MACs {faster}.")
    return lines


def write_report(res: Mapping, workdir: str | Path) -> Path:
    """``<workdir>/skip_report.md`` from the results of :func:`run_study`."""
    workdir = Path(workdir)
    sel, rt, lit, dense, drt, macs = (res[k] for k in ("selection", "router", "literal", "dense", "dense_router",
                                                          "macs"))
    curves, tm, cfg = res["curves"], res["timing"], res["config"]
    sizes = res["split_sizes"]
    table_head = ["| method | operating point | test accuracy [95 % CI] | mean conv layers | MAC ratio | wall ratio |",
                  "|---|---|---|---:|---:|---:|"]
    p = [f"# Study B: per-image layer skipping (`{workdir.name}`)", "",
         *([f"**Warning:** {res['warning']}", ""] if res.get("warning") else []),
         f"Data `{cfg['data']['name']}`: {sizes['fit']} fit / {sizes['validation']} validation (held out of the "
         f"training split, seeded) / {sizes['test']} test images. CNN-1/CNN-3: convs of widths "
         f"{cfg['model']['widths']} (a skipped layer's input zero-padded or sliced to the next width), "
         f"{cfg['train']['epochs']} epochs, batch {cfg['train']['batch_size']}; CNN-2 convs "
         f"{cfg['model']['router_channels']} (stride 2). Accuracies with 95 % Wilson intervals.", "",
         "## Verdict", "", *[f"- {line}" for line in res["verdict"]], "",
         "## Every method at its operating point (chosen on validation, scored on test)", "",
         f"Operating point: the cheapest (MACs) whose validation accuracy is within {curves['tolerance']} of "
         "CNN-1's, else the most accurate. Oracles need the label: bounds, not methods.", "",
         *table_head, *[_row(b) for b in curves["best"]], "",
         f"![tradeoff]({res['figures']['tradeoff']})", "",
         "## CNN-1", "", f"Test accuracy {_acc(res['cnn1']['test'])}.", "",
         "## The study's selection (literal reading)", "",
         f"First {sel['n_maps']} maps per conv ({sel['site']} activations), "
         f"{cfg['selection']['images_per_map']} strongest fit images per map; "
         f"{sel['n_labelled']} distinct images labelled (deeper label wins).", "",
         "| layer | picks | distinct | labelled with this layer |", "|---|---:|---:|---:|",
         *[f"| {r['layer']} | {r['picks']} | {r['unique']} | {r['labelled_here']} |" for r in sel["per_layer"]], "",
         f"![selection]({sel['figure']})", "",
         f"Router on these labels, held-out accuracy {_acc(rt)}; majority-label rate {rt['majority_rate']:.4f} "
         f"(stratified {cfg['router']['holdout']:.0%} hold-out; train label counts {rt['train_label_counts']}, "
         f"held-out {rt['held_out_label_counts']}). Confusion (rows true, columns predicted): "
         f"`{rt['confusion_true_by_predicted']}`.", "",
         "CNN-3 predicting the layer labels of the held-out images (the study's task):", "",
         "| depth of each image | accuracy |", "|---|---|",
         f"| its true label (the study's; the depth reveals the label) | {_acc(lit['depth_true_label'])} |",
         f"| the router's prediction | {_acc(lit['depth_router'])} |",
         f"| full depth | {_acc(lit['depth_full'])} |", "",
         f"Majority-label baseline: {lit['majority_baseline']:.4f}.", "",
         "## Dense labelling", "",
         "Every image's standing at a map is its percentile rank among the fit images' scores (mean absolute "
         f"activation) for that map; its strength at a layer is its best standing over the layer's first "
         f"{dense['n_maps']} maps; its label is the strongest layer, ties to the deeper. Label counts: fit "
         f"{dense['fit_counts']}, validation {dense['validation_counts']}.", "",
         f"Router on the fit images' labels ({cfg['dense']['epochs']} epochs), accuracy on the validation images' "
         f"labels {_acc(drt)}; majority-label rate {drt['majority_rate']:.4f}. Confusion: "
         f"`{drt['confusion_true_by_predicted']}`.", "",
         f"Training depths of the two useful CNN-3s (counts for depth 0/1/2): study's selection "
         f"{res['fit_depth_counts_selection']}, dense labelling {res['fit_depth_counts_dense']}.", "",
         "## Every operating point (test)", "",
         *table_head, *[_row(q) for q in curves["test"]], "",
         f"MACs per image: CNN-3 at depth 0/1/2 = {', '.join(format(macs['cnn'][str(d)], ',') for d in nets.DEPTHS)}; "
         f"early exit at exit 1/2/3 = {', '.join(format(macs['early_exit'][str(d)], ',') for d in nets.DEPTHS)}; "
         f"router {macs['router']:,}.", "",
         f"Wall time: each point's inference as it would run (routers and exit tests inside the timed call; "
         f"per-depth buckets {tm['bucket_sizes']}, batch {tm['batch_size']}) on the {tm['n_examples']} test images, "
         f"median of {tm['repeats']} runs interleaved over all points after a warm-up, on {tm['devices']} "
         f"({tm['cpu_count']} CPUs; load average before/after {[round(x, 2) for x in tm['loadavg_before']]} / "
         f"{[round(x, 2) for x in tm['loadavg_after']]}: on a shared machine wall ratios are noisy). The timed "
         f"paths' predictions agree with the points' on at least "
         f"{min(v['prediction_agreement'] for v in tm['paths'].values()):.2%} of the images.", "",
         "## Config", "", "```json", json.dumps(cfg, indent=2), "```", "",
         "## Environment", "", "```json", json.dumps(res["environment"], indent=2), "```", ""]
    out = workdir / "skip_report.md"
    out.write_text("\n".join(p))
    return out
