"""``resnet-jax ablate --model PACKAGE.MODULE:FUNCTION``: the ablation study of a user's own Flax model.

The contract of ``FUNCTION``: called with the ``--model-arg KEY=VALUE`` keywords (values are strings), it returns

* ``(model, variables)`` for a ``flax.linen.Module`` and its variables (``{"params": ..., "batch_stats": ...}``),
* ``(nnx_module, None)`` or the ``flax.nnx.Module`` alone,
* optionally a third element, the keywords of every call of the model (``{"train": False}`` for a model that
  trains by default, as the flax examples' ResNet does).

The model takes a batch-first float array of images normalised as ``(x / 255 - mean) / std`` (``--image-mean``,
``--image-std``; default 0 and 1) and returns logits (or a tuple whose first element is the logits). Loading
trained weights is the function's own business (one line of ``flax.serialization`` or orbax), e.g.::

    def load(checkpoint="params.msgpack"):
        model = ResNet18(num_classes=10)
        template = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
        return model, flax.serialization.from_bytes(template, Path(checkpoint).read_bytes()), {"train": False}

``PACKAGE.MODULE`` is imported with the current directory first on ``sys.path`` (as ``python -m`` does);
``path/to/file.py:FUNCTION`` names a file instead. Every mistake (a module that does not import, a missing
function, one that raises or returns something else, a model that rejects the data) is a
:class:`~resnet_jax.ablation.networks.ModelError` naming the input and what would be valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from resnet_jax import files, ledger, metrics
from resnet_jax.ablation import networks, store
from resnet_jax.ablation.networks import ModelError
from resnet_jax.ablation.subjects import Subject
from resnet_jax.data import images as image_data
from resnet_jax.data import segmentation
from resnet_jax.data.inputs import normalize
from resnet_jax.studies import ablate as ablate_study

METRICS = ("accuracy", "dice")
CONTRACT = ("FUNCTION must return (model, variables) for a flax.linen module, (nnx_module, None) or the "
            "flax.nnx module alone, optionally with a third element: the call's keywords, e.g. {'train': False}")


@dataclasses.dataclass(frozen=True)
class UserModel:
    """What ``--model`` and ``--model-arg`` name: ``reference`` is ``PACKAGE.MODULE:FUNCTION`` or
    ``path/to/file.py:FUNCTION``; ``args`` the function's keywords (strings)."""

    reference: str
    args: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def text(self) -> str:
        return f"{self.reference}({', '.join(f'{k}={v!r}' for k, v in self.args.items())})"


@dataclasses.dataclass(frozen=True)
class UserData:
    """The examples a user's model is scored on: an ImageFolder (or segmentation) folder or a TFDS name, its split,
    the metric, and the normalisation the model expects (one value, or one per channel, in [0, 1] units)."""

    data_dir: str | None = None
    tfds: str | None = None
    split: str = "test"
    metric: str = "accuracy"
    num_classes: int | None = None  # Dice: classes of the masks, background included
    image_size: int = 224  # Dice: slices are centre-cropped or padded to this side
    image_mean: Sequence[float] = (0.0,)
    image_std: Sequence[float] = (1.0,)

    def source(self) -> str:
        return str(Path(self.data_dir).absolute()) if self.data_dir else f"tfds:{self.tfds}"


