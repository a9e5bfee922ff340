"""Finished ablation results, keyed by what produced them, so a stale row can never be reused.

Each row of ``<workdir>/ablation/results.jsonl`` carries two keys:
  * ``key``: the ablation's content: its kind, the resolved layers it silences (not the mask's
    name) and, for random kinds, its seed;
  * ``context``: the evaluation's identity: a hash of the checkpoint's parameters and statistics,
    of the evaluated images and targets, and of the metric's configuration.
A row is reused only when both match; anything else is recomputed. Rows are appended and fsynced as
each chunk finishes, so an interrupted sweep keeps every finished result.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from resnet_jax import files
from resnet_jax.ablation import catalogue as abl

FORMAT = 2
"""Bumped when rows start to carry something older rows lack (2: Dice counts per image), so old rows rerun."""
RANDOM_KINDS = ("rerandomize",)
"""Kinds whose result depends on the spec's seed."""


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def ablation_key(ablation: abl.Ablation) -> str:
    """What determines an ablation's result on a fixed model and data: kind, layers, seed (random kinds)."""
    content = {"kind": ablation.kind, "layers": list(ablation.layers)}
    if ablation.kind in RANDOM_KINDS:
        content["seed"] = ablation.seed
    return _sha(json.dumps(content, sort_keys=True).encode())


def tree_hash(tree: Any) -> str:
    """A hash of every leaf's dtype, shape and bytes, in tree order (a checkpoint's identity)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return _sha(*(f"{x.dtype}{x.shape}".encode() + x.tobytes() for x in leaves))


def context(variables: Mapping[str, Any], images: np.ndarray, targets: np.ndarray, metric: Any, *,
            evaluation: Mapping[str, Any] | None = None, origin: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The identity of an evaluation: checkpoint, examples, metric, and any evaluation setting that changes results
    (``evaluation``, e.g. BatchNorm on batch statistics and the batch size); ``origin``, what produced a user's
    model (its reference, arguments, call keywords, normalisation, data source). Stored with every row and table."""
    metric_config = dataclasses.asdict(metric) if dataclasses.is_dataclass(metric) else {"name": metric.name}
    info = {
        "checkpoint_sha": tree_hash(variables),
        "examples_sha": _sha(np.ascontiguousarray(images).tobytes(), np.ascontiguousarray(targets).tobytes()),
        "n_examples": int(len(images)),
        "metric": {"class": type(metric).__name__, **metric_config},
        "format": FORMAT,
    }
    if evaluation:
        info["evaluation"] = dict(evaluation)
    if origin:
        info["origin"] = dict(origin)
    info["id"] = _sha(json.dumps(info, sort_keys=True, default=str).encode())
    return info


def _encode(array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array)
    shape = list(array.shape)
    if array.dtype == bool:
        return {"dtype": "bool", "n": int(array.size), "shape": shape,
                "b64": base64.b64encode(np.packbits(array.ravel())).decode()}
    return {"dtype": "float32", "n": int(array.size), "shape": shape,
            "b64": base64.b64encode(array.astype(np.float32).tobytes()).decode()}


def decode(encoded: Mapping[str, Any]) -> np.ndarray:
    """The array :func:`_encode` stored (per-example values of a finished mask, for paired statistics)."""
    raw = base64.b64decode(encoded["b64"])
    n, shape = encoded["n"], encoded.get("shape", [encoded["n"]])
    if encoded["dtype"] == "bool":
        return np.unpackbits(np.frombuffer(raw, np.uint8))[:n].astype(bool).reshape(shape)
    return np.frombuffer(raw, np.float32).reshape(shape)


def per_example(row: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: decode(v) for k, v in row.get("per_example", {}).items()}


