"""A segmentation sweep's qualitative figure: test slices with the ground truth and the predictions of the
baseline, the most harmful and the most harmless mask of the sweep.

Usage: ``qualitative_figure(workdir / "ablation", rows, ablations, subject=subject)``, as ``resnet-jax ablate``
calls it for a segmentation run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import metrics
from resnet_jax.ablation import catalogue as abl
from resnet_jax.data.inputs import normalize
from resnet_jax.reporting import figures


def _ablated_variables(model, variables, ablation: abl.Ablation, layers, sample, initial_params):
    mask = abl.make_mask(variables["params"], ablation, layers)
    replace = abl.replacement_for(ablation.kind, model=model, input_shape=sample.shape, initial_params=initial_params)
    return abl.apply(variables, mask, replacement=None if replace is None else replace(ablation.seed))


def pick_examples(masks: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices spread over the split, preferring slices that show every class."""
    full = [i for i, m in enumerate(masks) if len(np.unique(m)) == int(masks.max()) + 1]
    pool = np.asarray(full if len(full) >= n else range(len(masks)))
    return pool[np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int)]


def qualitative_figure(directory: Path, rows: Sequence[dict], ablations: Mapping[str, abl.Ablation], *, subject,
                       initial_params=None, n_images: int = 4) -> list[Path]:
    """``qualitative.png`` (+ ``.json`` for the report): image, ground truth, baseline prediction, and the
    predictions under the most harmful and the most harmless mask among ``rows`` (lowest and highest score)."""
    model, variables, split = subject.model, subject.variables, subject.test
    image_mean, image_std = subject.image_mean, subject.image_std
    scored = [r for r in rows if r["mask"] in ablations and r["kind"] != "none"]
    if not scored:
        return []
    worst, best = min(scored, key=lambda r: r["value"]), max(scored, key=lambda r: r["value"])
    idx = pick_examples(split.masks, n_images)
    images, masks = split.images[idx], split.masks[idx]
    layers = abl.catalogue(model, variables, input_shape=(1, *images.shape[1:]))
    metric = metrics.Dice(num_classes=split.num_classes)
    x = normalize(jnp.asarray(images), image_mean, image_std)  # as training and the engine normalise
    columns = [("baseline", variables)]
    for label, row in (("most harmful", worst), ("most harmless", best)):
        ablated = _ablated_variables(model, variables, ablations[row["mask"]], layers, x[:1], initial_params)
        columns.append((f"{label}:\n{row['mask']} ({row['kind']})\n{row['metric']} {row['value']:.3f}", ablated))
    predictions, scores = [], []
    apply = jax.jit(model.apply)
    for _, v in columns:
        logits, _ = apply(v, x)
        predictions.append(np.asarray(jnp.argmax(logits, -1)))
        scores.append(np.asarray(metric.per_example(logits, jnp.asarray(masks))["score"]))
    path = directory / "qualitative.png"
    figures.plot_qualitative(path, images, masks, predictions, scores, [c[0] for c in columns], split.class_names,
                             [split.ids[i] for i in idx])
    meta = {"title": "qualitative", "figure": path.name,
            "description": f"Test slices: image, ground truth, and predictions of the baseline and of the most "
                           f"harmful ({worst['mask']}, {worst['kind']}) and most harmless ({best['mask']}, "
                           f"{best['kind']}) masks of this sweep; per-slice mean foreground Dice in each title.",
            "masks": {"most_harmful": worst["mask"], "most_harmless": best["mask"]}}
    meta_path = directory / "qualitative.json"
    meta_path.write_text(json.dumps(meta, indent=2))
    return [path, meta_path]