def parse_model_args(pairs: Sequence[str]) -> dict[str, str]:
    """``["checkpoint=a.msgpack", ...]`` as keywords; a pair without ``=`` is refused."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ModelError(f"--model-arg {pair!r} is not KEY=VALUE with KEY a Python keyword name "
                             f"(e.g. --model-arg checkpoint=params.msgpack)")
        out[key] = value
    return out


def import_function(reference: str):
    """The function ``reference`` names (``PACKAGE.MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``)."""
    where, sep, name = reference.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ModelError(f"--model {reference} is not PACKAGE.MODULE:FUNCTION or path/to/file.py:FUNCTION")
    module = _import_module(where, reference)
    function = getattr(module, name, None)
    if not callable(function):
        offered = sorted(k for k, v in vars(module).items() if callable(v) and getattr(v, "__module__", None)
                         == module.__name__ and not k.startswith("_"))
        raise ModelError(f"--model {reference}: {where} has no function {name!r}; it defines {offered}")
    return function


def _import_module(where: str, reference: str):
    try:
        if where.endswith(".py"):
            path = Path(where).absolute()
            if not path.is_file():
                raise ModelError(f"--model {reference}: no file {where}; give path/to/file.py:FUNCTION or "
                                 f"PACKAGE.MODULE:FUNCTION")
            if str(path.parent) not in sys.path:  # as `python path/to/file.py` does: its neighbours import
                sys.path.insert(0, str(path.parent))
            spec = importlib.util.spec_from_file_location(f"_resnet_jax_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        if os.getcwd() not in sys.path:  # as `python -m` does: the current directory's packages import
            sys.path.insert(0, os.getcwd())
        return importlib.import_module(where)
    except ModuleNotFoundError as err:
        if err.name and (where == err.name or where.startswith(f"{err.name}.")):
            raise ModelError(f"--model {reference}: no module {err.name!r} importable from {os.getcwd()} (run "
                             f"from the folder that holds the package, or give path/to/file.py:FUNCTION)") from None
        raise ModelError(f"--model {reference}: importing {where} failed: {_one_line(err)}") from None
    except ModelError:
        raise
    except Exception as err:  # the user's module raised while importing
        raise ModelError(f"--model {reference}: importing {where} failed: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:300]}"


def load_model(user: UserModel) -> tuple[networks.Network, dict[str, Any]]:
    """The user's model as a network (call keywords included) and its plain variables."""
    function = import_function(user.reference)
    try:
        returned = function(**user.args)
    except Exception as err:
        raise ModelError(f"--model {user.text()} raised {_one_line(err)}") from None
    parts = tuple(returned) if isinstance(returned, (tuple, list)) else (returned, None)
    if len(parts) not in (2, 3) or (len(parts) == 3 and not isinstance(parts[2], Mapping)):
        raise ModelError(f"--model {user.reference} returned {_describe(returned)}; {CONTRACT}")
    model, variables, kwargs = (*parts, None)[:3]
    try:
        network, variables = networks.as_network(model, variables, apply_kwargs=kwargs)
    except ModelError as err:
        raise ModelError(f"--model {user.reference} returned {_describe(returned)}: {err}; {CONTRACT}") from None
    return network, jax.device_get(variables)


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {len(value)}-{type(value).__name__} of ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"


def load_data(data: UserData, n_examples: int | None):
    """``(split, images, targets, metric, about)``: a fixed random subset of ``n_examples`` of the split (all of it
    by default), scored by accuracy (class folders) or Dice (image and mask folders); ``about`` describes the
    whole split read (source, size, classes, content digest)."""
    if data.metric not in METRICS:
        raise ModelError(f"unknown --metric {data.metric!r}; valid: {', '.join(METRICS)}")
    if (data.data_dir is None) == (data.tfds is None):
        raise ModelError("--model needs its examples: give --data-dir DIR (an ImageFolder tree, or image and mask "
                         "folders with --metric dice) or --data TFDS_NAME")
    if data.metric == "dice":
        if data.num_classes is None:
            raise ModelError("--metric dice needs --num-classes N (the masks' classes, background included)")
        names = (("background", "LV", "MYO", "RV") if data.num_classes == 4
                 else ("background", *(f"class{i}" for i in range(1, data.num_classes))))
        split = (segmentation.load_segmentation_split(data.data_dir, data.split, image_size=data.image_size,
                                                      class_names=names) if data.data_dir else
                 segmentation.load_tfds_segmentation(data.tfds, data.split, image_size=data.image_size))
        about, split = _describe_split(split, split.masks, data), split.take(n_examples, seed=0)
        return split, split.images, split.masks, metrics.Dice(num_classes=data.num_classes,
                                                              class_names=tuple(split.class_names)), about
    split = (image_data.load_imagefolder(data.data_dir, data.split) if data.data_dir
             else image_data.load_tfds(data.tfds, data.split))
    about, split = _describe_split(split, split.labels, data), split.take(n_examples, seed=0)
    return split, split.images, split.labels, metrics.Accuracy(), about


def _describe_split(split, targets: np.ndarray, data: UserData) -> dict[str, Any]:
    digest = hashlib.sha256(np.ascontiguousarray(split.images).tobytes())
    digest.update(np.ascontiguousarray(targets).tobytes())
    return {"source": data.source(), "split": data.split, "n": len(split), "class_names": list(split.class_names),
            "image_shape": list(split.images.shape[1:]), "sha256": digest.hexdigest()}


