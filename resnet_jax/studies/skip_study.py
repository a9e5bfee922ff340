"""Study B end to end: CNN-1, strongest-activation selection, CNN-2 router, CNN-3 in both readings.

``run_study(config, workdir)`` is the whole job (``resnet-jax train`` with a Study B preset). Each stage's result is
written to ``<workdir>/stages/<stage>.json`` and each model is checkpointed every epoch under
``<workdir>/models/<model>/``, so an interrupted run loses at most one epoch and a rerun skips
finished stages. Outputs: ``skip_results.json`` (every number) and ``skip_report.md`` (tables,
figures under ``figures/``).

Readings of CNN-3 (PROTOCOLS.md, Study B):
  * literal: CNN-3 with a 3-way head learns the layer labels of the selected images; each image's
    depth is its label in training; on held-out images it is reported with depth = true label
    (the study; note the depth itself reveals the label), depth = router prediction, and full depth.
  * useful: CNN-3 classifies the dataset's classes, every image (train and test) at the depth CNN-2
    predicts for it; compared with CNN-1 on accuracy, mean conv layers executed, MACs and wall time.
Controls: an *oracle* depth (per test image, the shallowest depth at which this CNN-3 is correct,
else full depth: an upper bound that needs the label) and a *random* depth (the router's test
depths randomly permuted: the same depth histogram and mean, no image-specific choice).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from resnet_jax import files, metrics
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

def _stage(workdir: Path, name: str, compute: Callable[[], dict], log: Callable[[str], None]) -> dict:
    """Run ``compute`` once per workdir; its JSON result makes a rerun skip it."""
    path = workdir / "stages" / f"{name}.json"
    if path.is_file():
        log(f"[{name}] already done")
        return json.loads(path.read_text())
    log(f"[{name}] running")
    start = time.perf_counter()
    result = {**compute(), "seconds": time.perf_counter() - start}
    files.write_json(path, result)
    return result


def _trained(config: Mapping, workdir: Path, name: str, model, images, labels, *, depths=None,
             section: str, log) -> Any:
    """Parameters of ``model`` trained by the ``section`` settings (resumed or restored from its checkpoints)."""
    t, s = config["train"], config[section]
    tx = skip_train.rmsprop(learning_rate=s["learning_rate"], rho=t["rho"], eps=t["eps"])
    state = skip_train.fit(model, images, labels, tx=tx, depths=depths, epochs=s["epochs"], batch_size=s["batch_size"],
                   seed=t["seed"], workdir=workdir / "models" / name, log=log)
    return state.params


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    correct = int((predictions == labels).sum())
    low, high = metrics.wilson_interval(correct, len(labels))
    return {"accuracy": correct / max(1, len(labels)), "ci_low": low, "ci_high": high, "n": int(len(labels))}


def _cnn1_logits(config: Mapping, cnn1: nets.SkipCNN, params, images: np.ndarray) -> np.ndarray:
    """CNN-1 is every example at depth 2: the plain forward, by the runner the routed CNN-3 uses too."""
    e = config["evaluation"]
    return analysis.predict_bucketed(cnn1, params, images, np.full(len(images), 2), batch_size=e["batch_size"],
                               min_bucket=e["min_bucket"])


def _select(config: Mapping, workdir: Path, cnn1, params, train: data.Split) -> dict:
    s = config["selection"]
    n_maps = min(s["maps_per_layer"], config["model"]["channels"])
    scores = analysis.activation_scores(cnn1, params, train.images, n_maps=n_maps, batch_size=s["batch_size"],
                                  site=s["site"])
    chosen = analysis.select_strongest(scores, per_map=min(s["images_per_map"], len(train)))
    indices, labels = analysis.layer_labels(chosen)
    np.savez(workdir / "selection.npz", scores=scores, chosen=chosen, indices=indices, labels=labels,
             images=train.images[indices])
    figure = figures.plot_selection(train.images, chosen, labels=dict(zip(indices.tolist(), labels.tolist())),
                             path=workdir / "figures" / "selection.png")
    per_layer = [{"layer": nets.CONVS[l], "picks": int(chosen[l].size), "unique": int(len(np.unique(chosen[l]))),
                  "labelled_here": int((labels == l).sum())} for l in range(len(nets.CONVS))]
    return {"n_maps": n_maps, "site": s["site"], "per_layer": per_layer, "n_labelled": int(len(indices)),
            "indices": indices.tolist(), "labels": labels.tolist(), "chosen": chosen.tolist(),
            "figure": str(figure.relative_to(workdir)),
            "index_meaning": "position in the training split as resnet_jax.data loads it"}


def _router(config, router, params, images, labels, held_out) -> dict:
    logits = skip_train.predict_logits(router, params, images[held_out], batch_size=config["evaluation"]["batch_size"])
    pred = logits.argmax(-1)
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (labels[held_out], pred), 1)
    return {**_accuracy(pred, labels[held_out]), "confusion_true_by_predicted": confusion.tolist(),
            "held_out_label_counts": np.bincount(labels[held_out], minlength=3).tolist(),
            "train_label_counts": np.bincount(np.delete(labels, held_out), minlength=3).tolist()}


def _literal(config, model, params, images, labels, router_depths) -> dict:
    b = config["evaluation"]["batch_size"]
    pred = lambda depths: skip_train.predict_logits(model, params, images, depths, batch_size=b).argmax(-1)  # noqa: E731
    return {
        "depth_true_label": _accuracy(pred(labels), labels),
        "depth_router": _accuracy(pred(router_depths), labels),
        "depth_full": _accuracy(pred(np.full_like(labels, 2)), labels),
        "majority_baseline": float(np.bincount(labels, minlength=3).max() / max(1, len(labels))),
    }


def _useful(config, workdir, cnn1, p1, cnn3, p3, test: data.Split, router_depths: np.ndarray, macs: dict) -> dict:
    e, seed = config["evaluation"], config["train"]["seed"]
    y, n = test.labels, len(test)
    full = _cnn1_logits(config, cnn1, p1, test.images).argmax(-1)
    fixed = np.stack([analysis.predict_bucketed(cnn3, p3, test.images, np.full(n, d), batch_size=e["batch_size"],
                                          min_bucket=e["min_bucket"]).argmax(-1) for d in nets.DEPTHS])
    routed = analysis.predict_bucketed(cnn3, p3, test.images, router_depths, batch_size=e["batch_size"],
                                 min_bucket=e["min_bucket"]).argmax(-1)
    correct = fixed == y
    oracle = np.where(correct.any(0), correct.argmax(0), 2)
    random_depths = np.random.default_rng(seed).permutation(router_depths)
    at = lambda depths: fixed[depths, np.arange(n)]  # noqa: E731  (an example's prediction at its depth)
    rows = [("CNN-1 (full depth)", full, np.full(n, 2), False),
            ("CNN-3, depth from CNN-2 (useful reading)", routed, router_depths, True),
            ("CNN-3, random depth (same histogram)", at(random_depths), random_depths, False),
            ("CNN-3, oracle depth (needs the label)", at(oracle), oracle, False),
            *[(f"CNN-3, fixed depth {d}", fixed[d], np.full(n, d), False) for d in nets.DEPTHS]]
    base, per_depth = macs["cnn"][2], np.array([macs["cnn"][d] for d in nets.DEPTHS], np.float64)
    out = []
    for name, pred, depths, routed_row in rows:
        m = float(per_depth[depths].mean())
        m_total = m + (macs["router"] if routed_row else 0)
        out.append({"name": name, **_accuracy(pred, y), "mean_depth": float(depths.mean()),
                    "mean_conv_layers": float(depths.mean() + 1),
                    "depth_counts": np.bincount(depths, minlength=3).tolist(), "macs_per_image": m,
                    "macs_per_image_with_router": m_total, "mac_ratio_vs_cnn1": m_total / base})
    figure = figures.plot_tradeoff(out, workdir / "figures" / "tradeoff.png")
    return {"rows": out, "routed_matches_gathered": float(np.mean(routed == at(router_depths))),
            "figure": str(figure.relative_to(workdir))}


def _timing(config, cnn1, p1, cnn3, p3, router, pr, test: data.Split, macs: dict) -> dict:
    e = config["evaluation"]
    b, mb = e["batch_size"], e["min_bucket"]
    route = lambda: skip_train.predict_logits(router, pr, test.images, batch_size=b).argmax(-1)  # noqa: E731
    depths = route()
    load_before = os.getloadavg()
    runs = analysis.time_paths({
        "cnn1": lambda: _cnn1_logits(config, cnn1, p1, test.images),
        "cnn3_routed_incl_router": lambda: analysis.predict_bucketed(cnn3, p3, test.images, route(), batch_size=b,
                                                               min_bucket=mb),
        "cnn3_bucketed_given_depths": lambda: analysis.predict_bucketed(cnn3, p3, test.images, depths, batch_size=b,
                                                                  min_bucket=mb),
        "cnn3_masked_given_depths": lambda: skip_train.predict_logits(cnn3, p3, test.images, depths, batch_size=b),
    }, repeats=e["timing_repeats"])
    base = runs["cnn1"]["median_s"]
    mean_macs = float(np.array([macs["cnn"][d] for d in nets.DEPTHS], np.float64)[depths].mean())
    return {"paths": runs, "wall_ratio_vs_cnn1": {k: v["median_s"] / base for k, v in runs.items()},
            "mac_ratio_vs_cnn1": {"cnn3_routed_incl_router": (mean_macs + macs["router"]) / macs["cnn"][2],
                                  "cnn3_bucketed_given_depths": mean_macs / macs["cnn"][2],
                                  "cnn3_masked_given_depths": 1.0},
            "n_examples": len(test), "batch_size": b, "bucket_sizes": list(analysis.bucket_sizes(b, mb)),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count()}


def run_study(config: Mapping, workdir: str | Path, *, force_new: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) Study B in ``workdir``; write ``skip_results.json`` and ``skip_report.md``."""
    workdir = Path(workdir)
    train, test = load_data(config)  # before touching the workdir: bad data leaves nothing behind
    core.prepare_workdir(config, workdir, force_new=force_new)
    c, seed, e = config["model"]["channels"], config["train"]["seed"], config["evaluation"]
    shape, k = train.images.shape[1:], train.num_classes
    macs = {"cnn": nets.skip_cnn_macs(shape, channels=c, num_classes=k),
            "router": nets.router_macs(shape, channels=config["model"]["router_channels"])}
    res: dict[str, Any] = {"config": dict(config), "macs": macs, "environment": markdown.environment()}

    # CNN-3 has CNN-1's architecture; the same module object also shares its compiled functions, and the
    # same seed gives both the same initial weights and example order: only the depths differ.
    cnn1 = cnn3 = nets.SkipCNN(k, c)
    p1 = _trained(config, workdir, "cnn1", cnn1, train.images, train.labels, section="train", log=log)
    res["cnn1"] = _stage(workdir, "cnn1", lambda: {"test": _accuracy(
        _cnn1_logits(config, cnn1, p1, test.images).argmax(-1), test.labels)}, log)
    res["selection"] = _stage(workdir, "selection", lambda: _select(config, workdir, cnn1, p1, train), log)
    idx, labels = np.asarray(res["selection"]["indices"]), np.asarray(res["selection"]["labels"], np.int32)
    fit_pos, held = stratified_split(labels, fraction=config["router"]["holdout"], seed=seed)
    labelled = train.images[idx]

    router = nets.Router(tuple(config["model"]["router_channels"]))
    pr = _trained(config, workdir, "router", router, labelled[fit_pos], labels[fit_pos], section="router", log=log)
    res["router"] = _stage(workdir, "router", lambda: _router(config, router, pr, labelled, labels, held), log)
    route = lambda images: skip_train.predict_logits(  # noqa: E731
        router, pr, images, batch_size=e["batch_size"]).argmax(-1).astype(np.int32)

    literal = nets.SkipCNN(len(nets.DEPTHS), c)
    pl = _trained(config, workdir, "cnn3_literal", literal, labelled[fit_pos], labels[fit_pos],
                  depths=labels[fit_pos], section="literal", log=log)
    res["literal"] = _stage(workdir, "literal", lambda: _literal(config, literal, pl, labelled[held], labels[held],
                                                                 route(labelled[held])), log)

    train_depths, test_depths = route(train.images), route(test.images)
    res["train_depth_counts"] = np.bincount(train_depths, minlength=3).tolist()
    p3 = _trained(config, workdir, "cnn3_routed", cnn3, train.images, train.labels, depths=train_depths,
                  section="train", log=log)
    res["useful"] = _stage(workdir, "useful",
                           lambda: _useful(config, workdir, cnn1, p1, cnn3, p3, test, test_depths, macs), log)
    res["timing"] = _stage(workdir, "timing",
                           lambda: _timing(config, cnn1, p1, cnn3, p3, router, pr, test, macs), log)
    res["figures"] = {"selection": res["selection"]["figure"], "tradeoff": res["useful"]["figure"]}
    files.write_json(workdir / "skip_results.json", res)
    report = write_report(res, workdir)
    log(f"wrote {report} and {workdir / 'skip_results.json'}")
    return res


