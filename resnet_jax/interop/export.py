"""A slim ResNet (units eliminated by ``resnet-jax eliminate``) as a PyTorch model a user can take away.

The torch model is torchvision's ResNet with each eliminated unit replaced by :class:`EliminatedUnit`
(``relu(x + b)``, ``b`` per channel or per position, or ``relu(x)`` for a lesion). Weights go through the same
name map as :mod:`resnet_jax.interop.convert`; ``b`` is the Flax ``branch_bias`` (per-position ones move from
HWC to CHW). :func:`export_run` writes both a ``state_dict`` with its architecture (rebuilt by
:func:`load_exported`) and a TorchScript file that plain ``torch.jit.load`` reads without resnet-jax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from resnet_jax.configs import ConfigError
from resnet_jax.interop import convert


def _module_class():
    torch = convert.import_torch()

    class EliminatedUnit(torch.nn.Module):
        """An eliminated residual unit: ``relu(x + branch_bias)`` (no bias for a lesion)."""

        def __init__(self, form: str, channels: int, hw: Sequence[int] = ()):
            super().__init__()
            self.form = form
            shape = {"channel": (channels, 1, 1), "position": (channels, *hw)}.get(form)
            self.branch_bias = torch.nn.Parameter(torch.zeros(shape)) if shape else None

        def forward(self, x):
            if self.branch_bias is None:
                return torch.relu(x)
            return torch.relu(x + self.branch_bias)

    return EliminatedUnit


EliminatedUnit = None  # built on first use, so importing this module does not need torch


def slim_torch_model(arch: str, *, num_classes: int, stem: str, eliminated: Sequence[Sequence[str]],
                     position_hw: Mapping[str, Sequence[int]] | None = None):
    """torchvision's ``arch`` with the eliminated units replaced (``position_hw``: each per-position unit's map)."""
    global EliminatedUnit
    EliminatedUnit = EliminatedUnit or _module_class()
    net = convert.torchvision_model(arch, num_classes=num_classes, stem=stem)
    for unit, form in eliminated:
        stage, index = unit.split(".")
        old = getattr(net, stage)[int(index)]
        channels = old.conv1.in_channels
        getattr(net, stage)[int(index)] = EliminatedUnit(form, channels, (position_hw or {}).get(unit, ()))
    return net


def torch_state_dict(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Flax variables of a slim ResNet -> the state_dict of :func:`slim_torch_model` (bit for bit)."""
    torch = convert.import_torch()
    out = {}
    for e in convert._entries(variables["params"], variables.get("batch_stats", {})):
        node = variables[e.collection]
        for p in e.path:
            node = node[p]
        value = np.asarray(node)
        if e.path[-1] == "branch_bias":  # HWC -> CHW; per channel -> (C, 1, 1)
            value = value.transpose(2, 0, 1) if value.ndim == 3 else value[:, None, None]
        else:
            value = convert._to_torch_layout(value, e.layout)
        out[e.key] = torch.from_numpy(np.array(value, order="C"))  # a writable copy
        if e.key.endswith(".running_var"):
            out[e.key[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def architecture(config: Mapping[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    """What rebuilds the torch module: arch, classes, stem, the eliminated units and per-position maps."""
    m = config["model"]
    if m["name"] not in convert.TORCHVISION_ARCHS:
        raise ConfigError(f"no torchvision counterpart for model {m['name']!r}; exportable: {convert.TORCHVISION_ARCHS}")
    params = variables["params"]
    hw = {}
    for unit, form in m["eliminated"]:
        if form == "position":
            stage, index = unit.split(".")
            hw[unit] = list(np.shape(params[stage][index]["branch_bias"])[:2])
    return {"arch": m["name"], "num_classes": int(np.shape(params["fc"]["kernel"])[1]), "stem": m["stem"],
            "eliminated": [list(p) for p in m["eliminated"]], "position_hw": hw}


def build(arch: Mapping[str, Any]):
    return slim_torch_model(arch["arch"], num_classes=arch["num_classes"], stem=arch["stem"],
                            eliminated=arch["eliminated"], position_hw=arch["position_hw"])


def export_run(workdir, out, *, checkpoint: str = "best", log=print) -> dict[str, Path]:
    """Write ``<out>/model.pt`` (a dict: ``state_dict``, ``architecture``, input ``normalisation``, ``source`` and
    ``step``; :func:`load_exported` reads it), ``<out>/model.torchscript.pt``
    and ``<out>/architecture.json`` for the run in ``workdir`` (a slim run or a full ResNet run).

    ``runs/r18`` below is a classification run of a torchvision architecture (e.g. ``model.name=resnet18``).

    Example:
        >>> from resnet_jax.interop import export_run
        >>> paths = export_run("runs/r18", "exported")  # doctest: +SKIP
        wrote exported/model.pt and exported/model.torchscript.pt
        >>> sorted(paths)  # doctest: +SKIP
        ['state_dict', 'torchscript']
    """
    from resnet_jax import files
    from resnet_jax.training import runs

    torch = convert.import_torch()
    run = runs.restore(workdir, which=checkpoint, command="export-torch")
    if run.task.name != "classification":
        raise ConfigError(f"export-torch writes torchvision ResNets; {workdir} is a {run.task.name} run "
                         f"(its slim model stays a Flax run)")
    variables = jax.device_get(run.state.variables)
    arch = architecture(run.config, variables)
    net = build(arch)
    net.load_state_dict(torch_state_dict(variables), strict=True)
    net.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    normalisation = {"mean": np.asarray(run.state.image_mean).tolist(), "std": np.asarray(run.state.image_std).tolist(),
                     "input": "NCHW float32, pixel values / 255, then (x - mean) / std"}
    torch.save({"architecture": arch, "state_dict": net.state_dict(), "normalisation": normalisation,
                "source": str(Path(workdir).resolve()), "step": int(run.state.step)}, out / "model.pt")
    image_shape = run.task.arrays(run.test)[0].shape[1:]
    example = torch.zeros((1, image_shape[2], image_shape[0], image_shape[1]))
    traced = torch.jit.trace(net, example)
    traced.save(str(out / "model.torchscript.pt"))
    files.write_json(out / "architecture.json", {**arch, "normalisation": normalisation})
    log(f"wrote {out / 'model.pt'} and {out / 'model.torchscript.pt'}")
    return {"state_dict": out / "model.pt", "torchscript": out / "model.torchscript.pt"}


def load_exported(path):
    """The torch module of :func:`export_run`'s ``model.pt``, in evaluation mode.

    ``exported/model.pt`` below is what ``export_run("runs/r18", "exported")`` wrote for a ResNet18 run on 32x32
    images of 10 classes.

    Example:
        >>> import torch  # doctest: +SKIP
        >>> from resnet_jax.interop import load_exported
        >>> net = load_exported("exported/model.pt")  # doctest: +SKIP
        >>> net(torch.zeros(1, 3, 32, 32)).shape, net.training  # doctest: +SKIP
        (torch.Size([1, 10]), False)
    """
    torch = convert.import_torch()
    saved = torch.load(path, map_location="cpu", weights_only=False)
    net = build(saved["architecture"])
    net.load_state_dict(saved["state_dict"], strict=True)
    return net.eval()