def check_scores(network: networks.Network, variables, images: np.ndarray, targets: np.ndarray, data: UserData,
                 reference: str) -> None:
    """Run the model's shapes on the first image before any mask: a model that rejects the data, trains on its
    call or returns logits that do not fit the targets is refused in one line."""
    x = normalize(images[:1], np.asarray(data.image_mean, np.float32), np.asarray(data.image_std, np.float32))
    try:
        logits = jax.eval_shape(lambda v, x: network.apply(v, x), variables, x)
    except Exception as err:
        if networks.is_train_mode_error(err):
            raise ModelError(f"--model {reference}: {networks.train_mode_message(network)}: FUNCTION returns "
                             f"them as its third element, (model, variables, {{'train': False}})") from None
        raise ModelError(f"--model {reference} rejects the data's images ({images.shape[1:]} {images.dtype} from "
                         f"{data.source()}, given as a float32 batch {x.shape}): {_one_line(err)}") from None
    classes = int(np.max(targets)) + 1
    want = (1, classes) if data.metric == "accuracy" else (1, *targets.shape[1:], data.num_classes)
    shape = tuple(getattr(logits, "shape", ()))
    if len(shape) != len(want) or shape[:-1] != want[:-1] or shape[-1] < want[-1]:
        raise ModelError(f"--model {reference} returns {shape or type(logits).__name__} on a batch {x.shape}; "
                         f"--metric {data.metric} on {data.source()} needs logits of shape {want[:-1] + ('C',)} "
                         f"with C >= {want[-1]}")


def user_subject(user: UserModel, data: UserData, *, n_examples: int | None = None) -> Subject:
    """The user's model on ``data`` as a :class:`Subject`, with its ``origin`` (what keys its stored results)."""
    network, variables = load_model(user)
    split, images, targets, metric, about = load_data(data, n_examples)
    channels = images.shape[-1]
    mean, std = (np.asarray(v, np.float32) for v in (data.image_mean, data.image_std))
    for flag, value in (("--image-mean", mean), ("--image-std", std)):
        if len(value) not in (1, channels):
            raise ModelError(f"{flag} has {len(value)} values; the images have {channels} channel(s): give one value "
                             f"or {channels}")
    check_scores(network, variables, images, targets, data, user.reference)
    origin = {"model": user.reference, "model_args": dict(user.args), "framework": network.framework,
              "apply_kwargs": {k: repr(v) for k, v in network.apply_kwargs}, "image_mean": mean.tolist(),
              "image_std": std.tolist(), "dataset": about}
    return Subject(model=network, variables=variables, step=0, task="classification" if data.metric == "accuracy"
                   else "segmentation", test=split, images=images, targets=targets, metric=metric, image_mean=mean,
                   image_std=std, choice=f"the model {user.text()}", origin=origin)


def ablate_model(workdir, request: ablate_study.Request, user: UserModel, data: UserData, *,
                 log=print) -> list[Path]:
    """``ablate`` on a user's model: the same tables, decisions, store and figures as a trained run's, in
    ``<workdir>/ablation/``, with ``model.json`` and ``dataset.json`` (what was scored) beside them."""
    workdir, rule = Path(workdir), request.check()
    if request.batchnorm == "batch":
        raise ModelError("--batchnorm batch is for models that take batch_stats=True (resnet_jax's own); a user's "
                         "model is scored in the mode its call keywords select: leave --batchnorm out")
    if (workdir / "config.json").is_file():
        raise ModelError(f"--workdir {workdir} holds a run trained here (config.json), whose tables --model would "
                         f"replace; give your model a folder of its own")
    subject = user_subject(user, data, n_examples=request.n_examples)
    ledger.start(workdir, "ablate", ["ablation", "model.json", "dataset.json"])
    files.write_json(workdir / "model.json", {**subject.origin, "parameters_sha": store.tree_hash(subject.variables)})
    files.write_json(workdir / "dataset.json", {data.split: subject.origin["dataset"]})
    began = time.perf_counter()
    written = ablate_study.ablate_subject(workdir, request, subject, rule=rule, log=log)
    ledger.finish(workdir, "ablate", {"model": user.text(), "tables": len(written)},
                  seconds=time.perf_counter() - began)
    return written
