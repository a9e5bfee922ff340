"""Wall time of every test operating point's inference as it would run (only the layers each image needs),
all points interleaved in one run; each timed path's predictions are checked against its point's."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np

from resnet_jax.ablation import speed
from resnet_jax.studies.skip import analysis
from resnet_jax.studies.skip.points import Models
from resnet_jax.training import skipping as skip_train


def _path_fn(m: Models, path: Mapping, depths: np.ndarray) -> Callable[[], np.ndarray]:
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
    """The name an operating point is timed and matched by: its method, and its setting where it has one.

    Example:
        >>> from resnet_jax.studies.skip import point_key
        >>> point_key({"method": "early_exit", "setting": "threshold 0.9"})
        'early_exit: threshold 0.9'
        >>> point_key({"method": "full", "setting": ""})
        'full'
    """
    return f"{point['method']}: {point['setting']}" if point["setting"] else point["method"]


TIMING = "paired rounds: every point once per round in a shuffled order, a ratio to CNN-1's per round"
"""How the wall ratios are measured (part of the timing stage's inputs: a workdir timed otherwise is timed again)."""


def timing(config, workdir: Path, m: Models, points: list[dict]) -> dict:
    """Wall seconds of every test point's path in interleaved rounds (CNN-1's path, the first point, is the
    reference): each point's wall ratio is the median over rounds of its time over CNN-1's in the same round,
    with a distribution-free interval (:func:`resnet_jax.ablation.speed.ratio_interval`); each timed path's
    predictions are compared with its point's, computed from every depth's or exit's outputs."""
    with np.load(workdir / "operating_points.npz") as z:
        stored = [(z[f"depths_{i}"], z[f"predictions_{i}"]) for i in range(len(points))]
    paths = {point_key(p): _path_fn(m, p["path"], depths) for p, (depths, _) in zip(points, stored)}
    load_before, repeats = os.getloadavg(), config["evaluation"]["timing_repeats"]
    runs, outputs = analysis.time_paths(paths, repeats=repeats, seed=config["train"]["seed"])
    reference = runs[point_key(points[0])]
    out = {}
    for key, (_, predictions) in zip(paths, stored):
        interval = speed.ratio_interval(runs[key], reference)
        out[key] = {"median_s": float(np.median(runs[key])), "runs_s": runs[key],
                    "wall_ratio_vs_cnn1": interval["ratio"], "wall_ratio_interval": interval,
                    "prediction_agreement": float(np.mean(outputs[key] == predictions))}
    return {"paths": out, "n_examples": len(m.images), "batch_size": m.b, "method": TIMING,
            "bucket_sizes": list(analysis.bucket_sizes(m.b, m.mb)), "repeats": repeats,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


def attach_wall_ratios(res: dict) -> None:
    """Each test point (and best point) gets the wall ratio measured for it, matched by name, and its interval
    where the timing made one."""
    timed = res["timing"]["paths"]
    for point in (*res["curves"]["test"], *res["curves"]["best"]):
        point["wall_ratio_vs_cnn1"] = timed[point_key(point)]["wall_ratio_vs_cnn1"]
        if "wall_ratio_interval" in timed[point_key(point)]:
            point["wall_ratio_interval"] = timed[point_key(point)]["wall_ratio_interval"]
