"""What a sweep scores: a trained run of any task (or a user's own model) as model, weights, test data, metric and
normalisation."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from resnet_jax.training import runs


@dataclasses.dataclass(frozen=True)
class Subject:
    """A trained run (or a user's model) as the engine sees it.

    ``images`` are normalised by the engine with :func:`resnet_jax.data.inputs.normalize`, as in
    training; ``test`` is the evaluated split itself (for task-specific figures). ``origin`` is None for a run
    trained here; for a user's model it says what produced the results beside the weights and examples (model
    reference and arguments, call keywords, normalisation, data source), and the result store is keyed by it.

    ``runs/tiny`` is a run trained by ``resnet-jax train --config synthetic-tiny --workdir runs/tiny``.

    Example:
        >>> from resnet_jax.ablation import evaluate, layer_catalogue, protocol_specs, resolve_all, restore_subject
        >>> run = restore_subject("runs/tiny", n_examples=64)  # doctest: +SKIP
        >>> run.task, run.images.shape, run.metric.name  # doctest: +SKIP
        ('classification', (64, 32, 32, 3), 'accuracy')
        >>> layers = layer_catalogue(run.model, run.variables, run.images[:1])  # doctest: +SKIP
        >>> ablations = resolve_all(protocol_specs("shortcut", layers), layers)  # doctest: +SKIP
        >>> results = evaluate(run.model, run.variables, ablations, layers, run.images, run.targets,
        ...                    image_mean=run.image_mean, image_std=run.image_std, metric=run.metric)  # doctest: +SKIP
        >>> [(r.name, r.n_examples) for r in results]  # doctest: +SKIP
        [('layer2.0.downsample', 64), ('layer3.0.downsample', 64), ('layer4.0.downsample', 64)]
    """

    model: Any
    variables: Any
    step: int
    task: str
    test: Any
    images: np.ndarray
    targets: np.ndarray
    metric: Any
    image_mean: np.ndarray
    image_std: np.ndarray
    choice: str = ""  # which checkpoint and why (validation-chosen, or test-chosen for older runs)
    origin: Any = None


def restore_subject(workdir, *, checkpoint: str = "best", data_dir=None, n_examples: int | None = None) -> Subject:
    """The run in ``workdir`` (classification, scored by accuracy, or segmentation, by Dice) on a fixed
    random subset of ``n_examples`` of its test split (all of it by default).

    ``runs/tiny`` is a run trained by ``resnet-jax train --config synthetic-tiny --workdir runs/tiny``.

    Example:
        >>> from resnet_jax.ablation import restore_subject
        >>> run = restore_subject("runs/tiny", n_examples=64)  # doctest: +SKIP
        >>> run.task, run.step, run.images.shape, run.targets.shape, run.metric.name  # doctest: +SKIP
        ('classification', 12, (64, 32, 32, 3), (64,), 'accuracy')
        >>> run.choice  # doctest: +SKIP
        'best checkpoint by validation accuracy (step 12)'
    """
    run = runs.restore(workdir, which=checkpoint, data_dir=data_dir, command="ablate")
    test = run.test.take(n_examples, seed=0)
    images, targets = run.task.arrays(test)
    return Subject(model=run.model, variables=jax.device_get(run.state.variables), step=int(run.state.step),
                   task=run.task.name, test=test, images=images, targets=targets, metric=run.task.metric(run.config),
                   image_mean=np.asarray(run.state.image_mean), image_std=np.asarray(run.state.image_std),
                   choice=run.choice)