# Figures and report ----------------------------------------------------------------------------------

def _acc(a: Mapping) -> str:
    return f"{a['accuracy']:.4f} [{a['ci_low']:.4f}, {a['ci_high']:.4f}] (n={a['n']})"


def write_report(res: Mapping, workdir: str | Path) -> Path:
    """``<workdir>/skip_report.md`` from the results of :func:`run_study`."""
    workdir = Path(workdir)
    sel, rt, lit, use, tm, macs = (res[k] for k in ("selection", "router", "literal", "useful", "timing", "macs"))
    cfg = res["config"]
    p = [f"# Study B: per-image layer skipping (`{workdir.name}`)", "",
         f"Data `{cfg['data']['name']}`; CNN-1/CNN-3: 3 convs x {cfg['model']['channels']} channels; "
         f"CNN-2 convs {cfg['model']['router_channels']} (stride 2). Accuracies with 95 % Wilson intervals.", "",
         "## CNN-1", "", f"Test accuracy {_acc(res['cnn1']['test'])}.", "",
         "## Selection", "",
         f"First {sel['n_maps']} maps per conv ({sel['site']} activations), "
         f"{cfg['selection']['images_per_map']} strongest training images per map; "
         f"{sel['n_labelled']} distinct images labelled (deeper label wins).", "",
         "| layer | picks | distinct | labelled with this layer |", "|---|---:|---:|---:|",
         *[f"| {r['layer']} | {r['picks']} | {r['unique']} | {r['labelled_here']} |" for r in sel["per_layer"]], "",
         f"![selection]({sel['figure']})", "",
         "## CNN-2 (router)", "",
         f"Held-out accuracy {_acc(rt)} (stratified {cfg['router']['holdout']:.0%} hold-out; train label counts "
         f"{rt['train_label_counts']}, held-out {rt['held_out_label_counts']}). Confusion (rows true, columns "
         f"predicted): `{rt['confusion_true_by_predicted']}`.", "",
         "## CNN-3, literal reading (predicting the layer labels, held-out images)", "",
         "| depth of each image | accuracy |", "|---|---|",
         f"| its true label (the study's; the depth reveals the label) | {_acc(lit['depth_true_label'])} |",
         f"| CNN-2's prediction | {_acc(lit['depth_router'])} |",
         f"| full depth | {_acc(lit['depth_full'])} |", "",
         f"Majority-label baseline: {lit['majority_baseline']:.4f}.", "",
         "## CNN-3, useful reading (the dataset's classes, whole test set)", "",
         f"Training depths from CNN-2 (counts for depth 0/1/2): {res['train_depth_counts']}. MACs per image: "
         f"depth 0/1/2 = {', '.join(format(macs['cnn'][d], ',') for d in nets.DEPTHS)}; router {macs['router']:,}.", "",
         "| model | accuracy [95 % CI] | mean conv layers | depth counts | MACs/img (incl. router) | MAC ratio |",
         "|---|---|---:|---|---:|---:|",
         *[f"| {r['name']} | {r['accuracy']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}] | {r['mean_conv_layers']:.3f} "
           f"| {r['depth_counts']} | {r['macs_per_image_with_router']:,.0f} | {r['mac_ratio_vs_cnn1']:.3f} |"
           for r in use["rows"]], "",
         "Oracle: per image, the shallowest depth at which this CNN-3 is correct, else full depth. Random: "
         "CNN-2's test depths randomly permuted.", "", f"![tradeoff]({res['figures']['tradeoff']})", "",
         "## Wall time on the whole test set (same run)", "",
         "| path | median s | wall ratio vs CNN-1 | MAC ratio vs CNN-1 |", "|---|---:|---:|---:|",
         *[f"| {k} | {v['median_s']:.4f} | {tm['wall_ratio_vs_cnn1'][k]:.3f} | "
           f"{tm['mac_ratio_vs_cnn1'].get(k, 1.0):.3f} |" for k, v in tm["paths"].items()], "",
         f"{tm['n_examples']} images, batch {tm['batch_size']}, buckets {tm['bucket_sizes']}, median of "
         f"{cfg['evaluation']['timing_repeats']} interleaved runs after a warm-up. Load average before/after "
         f"{[round(x, 2) for x in tm['loadavg_before']]} / {[round(x, 2) for x in tm['loadavg_after']]} on "
         f"{tm['cpu_count']} CPUs: on a shared machine wall ratios are noisy.", "",
         "## Config", "", "```json", json.dumps(cfg, indent=2), "```", "",
         "## Environment", "", "```json", json.dumps(res["environment"], indent=2), "```", ""]
    out = workdir / "skip_report.md"
    out.write_text("\n".join(p))
    return out
