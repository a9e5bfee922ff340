"""PyTorch rows of the benchmarks on whatever the machine has: CUDA when present, else the CPU.

Every row runs channels_last. On CUDA the benchmarks add a bf16-autocast row and a ``torch.compile`` row
(the configurations a PyTorch user would compare with); on a CPU only the fp32 eager row runs unless asked
(``torch.compile`` on a CPU spends minutes compiling). Timings synchronise the device before reading the clock.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from typing import Any


def device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def describe(dev) -> str:
    """The device's name for a benchmark's JSON (``NVIDIA H200``; the processor on a CPU)."""
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def variants(dev, *, compile_on_cpu: bool = False) -> list[dict[str, Any]]:
    """The rows to run on ``dev``: name, autocast dtype (None: fp32) and whether to ``torch.compile``."""
    import torch

    rows = [{"name": "fp32", "autocast": None, "compile": False}]
    if dev.type == "cuda":
        rows.append({"name": "bf16 autocast", "autocast": torch.bfloat16, "compile": False})
    if dev.type == "cuda" or compile_on_cpu:
        rows.append({"name": "fp32 torch.compile", "autocast": None, "compile": True})
    return rows


def prepare(net, dev, variant: dict[str, Any]) -> tuple[Any, Callable[[], contextlib.AbstractContextManager]]:
    """``net`` on ``dev`` in channels_last (compiled if the variant says so) and the autocast context to run it in."""
    import torch

    net = net.to(dev, memory_format=torch.channels_last)
    if variant["compile"]:
        net = torch.compile(net)
    if variant["autocast"] is None:
        return net, contextlib.nullcontext
    return net, lambda: torch.autocast(dev.type, dtype=variant["autocast"])
