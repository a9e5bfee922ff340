"""One interface to image datasets: uint8 NHWC arrays and int32 labels, from anywhere.

Sources, all through :func:`load_split`:
  * a local ImageFolder tree ``<split>/<class>/<file>``, extracted or as the per-split zip
    ``<data_dir>/<split>.zip`` (the layout of ``shared/data/cifar10`` and ``shared/data/mnist``);
  * TFDS datasets by name (``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``) when they can be
    downloaded, with an error that names the ``--data-dir`` alternative when they cannot;
  * ``synthetic``: deterministic, learnable images for tests.

Decoding is Pillow's; decoded arrays are cached on disk under a key made of the source's bytes,
so a second load of the same files is a single ``np.load``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from resnet_jax import files

TFDS_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_CACHE_VERSION = "1"


class DataError(ValueError):
    """Bad or missing input data; the message says what was wrong and what would be valid.

    Example:
        >>> from resnet_jax.data import DataError, load_split
        >>> try:
        ...     load_split("imagenet", "test")          # neither a TFDS name we read nor a folder
        ... except DataError as err:
        ...     print(err)
        unknown dataset 'imagenet'; valid TFDS names: ['cifar10', 'cifar100', 'mnist', 'fashion_mnist'], or ...
    """


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a labelled image dataset, held in memory.

    Example:
        >>> from resnet_jax.data import load_split
        >>> split = load_split("synthetic", "test")
        >>> len(split), split.images.dtype, split.labels.dtype, split.num_classes
        (256, dtype('uint8'), dtype('int32'), 10)
        >>> small = split.take(32, seed=0)      # a fixed random subset: the same for the same seed
        >>> small.images.shape, small.class_names[:2]
        ((32, 32, 32, 3), ('class0', 'class1'))
    """

    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int32
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def select(self, idx: np.ndarray) -> Split:
        return Split(self.images[idx], self.labels[idx], self.class_names)

    def take(self, n: int | None, *, seed: int = 0) -> Split:
        """A fixed random subset of ``n`` examples (the same for a given seed); all if ``n`` is None."""
        idx = subset(len(self), n, seed=seed)
        return self if idx is None else self.select(idx)


def subset(size: int, n: int | None, *, seed: int) -> np.ndarray | None:
    """Sorted indices of a fixed random subset of ``n`` of ``size`` examples; None for all of them."""
    if n is None or n >= size:
        return None
    if n <= 0:
        raise DataError(f"max examples must be positive, got {n}")
    return np.sort(np.random.default_rng(seed).permutation(size)[:n])


