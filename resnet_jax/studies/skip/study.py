"""Study B end to end: CNN-1, its layer labels, the routers, the literal and useful CNN-3s, the early-exit
network, every operating point and its wall time; each stage kept in the workdir's ledger."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_jax import configs, files, ledger, metrics
from resnet_jax.data import images as data
from resnet_jax.models import skip_cnn as nets
from resnet_jax.reporting import figures, results, skip_report
from resnet_jax.studies.skip import analysis, labelling, points, routers, split, timing
from resnet_jax.reporting.skip_verdict import verdict
from resnet_jax.training import core
from resnet_jax.training import skipping as skip_train


STAGE_OUTPUTS = {"selection": ("selection.npz", "figures/selection.png"), "dense": ("dense_labels.npz",),
                 "curves": ("operating_points.npz",)}
"""What each stage writes beside its ledger record (the others write only the record)."""


@dataclass
class _Study:
    """One run of Study B: its settings, workdir and splits, the trained models (module, params) and the
    results so far (what ``skip_results.json`` will hold)."""

    config: Mapping
    workdir: Path
    fit: Any
    val: Any
    test: Any
    log: Callable[[str], None]
    models: dict[str, tuple] = field(default_factory=dict)
    res: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str, compute: Callable[[], dict], inputs: Any = None) -> dict:
        """Run ``compute`` once per workdir (the ledger keeps its result); ``inputs`` (JSON data) are what the
        stage was computed from beyond the run's config and models: a result made from other inputs is stale
        and is computed again, never reused."""
        self.res[name] = ledger.run(self.workdir, ledger.Stage(name, compute, STAGE_OUTPUTS.get(name, ()), inputs),
                                    self.log)
        return self.res[name]

    def train(self, name: str, model, images, labels, *, section: str = "train", depths=None) -> tuple:
        """``model`` trained by the ``section`` settings (resumed or restored from its checkpoints)."""
        t, s = self.config["train"], self.config[section]
        ledger.declare(self.workdir, "models", ["models"])
        tx = skip_train.rmsprop(learning_rate=s["learning_rate"], rho=t["rho"], eps=t["eps"])
        state = skip_train.fit(model, images, labels, tx=tx, depths=depths, epochs=s["epochs"],
                               batch_size=s["batch_size"], seed=t["seed"], workdir=self.workdir / "models" / name,
                               log=self.log)
        return model, state.params

    def route(self, key: str, images) -> np.ndarray:
        """Each image's depth by the router ``key``."""
        logits = skip_train.predict_logits(*self.models[key], images, batch_size=self.config["evaluation"]["batch_size"])
        return logits.argmax(-1).astype(np.int32)


