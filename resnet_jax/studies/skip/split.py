"""Study B's data: the train and test splits and the stratified hold-out of the labelled images on which a router
is scored (the fit / validation cut of the training split is the one every family uses,
:func:`resnet_jax.data.images.stratified_holdout`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from resnet_jax.data import images as data


def load_data(config: Mapping) -> tuple[data.Split, data.Split]:
    """Train and test splits; ``synthetic`` is sized by ``data.synthetic`` (e.g. 32x32x3, 100 classes).

    Example:
        >>> from resnet_jax import configs
        >>> from resnet_jax.studies.skip import load_data
        >>> config = configs.defaults("skip", ["data.name=synthetic", "data.synthetic.train_examples=64"])
        >>> train, test = load_data(config)
        >>> train.images.shape, test.images.shape, train.num_classes
        ((64, 28, 28, 1), (512, 28, 28, 1), 10)
    """
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
    """``(train, held_out)`` positions of the router's few hundred labelled images: ``round(fraction * n_c)`` of
    each label held out, at least one of every label that has two (unlike the validation split of
    :func:`resnet_jax.data.images.stratified_holdout`, which takes a count and may leave a rare label out).

    Example:
        >>> import numpy as np
        >>> from resnet_jax.studies.skip import stratified_split
        >>> labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])     # layer labels; label 3 has a single image
        >>> train, held_out = stratified_split(labels, fraction=0.2, seed=0)
        >>> np.bincount(labels[held_out], minlength=4).tolist(), len(train)
        ([2, 1, 1, 0], 14)
    """
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) >= 2 else 0
        held.append(members[:k])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out
