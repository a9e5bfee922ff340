"""A torchvision checkpoint as a run directory that ``evaluate``, ``ablate`` and ``verify`` accept
(``resnet-jax import-torch``): the weights converted by :mod:`resnet_jax.interop.convert`, the input
normalisation chosen here (a state_dict does not hold it), and where the weights came from."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import checkpointing, configs, files, ledger
from resnet_jax.data import images as image_data
from resnet_jax.data.inputs import channel_stats
from resnet_jax.interop import convert
from resnet_jax.training import classification, core

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("train", "imagenet")


def import_torch_run(path: str | os.PathLike, workdir: str | os.PathLike, *, arch: str, stem: str | None = None,
                     num_classes: int | None = None, data_name: str = "cifar10",
                     data_dir: str | os.PathLike | None = None, config: str | None = None,
                     overrides: Sequence[str] = (), normalization: str = "train",
                     image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None,
                     log: Callable[[str], None] = print) -> Path:
    """Turn a torchvision checkpoint into a run directory that ``evaluate``, ``ablate`` and ``verify`` accept.

    Writes ``config.json`` (the ``config`` preset, by default the classification defaults, with ``overrides``, then model and data set from the
    arguments), one checkpoint at step 0, ``import.json`` (where the weights came from) and its test score,
    logged and kept in ``evaluation-latest.json``. The input
    normalisation is not stored in a state_dict, so it is chosen here: ``'train'`` (default) uses the
    channel statistics of the dataset's training split, which is what ``resnet-jax train`` does and
    what CIFAR recipes' ``Normalize`` constants are; ``'imagenet'`` uses torchvision's ImageNet
    constants (for ImageNet-pretrained weights); ``image_mean``/``image_std`` override both. The run
    keeps no initial parameters, so ``reinit`` ablations do not apply to it.

    Example::

        import_torch_run("c10_resnet34.pt", "runs/from-torch", arch="resnet34", data_dir="../shared/data/cifar10")

    Raises:
      DataError: the file is not a state_dict of ``arch`` (the message names the first bad key) or its
        head does not fit the dataset's classes.
      ConfigError: ``workdir`` is not empty, or an option is invalid.
    """
    path, workdir = Path(path), Path(workdir)
    if arch not in convert.TORCHVISION_ARCHS:
        raise configs.ConfigError(f"unsupported architecture {arch!r}; valid: {', '.join(convert.TORCHVISION_ARCHS)}")
    if workdir.exists() and any(p.name != ledger.HOLDER for p in workdir.iterdir()):
        raise configs.ConfigError(f"{workdir} is not empty; import-torch writes a new run: give a new --workdir")
    if normalization not in NORMALIZATIONS:
        raise configs.ConfigError(f"unknown normalization {normalization!r}; valid: {NORMALIZATIONS}")
    if (image_mean is None) != (image_std is None) or (image_mean is not None and
                                                       (len(image_mean), len(image_std)) != (3, 3)):
        raise configs.ConfigError("give both image_mean and image_std, three values each (R G B, in [0, 1] units)")
    variables = _read_checkpoint(path, arch=arch, num_classes=num_classes, stem=stem)
    stem = stem or ("cifar" if variables["params"]["conv1"]["kernel"].shape[0] == 3 else "torchvision")
    cfg = configs.load_config(config, overrides) if config else configs.defaults("classification", overrides)
    config_used = config or "the classification defaults (float32, the whole test split)"
    cfg["model"].update(name=arch, stem=stem)
    cfg["data"].update(name=data_name, data_dir=str(Path(data_dir).resolve()) if data_dir else None)
    cfg["about"] = f"imported from {path.absolute()} by resnet-jax import-torch"
    splits = classification.load_splits(cfg)
    train_split = splits.train
    head = variables["params"]["fc"]["kernel"].shape[1]
    if head != train_split.num_classes:
        raise image_data.DataError(f"{path}: the checkpoint's fc has {head} outputs but {data_name} has "
                        f"{train_split.num_classes} classes")
    if image_mean is not None:
        mean, std = np.asarray(image_mean, np.float32), np.asarray(image_std, np.float32)
    elif normalization == "imagenet":
        mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    else:
        mean, std = channel_stats(train_split.images)
    model, state = _state_with(cfg, variables, train_split, mean, std)
    core.prepare_workdir(cfg, workdir, force_new=False)
    mngr = checkpointing.manager(workdir, keep=cfg["train"]["keep_checkpoints"], best_metric="val_accuracy")  # unranked
    checkpointing.save(mngr, 0, state)
    record = {"source": str(path.absolute()), "sha256": _sha256(path), "arch": arch, "stem": stem,
              "num_classes": int(head), "image_mean": mean.tolist(), "image_std": std.tolist(),
              "normalization": "explicit" if image_mean is not None else normalization}
    ledger.declare(workdir, "import-torch", ["import.json"])
    files.write_json(workdir / "import.json", record)
    run = core.Run(cfg, model, state, splits.test, classification.TASK, which="latest")
    score = core.evaluate_run(run, workdir, which="latest", log=lambda line: None)
    log(f"imported {path} ({arch}, {stem} stem, {head} classes) into {workdir} with config {config_used}; "
        f"on {score['n_examples']} test images of {data_name}: test accuracy {score['test_accuracy']:.4f}, "
        f"test loss {score['test_loss']:.4f} (kept in evaluation-latest.json)")
    return workdir


def _read_checkpoint(path: Path, *, arch: str, num_classes, stem) -> dict[str, Any]:
    """convert's reader, with every way a file can fail to be a checkpoint of ``arch`` as a DataError."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    convert.import_torch()  # a missing torch is an install problem, not a bad file
    try:
        return convert.load_torch_checkpoint(path, arch=arch, num_classes=num_classes, stem=stem)
    except ValueError as err:
        why = str(err).removeprefix(f"{path}: ")  # convert names the file too
        raise image_data.DataError(f"{path} is not a {arch} checkpoint: {why}") from err
    except Exception as err:  # noqa: BLE001 - a state_dict of odd tensors can fail in conversion in any way
        raise image_data.DataError(f"{path}: cannot read it as a {arch} checkpoint "
                                   f"({convert.error_line(err)})") from err


def _state_with(cfg, variables, train_split, mean, std):
    """The config's model and a fresh TrainState of it carrying the imported weights and normalisation."""
    model = classification.build_model(cfg, train_split.num_classes)
    steps = max(1, len(train_split) // cfg["train"]["batch_size"])
    state = core.create_train_state(model, core.make_optimizer(cfg, steps), train_split.images.shape[1:],
                                     seed=cfg["train"]["seed"], mean=mean, std=std)
    imported = {k: jax.tree.map(jnp.asarray, variables[k]) for k in ("params", "batch_stats")}
    for k in imported:
        want = jax.tree.structure(getattr(state, k))
        if jax.tree.structure(imported[k]) != want:
            raise ValueError(f"converted {k} do not fit the model built from the config: {want}")
    return model, state.replace(params=imported["params"], batch_stats=imported["batch_stats"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
