"""Runs of any task: the task a config belongs to, training it, and restoring a trained run from its workdir."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from resnet_jax import configs
from resnet_jax.training import classification, core, segmentation

TASKS: dict[str, core.Task] = {t.name: t for t in (classification.TASK, segmentation.TASK)}
"""Tasks trained by the core; Study B (``skip``) is a study of several small models, run by ``studies.skip``."""


def read_config(workdir: str | Path) -> dict[str, Any]:
    """A run's stored config, completed with its family's current defaults.

    Example:
        >>> import json, pathlib, tempfile
        >>> from resnet_jax.training import read_config
        >>> workdir = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (workdir / "config.json").write_text(json.dumps({"model": {"name": "resnet18"}}))  # an older run's
        >>> config = read_config(workdir)
        >>> config["task"], config["model"]["name"], config["train"]["epochs"]
        ('classification', 'resnet18', 30)
    """
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} holds no run (no config.json); train one with "
                                f"`resnet-jax train --config PRESET --workdir {workdir}`")
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise configs.ConfigError(f"{path} is not valid JSON ({err})") from None
    return configs.complete(stored)


def task_for(config: Mapping, *, command: str) -> core.Task:
    """The core task of a config; Study B runs are refused with the command that fits them."""
    name = config["task"]
    if name not in TASKS:
        raise configs.ConfigError(f"`resnet-jax {command}` works on {sorted(TASKS)} runs; this is a {name!r} run "
                                  f"(see its skip_report.md; `resnet-jax train --config ...` reruns it)")
    return TASKS[name]


def train(config: Mapping, workdir: str | Path, *, force_new: bool = False,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``config`` (any preset's task) into ``workdir``, resuming what is there, and return the last epoch's
    metrics; the test score of the checkpoint chosen on validation is logged and kept in ``evaluation.json``.

    Example:
        >>> from resnet_jax import configs
        >>> from resnet_jax.training import train
        >>> last = train(configs.load_config("synthetic-tiny"), "runs/tiny")  # doctest: +SKIP
        epoch=1 step=6 train_accuracy=... val_accuracy=... images_per_second=... elapsed_s=... resumed_mid_epoch=False
        epoch=2 step=12 train_accuracy=... val_accuracy=... images_per_second=... elapsed_s=... resumed_mid_epoch=False
        checkpoint=best step=... n_examples=256 chosen_by=val_accuracy test_loss=... test_accuracy=...
        >>> last["epoch"], last["step"]  # doctest: +SKIP
        (2, 12)
    """
    return core.train_and_evaluate(config, workdir, task_for(config, command="train"), force_new=force_new, log=log)


def restore(workdir: str | Path, *, which: str = "best", data_dir: str | None = None,
            command: str = "evaluate") -> core.Run:
    """A trained run; ``data_dir`` overrides where its data is read from.

    ``runs/tiny`` is a run trained by ``resnet-jax train --config synthetic-tiny --workdir runs/tiny``.

    Example:
        >>> from resnet_jax.training import restore
        >>> run = restore("runs/tiny", which="latest")  # doctest: +SKIP
        >>> run.choice, run.state.image_mean.shape  # doctest: +SKIP
        ('latest checkpoint (step 12)', (3,))
    """
    config = read_config(workdir)
    if data_dir is not None:
        config["data"]["data_dir"] = str(data_dir)
    return core.restore_run(workdir, config, task_for(config, command=command), which=which)