def run_study(config: Mapping, workdir: str | Path, *, force_new: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) Study B in ``workdir``; write ``skip_results.json`` and ``skip_report.md``.

    The example trains every network of the study: minutes on a CPU.

    Example:
        >>> from resnet_jax import configs
        >>> from resnet_jax.studies.skip import run_study
        >>> config = configs.load_config("mnist-skip-smoke", data_dir="../shared/data/mnist")  # doctest: +SKIP
        >>> results = run_study(config, "runs/skip-smoke", log=lambda line: None)  # doctest: +SKIP
        >>> sorted(results["split_sizes"]), len(results["verdict"]) >= 3  # doctest: +SKIP
        (['fit', 'test', 'validation'], True)
    """
    workdir = Path(workdir)
    train, test = split.load_data(config)  # before touching the workdir: bad data leaves nothing behind
    fit_pos, val_pos = data.stratified_holdout(train.labels, config["data"]["val_examples"],
                                               seed=config["train"]["seed"])
    core.prepare_workdir(config, workdir, force_new=force_new)
    _check_split(workdir, val_pos)
    s = _Study(config, workdir, train.select(fit_pos), train.select(val_pos), test, log)
    files.write_json(workdir / "dataset.json", core.describe_splits(core.Splits(s.fit, s.val, test)))  # digests
    s.res.update({"config": dict(config), "macs": _macs(config, train), "environment": results.machine(),
                  "split_sizes": {"fit": len(s.fit), "validation": len(s.val), "test": len(test)}})
    # CNN-1 and the CNN-3s share one module object, hence compiled functions; the same seed gives them the same
    # initial weights and example order: only the depths differ.
    cnn = nets.SkipCNN(train.num_classes, tuple(config["model"]["widths"]))
    s.models["cnn1"] = s.train("cnn1", cnn, s.fit.images, s.fit.labels)
    e = config["evaluation"]
    s.stage("cnn1", lambda: {"test": routers.accuracy(analysis.predict_bucketed(
        *s.models["cnn1"], test.images, np.full(len(test), 2), batch_size=e["batch_size"],
        min_bucket=e["min_bucket"]).argmax(-1), test.labels)})
    _selection(s)
    _dense(s)
    for key in ("selection", "dense"):  # the useful CNN-3s, each trained at its router's depths
        depths = s.route(f"router_{key}", s.fit.images)
        s.res[f"fit_depth_counts_{key}"] = np.bincount(depths, minlength=3).tolist()
        s.models[f"cnn3_{key}"] = s.train(f"cnn3_{key}", cnn, s.fit.images, s.fit.labels, depths=depths)
    s.models["early_exit"] = s.train("early_exit", nets.EarlyExitCNN(train.num_classes, tuple(config["model"]["widths"])),
                                     s.fit.images, s.fit.labels)
    _points_and_timing(s)
    return _finish(s, fit_pos)


def _check_split(workdir: Path, val_pos: np.ndarray) -> None:
    """Record the fit / validation cut the workdir's models train on; a workdir made with another cut (an older
    resnet-jax drew it unstratified) is refused, so that a resumed run never mixes models of two splits."""
    digest = hashlib.sha256(np.asarray(val_pos, np.int64).tobytes()).hexdigest()[:16]
    path = workdir / "split.json"
    stored = json.loads(path.read_text()).get("validation_sha") if path.is_file() else None
    if stored not in (None, digest) or (stored is None and (workdir / "models").exists()):
        raise configs.ConfigError(f"{workdir} holds models trained on another validation split than this version "
                                  f"draws (stratified by class); pass --force-new to start over")
    ledger.declare(workdir, "split", ["split.json"])
    files.write_json(path, {"validation_sha": digest, "validation_examples": len(val_pos)})


def _macs(config: Mapping, train) -> dict[str, Any]:
    shape, k, widths = train.images.shape[1:], train.num_classes, tuple(config["model"]["widths"])
    return {"cnn": {str(d): v for d, v in nets.skip_cnn_macs(shape, widths=widths, num_classes=k).items()},
            "early_exit": {str(d): v for d, v in nets.early_exit_macs(shape, widths=widths, num_classes=k).items()},
            "router": nets.router_macs(shape, channels=config["model"]["router_channels"])}  # depth keys as in JSON


def _selection(s: _Study) -> None:
    """The study's labelling (10 maps x 10 strongest images per layer), its router and the literal CNN-3."""
    config, fit = s.config, s.fit
    selected = s.stage("selection", lambda: labelling.select(config, s.workdir, *s.models["cnn1"], fit))
    idx, labels = np.asarray(selected["indices"]), np.asarray(selected["labels"], np.int32)
    fit_sel, held = split.stratified_split(labels, fraction=config["router"]["holdout"], seed=config["train"]["seed"])
    labelled = fit.images[idx]
    router = nets.Router(tuple(config["model"]["router_channels"]))
    s.models["router_selection"] = s.train("router", router, labelled[fit_sel], labels[fit_sel], section="router")
    s.stage("router", lambda: {**routers.router_scores(config, *s.models["router_selection"], labelled[held],
                                                       labels[held]),
                               "train_label_counts": np.bincount(labels[fit_sel], minlength=3).tolist()})
    literal = s.train("cnn3_literal", nets.SkipCNN(len(nets.DEPTHS), tuple(config["model"]["widths"])),
                      labelled[fit_sel], labels[fit_sel], section="literal", depths=labels[fit_sel])
    s.stage("literal", lambda: routers.literal(config, *literal, labelled[held], labels[held],
                                               s.route("router_selection", labelled[held])))


def _dense(s: _Study) -> None:
    """Dense labelling: every image labelled; its router is scored on the validation images' labels."""
    s.stage("dense", lambda: labelling.dense(s.config, s.workdir, *s.models["cnn1"], s.val))
    with np.load(s.workdir / "dense_labels.npz") as z:
        dense_fit, dense_val = z["fit"], z["validation"]
    router = nets.Router(tuple(s.config["model"]["router_channels"]))
    s.models["router_dense"] = s.train("router_dense", router, s.fit.images, dense_fit, section="dense")
    s.stage("dense_router", lambda: {**routers.router_scores(s.config, *s.models["router_dense"], s.val.images,
                                                             dense_val),
                                     "train_label_counts": np.bincount(dense_fit, minlength=3).tolist()})


def _points_and_timing(s: _Study) -> None:
    config, m = s.config, s.models
    curves = s.stage("curves", lambda: points.curves(
        config, s.workdir, points.Models(config, m, s.val.images), points.Models(config, m, s.test.images),
        s.val.labels, s.test.labels, s.res["macs"]))
    s.stage("timing", lambda: timing.timing(config, s.workdir, points.Models(config, m, s.test.images), curves["test"]),
            inputs=[[timing.point_key(p), p["accuracy"]] for p in curves["test"]] + [timing.TIMING])
    timing.attach_wall_ratios(s.res)


def _finish(s: _Study, fit_pos: np.ndarray) -> dict[str, Any]:
    """Figures, the verdict (after CNN-1's competence warning, if any), ``skip_results.json`` and the report."""
    res, workdir = s.res, s.workdir
    res["figures"] = {"selection": res["selection"]["figure"],
                      "tradeoff": str(figures.plot_skip_curves(res["curves"]["test"], points.METHODS,
                                                               workdir / "figures" / "tradeoff.png")
                                      .relative_to(workdir))}
    res["verdict"] = verdict(res["curves"])
    warning = metrics.competence_warning(metrics.Accuracy(), res["cnn1"]["test"]["accuracy"], s.test.labels)
    if warning:
        res["warning"] = f"CNN-1: {warning}"
        res["verdict"] = [f"WARNING: {res['warning']}", *res["verdict"]]
        s.log(f"WARNING: {res['warning']}")
    res["fit_positions"] = fit_pos.tolist()
    ledger.declare(workdir, "skip-report", ["skip_results.json", "skip_report.md", "figures/tradeoff.png"])
    files.write_json(workdir / "skip_results.json", res)
    report = skip_report.write_report(res, workdir)
    s.log(f"wrote {report} and {workdir / 'skip_results.json'}")
    return res
