"""Study B's layer labels: the study's selection (the strongest fit images of each layer's first maps) and the
dense labelling of every image; both stored beside the ledger for the stages that read them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from resnet_jax import files
from resnet_jax.data import images as data
from resnet_jax.models import skip_cnn as nets
from resnet_jax.reporting import figures
from resnet_jax.studies.skip import analysis


def maps_per_layer(config: Mapping) -> int:
    """Maps read per layer: the study's first 10, or all of the narrowest layer's (every layer the same count)."""
    return min(config["selection"]["maps_per_layer"], *config["model"]["widths"])


def select(config: Mapping, workdir: Path, cnn1, params, fit: data.Split) -> dict:
    s = config["selection"]
    n_maps = maps_per_layer(config)
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


def dense(config: Mapping, workdir: Path, cnn1, params, val: data.Split) -> dict:
    """Dense labels of every fit and validation image; the fit images' scores are the selection stage's."""
    s = config["selection"]
    with np.load(workdir / "selection.npz") as z:
        fit_scores = z["scores"]
    val_scores = analysis.activation_scores(cnn1, params, val.images, n_maps=maps_per_layer(config),
                                            batch_size=s["batch_size"], site=s["site"])
    fit_labels, val_labels = analysis.dense_labels(fit_scores, fit_scores), analysis.dense_labels(fit_scores, val_scores)
    files.savez(workdir / "dense_labels.npz", fit=fit_labels, validation=val_labels)
    return {"n_maps": maps_per_layer(config), "fit_counts": np.bincount(fit_labels, minlength=3).tolist(),
            "validation_counts": np.bincount(val_labels, minlength=3).tolist()}