class ResultStore:
    """Append-only JSONL of finished ablations, looked up by ``(context id, ablation key)``.

    ``context`` is the evaluation's identity (``{"id": ...}`` at least; sweeps build it from the checkpoint, the
    examples and the metric); :func:`run_protocol` appends to the store and reads from it.

    Example:
        >>> import numpy as np, tempfile
        >>> from resnet_jax.ablation import Ablation, Result, ResultStore
        >>> store = ResultStore(tempfile.mkdtemp(), {"id": "run-a"})
        >>> conv = Ablation("conv1", "zero-kernel", ("conv1",))
        >>> scored = Result("conv1", "zero-kernel", ("conv1",), value=0.5, ci_low=0.2, ci_high=0.8, loss=0.7,
        ...                 n_examples=4, per_example={"correct": np.array([True, False, True, False])}, seconds=0.1)
        >>> store.append("single", [scored], {("conv1", "zero-kernel", ("conv1",)): conv}, metric="accuracy")
        >>> [(row["mask"], row["value"]) for row in store.load().values()]
        [('conv1', 0.5)]
        >>> ResultStore(store.path.parent, {"id": "run-b"}).load()  # another checkpoint or data: nothing reused
        {}
    """

    KEEP = ("correct", "loss", "score", "intersection", "pred_sum", "true_sum")  # what paired statistics need

    def __init__(self, directory: Path, context: Mapping[str, Any]):
        self.path = Path(directory) / "results.jsonl"
        self.context = dict(context)
        self.memory: dict[str, dict] = {}  # a multi-process job's other processes keep their rows here
        if files.WRITER:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, dict]:
        """Rows of this context by ablation key. Lines that do not parse (a crash or a full disk can cut the last
        one) are moved aside to ``results.jsonl.torn-N`` with a warning, never dropped, and their masks rerun."""
        done = dict(self.memory)
        if not self.path.is_file():
            return done
        good, torn = [], []
        for number, line in enumerate(self.path.read_text().splitlines(keepends=True), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                torn.append((number, line))
                continue
            good.append(line if line.endswith("\n") else line + "\n")
            if row.get("context") == self.context["id"] and "key" in row:
                done[row["key"]] = row
        if torn and files.WRITER:  # the others read only: a line process 0 is writing is not theirs to move
            self._set_aside(good, torn)
        return done

    def _set_aside(self, good: list[str], torn: list[tuple[int, str]]) -> None:
        aside = next(self.path.with_name(f"{self.path.name}.torn-{i}") for i in range(1, 10**6)
                     if not self.path.with_name(f"{self.path.name}.torn-{i}").exists())
        aside.write_text("".join(line for _, line in torn))
        files.write_text(self.path, "".join(good))
        lines = ", ".join(str(n) for n, _ in torn)
        warnings.warn(f"{self.path}: line(s) {lines} did not parse (an interrupted write?); moved to {aside} and "
                      f"the store repaired; those masks are evaluated again", RuntimeWarning, stacklevel=3)

    @contextlib.contextmanager
    def lock(self, log=print):
        """Hold the store for one process: a second ``ablate`` on the same run waits here, then reads what the
        first one stored instead of computing it again."""
        if not files.WRITER:  # process 0 holds the lock for the job
            yield self
            return
        with open(self.path.with_name(f"{self.path.name}.lock"), "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"{self.path} is in use by another process on this run; waiting for it to finish")
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def append(self, protocol: str, results: Sequence[Any], ablations: Mapping[tuple, abl.Ablation], *,
               metric: str) -> None:
        """Append engine results; ``ablations`` maps ``(name, kind, layers)`` to the ablation scored."""
        rows = [self._row(protocol, r, ablations[(r.name, r.kind, r.layers)], metric) for r in results]
        if not files.WRITER:
            self.memory.update((row["key"], row) for row in rows)
            return
        with self.path.open("a+b") as fh:  # a line cut without its newline must not swallow the next row
            fh.seek(0, os.SEEK_END)
            if fh.tell() and (fh.seek(-1, os.SEEK_END), fh.read(1))[1] != b"\n":
                fh.write(b"\n")
        with self.path.open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _row(self, protocol: str, r: Any, ablation: abl.Ablation, metric: str) -> dict:
        return {
            "key": ablation_key(ablation), "context": self.context["id"],
            "protocol": protocol, "kind": r.kind, "mask": r.name, "layers": list(r.layers),
            "seed": ablation.seed, "metric": metric, "value": r.value, "ci_low": r.ci_low,
            "ci_high": r.ci_high, "loss": r.loss, "n_examples": r.n_examples, "seconds": r.seconds,
            "breakdown": r.breakdown,
            "per_example": {k: _encode(v) for k, v in r.per_example.items() if k in self.KEEP},
        }