def stratified_holdout(labels: np.ndarray, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(kept, held_out)`` indices: ``n`` examples held out with each class's share of the labels
    (largest remainders settle the rounding), chosen at random by ``seed``."""
    labels = np.asarray(labels)
    if not 0 < n < len(labels):
        raise DataError(f"data.val_examples={n} must be between 1 and {len(labels) - 1} (the training split "
                        f"has {len(labels)} examples), or 0 for no validation split")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    remainder_order = np.lexsort((classes, -(quota - take)))  # ties broken by class, so the split is exact
    take[remainder_order[:n - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    held = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)])
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def default_cache_dir() -> Path:
    """Where decoded datasets are kept: ``$RESNET_JAX_CACHE/datasets``, else ``~/.cache/resnet-jax/datasets`` (under
    ``$XDG_CACHE_HOME`` when set), beside the compiled programs (:func:`resnet_jax.devices.compilation_cache_dir`)."""
    return Path(os.environ.get("RESNET_JAX_CACHE", files.user_cache_dir())) / "datasets"


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    max_examples: int | None = None,
) -> Split:
    """Load a split by dataset name, from ``data_dir`` when given, else from TFDS.

    Args:
      name: ``synthetic`` or a dataset name (``cifar10``...). With ``data_dir`` the name only labels it.
      split: ``train`` or ``test`` (any folder / zip name under ``data_dir``).
      data_dir: an ImageFolder tree, extracted (``<data_dir>/<split>/<class>/*``) or zipped
        (``<data_dir>/<split>.zip``).
      cache_dir: where decoded arrays are kept (default ``~/.cache/resnet-jax/datasets``, beside the compiled programs).
      max_examples: keep a fixed random subset of this size.

    Example:
        >>> from resnet_jax.data import load_split
        >>> split = load_split("synthetic", "train", max_examples=64)   # generated: no download, no folder
        >>> split.images.shape, split.num_classes
        ((64, 32, 32, 3), 10)
        >>> test = load_split("cifar10", "test", data_dir="../shared/data/cifar10")  # doctest: +SKIP
        >>> test.images.shape, test.class_names[:3]  # doctest: +SKIP
        ((10000, 32, 32, 3), ('airplane', 'automobile', 'bird'))
    """
    if name == "synthetic":
        data = synthetic_split(split, seed=seed)
    elif data_dir is not None:
        data = load_imagefolder(data_dir, split, cache_dir=cache_dir)
        check_known(name, data, where=f"{data_dir} ({split})")
    else:
        data = load_tfds(name, split)
    return data.take(max_examples, seed=seed)


KNOWN_DATASETS: dict[str, dict] = {
    "cifar10": {"classes": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
                "shape": (32, 32, 3)},
    "cifar100": {"n_classes": 100, "shape": (32, 32, 3)},
    "mnist": {"classes": tuple("0123456789"), "shape": (28, 28, 1)},
    "fashion_mnist": {"n_classes": 10, "shape": (28, 28, 1)},
}
"""What local data must look like to be read under a known dataset's name (TFDS's classes and image shape)."""


def check_known(name: str, data: Split, *, where: str) -> None:
    """Local data read under a known dataset's name must be that dataset: its class names (or count), channels and
    image size; a mismatch names both, and how to read other data on purpose."""
    known = KNOWN_DATASETS.get(name)
    if known is None:
        return
    found = f"{data.num_classes} classes {list(data.class_names)[:12]}, images {tuple(data.images.shape[1:])}"
    expected = known.get("classes")
    wrong_classes = (data.class_names != expected) if expected else data.num_classes != known["n_classes"]
    if wrong_classes or tuple(data.images.shape[1:]) != known["shape"]:
        want = f"{len(expected)} classes {list(expected)}" if expected else f"{known['n_classes']} classes"
        raise DataError(f"{where} holds {found}, not {name!r} ({want}, images {known['shape']}); point --data-dir at "
                        f"{name} data, or, to train on this data on purpose, name it: --set data.name=<your name> "
                        f"(any name but {sorted(KNOWN_DATASETS)})")


def load_train_test(name: str, *, data_dir=None, cache_dir=None, seed: int = 0,
                    max_train_examples: int | None = None, max_test_examples: int | None = None):
    """Both splits, checked to share their classes.

    Example:
        >>> from resnet_jax.data import load_train_test
        >>> train, test = load_train_test("synthetic", max_train_examples=128)
        >>> len(train), len(test), train.class_names == test.class_names
        (128, 256, True)
    """
    train = load_split(name, "train", data_dir=data_dir, cache_dir=cache_dir, seed=seed,
                       max_examples=max_train_examples)
    test = load_split(name, "test", data_dir=data_dir, cache_dir=cache_dir, seed=seed,
                      max_examples=max_test_examples)
    if train.class_names != test.class_names:
        only_train = sorted(set(train.class_names) - set(test.class_names))
        only_test = sorted(set(test.class_names) - set(train.class_names))
        raise DataError(
            f"class folders differ between splits of {data_dir or name}: only in train {only_train}, "
            f"only in test {only_test}"
        )
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"image shapes differ between splits: train {train.images.shape[1:]}, "
                        f"test {test.images.shape[1:]}")
    return train, test


# ImageFolder ---------------------------------------------------------------------------------

def _folder_source(data_dir: Path, split: str):
    """Return ``(kind, path)`` for a split: an extracted folder or a per-split zip."""
    if not data_dir.exists():
        raise DataError(f"data directory {data_dir} does not exist; pass --data-dir pointing to an "
                        f"ImageFolder tree (<split>/<class>/<image>) or its per-split zips (<split>.zip)")
    folder, archive = data_dir / split, data_dir / f"{split}.zip"
    if folder.is_dir():
        return "dir", folder
    if archive.is_file():
        return "zip", archive
    found = sorted(p.name for p in data_dir.iterdir())
    raise DataError(f"no split {split!r} in {data_dir}: expected the folder {folder} or the zip {archive}; "
                    f"found {found or 'an empty directory'}")


def _members(kind: str, path: Path, split: str) -> list[tuple[str, str]]:
    """``(member, class_name)`` for every image file of the split, sorted."""
    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        prefix = f"{split}/"
        names = [n for n in names if n.startswith(prefix)] or names
        rel = [(n, n[len(prefix):] if n.startswith(prefix) else n) for n in names]
    else:
        rel = [(str(p), str(p.relative_to(path))) for p in path.rglob("*") if p.is_file()]
    out = []
    for member, r in rel:
        parts = Path(r).parts
        if len(parts) == 2 and Path(r).suffix.lower() in IMAGE_SUFFIXES:
            out.append((member, parts[0]))
    return sorted(out)


_ZIP_KEYS: dict[tuple, str] = {}
"""Content keys of zips this process has read, by path, size and modification time: a job restores its runs
many times, and hashing a 50 MB archive each time costs more than reading its decoded cache."""


def _content_key(kind: str, path: Path, split: str) -> str:
    if kind == "zip":
        stat = path.stat()
        seen = (str(path.resolve()), split, stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if seen not in _ZIP_KEYS:
            _ZIP_KEYS[seen] = _hash_files(kind, path, split)
        return _ZIP_KEYS[seen]
    return _hash_files(kind, path, split)


def _hash_files(kind: str, path: Path, split: str) -> str:
    digest = hashlib.sha256(f"{_CACHE_VERSION}|{split}|".encode())
    files = [path] if kind == "zip" else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path) if kind == "dir" else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:32]


def _read_bytes(kind: str, path: Path) -> Iterator[tuple[str, bytes]]:
    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                yield info.filename, zf.read(info)
    else:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                yield str(f), f.read_bytes()


def decode_image(data: bytes, *, where: str) -> np.ndarray:
    """Decode an image to ``(H, W, C)`` uint8, keeping grey images single-channel."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot decode image {where}: {err}") from err
    return arr[..., None] if arr.ndim == 2 else arr


@contextlib.contextmanager
def readable_zip(path: Path):
    """Turn a truncated or corrupt zip into a :class:`DataError` that names the file."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DataError(f"{path} is not a readable zip archive ({type(err).__name__}: {err}); download or copy it "
                        f"again (shared/data has a MANIFEST.sha256 to check it against)") from None


def load_imagefolder(data_dir, split: str, *, cache_dir=None) -> Split:
    """Read an ImageFolder split (folder or zip); class order is the sorted folder names.

    Example:
        >>> import numpy as np, pathlib, tempfile
        >>> from PIL import Image
        >>> from resnet_jax.data import load_imagefolder
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name, value in [("dog", 200), ("cat", 50)]:
        ...     (root / "train" / name).mkdir(parents=True)
        ...     Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(root / "train" / name / "0.png")
        >>> split = load_imagefolder(root, "train", cache_dir=root / "cache")
        >>> split.class_names, split.labels.tolist(), split.images.shape
        (('cat', 'dog'), [0, 1], (2, 4, 4, 3))
    """
    data_dir = Path(data_dir).expanduser()
    kind, path = _folder_source(data_dir, split)
    cache = Path(cache_dir or default_cache_dir()) / f"imagefolder-{_content_key(kind, path, split)}.npz"
    if cache in _DECODED:
        return _DECODED[cache]
    if cache.is_file():  # decoded before from these very bytes (only a split with images is ever stored)
        with np.load(cache) as z:
            return _remember(cache, Split(z["images"], z["labels"], tuple(json.loads(str(z["class_names"])))))
    with readable_zip(path):
        members = _members(kind, path, split)
    if not members:
        raise DataError(f"no images under {path} (expected {split}/<class>/<image> with one of {IMAGE_SUFFIXES})")
    with readable_zip(path):
        split_data = _decode_members(kind, path, members)
    files.savez(cache, images=split_data.images, labels=split_data.labels,
                class_names=json.dumps(list(split_data.class_names)))
    return _remember(cache, split_data)


_DECODED: dict[Path, Split] = {}
"""Splits this process has read, by their cache file (named by the source's bytes, so an entry never goes stale):
the stages of one ``reproduce``, or the commands of one session, read a dataset once, not once per run."""
_DECODED_MAX = 4


def _remember(cache: Path, split: Split) -> Split:
    """Keep ``split`` (read-only, so no caller can change what the next one reads) among the latest few."""
    for array in (split.images, split.labels):
        array.flags.writeable = False
    _DECODED.pop(cache, None)
    _DECODED[cache] = split
    while len(_DECODED) > _DECODED_MAX:
        _DECODED.pop(next(iter(_DECODED)))
    return split


def _decode_members(kind: str, path: Path, members: list[tuple[str, str]]) -> Split:
    from tqdm import tqdm

    class_names = tuple(sorted({c for _, c in members}))
    class_of = dict(members)
    index = {c: i for i, c in enumerate(class_names)}
    images, labels = [], []
    blobs = ((m, b) for m, b in _read_bytes(kind, path) if m in class_of)
    for member, blob in tqdm(blobs, total=len(members), desc=f"decode {path.name}", unit="img",
                             disable=None, leave=False):
        where = f"{member!r} in archive {path}" if kind == "zip" else member
        arr = decode_image(blob, where=where)
        if images and arr.shape != images[0].shape:
            raise DataError(f"image {where} has shape {arr.shape}, but earlier images have {images[0].shape}; "
                            f"all images of a classification split must share one size")
        images.append(arr)
        labels.append(index[class_of[member]])
    return Split(np.stack(images), np.asarray(labels, np.int32), class_names)


# TFDS ----------------------------------------------------------------------------------------

def load_tfds(name: str, split: str) -> Split:
    """Download (if needed) and read a TFDS dataset as numpy; offline, fail with the alternative."""
    if name not in TFDS_NAMES:
        raise DataError(f"unknown dataset {name!r}; valid TFDS names: {list(TFDS_NAMES)}, or 'synthetic', "
                        f"or any name together with --data-dir")
    records, builder = tfds_records(
        name, split, offline=f"pass --data-dir DIR with an ImageFolder tree (DIR/{split}/<class>/<image>) or its "
                             f"per-split zips (DIR/{split}.zip), e.g. --data-dir ../shared/data/{name}")
    class_names = tuple(builder.info.features["label"].names)
    images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
    labels = np.asarray([r["label"] for r in records], np.int32)
    return Split(images, labels, class_names)


def tfds_records(name: str, split: str, *, offline: str) -> tuple[list[dict], Any]:
    """Every record of a TFDS split (downloading it first if needed) and the builder; any failure becomes
    a :class:`DataError` that says what to do ``offline``."""
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder(name)
        if not _prepared(builder) and not network_reachable():
            raise DataError(f"TFDS dataset {name!r} is not prepared on this machine and its download host "
                            f"({TFDS_HOST}) cannot be reached; {offline}")
        builder.download_and_prepare(file_format="array_record")
        source = builder.as_data_source(split=split)
        return [source[i] for i in range(len(source))], builder
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any TFDS failure means: use local files instead
        raise DataError(f"could not load TFDS dataset {name!r} split {split!r} ({type(err).__name__}: {err}). "
                        f"Without network access, {offline}") from err


TFDS_HOST = "storage.googleapis.com"


def _prepared(builder) -> bool:
    """Whether reading ``builder`` needs no download: prepared on disk, or TFDS's test mock stands in for it."""
    prepare = type(builder).download_and_prepare
    if "testing" in getattr(prepare, "__module__", ""):  # tfds.testing.mock_data: nothing is downloaded
        return True
    try:
        return bool(builder.is_prepared())
    except Exception:  # noqa: BLE001 - an older TFDS without is_prepared: let it try
        return True


def network_reachable(host: str = TFDS_HOST, *, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds, name lookup included (in a
    thread, since a lookup with no DNS can hang far longer than any socket timeout)."""
    import socket
    import threading

    ok = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


# Synthetic -----------------------------------------------------------------------------------

def synthetic_split(split: str, *, seed: int = 0, n: int | None = None, num_classes: int = 10,
                    size: int = 32, channels: int = 3) -> Split:
    """Learnable images: class c brightens a class-specific stripe over noise. Deterministic."""
    n = n if n is not None else (512 if split == "train" else 256)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = rng.integers(0, 96, (n, size, size, channels)).astype(np.int32)
    band = size // num_classes or 1
    for c in range(num_classes):
        rows = slice((c * band) % size, (c * band) % size + band)
        images[labels == c, rows, :, :] += 140
    return Split(images.clip(0, 255).astype(np.uint8), labels, tuple(f"class{c}" for c in range(num_classes)))
