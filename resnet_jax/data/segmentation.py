"""2D segmentation data: ACDC and Sunnybrook grey PNG pairs read in place and cached; TFDS
``oxford_iiit_pet`` (RGB) for users with network access.

Layouts read by :func:`load_segmentation_split` (the ones of ``shared/data/acdc_lv_myo`` and
``shared/data/sunnybrook_lv_myo``):
  * a per-split zip ``<data_dir>/<split>.zip`` with members ``<split>/images/<id>.png`` and
    ``<split>/masks/<id>.png``;
  * the same extracted: ``<data_dir>/<split>/images/<id>.png`` and ``<data_dir>/<split>/masks/<id>.png``;
  * a flat ``<data_dir>/images`` + ``<data_dir>/masks`` with no splits, where a split is the ids
    that start with one of ``id_prefixes`` (e.g. Sunnybrook's patient folders).

Preprocessing, per image and in this order:
  1. decode without changing values: 8-bit PNGs give uint8, 16-bit PNGs uint16 (never ``convert('L')``);
  2. intensity normalisation on the whole original image: clip to its ``percentiles`` (default 0.5
     and 99.5) and scale that range to [0, 1], as float32; robust to the few very bright pixels of
     bSSFP images and independent of the PNG's bit depth and of the volume's intensity range;
  3. centre crop or zero pad (after normalisation, so padding is the darkest value) to ``image_size``;
     masks are cropped/padded the same way, padding with background (0).

The result is cached as ``.npz`` under a key made of the source bytes and these parameters, so a
second load of the same files with the same settings is a single ``np.load``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from resnet_jax import files
from resnet_jax.data.images import DataError, default_cache_dir, readable_zip, subset, tfds_records

_CACHE_VERSION = "1"
_PARTS = ("images", "masks")


def patient_of(slice_id: str) -> str:
    """The patient a slice belongs to: the id's first ``_``- or ``/``-separated part (``patient012_...``), the unit
    a test set of slices is resampled by."""
    return slice_id.replace("/", "_").split("_", 1)[0]


@dataclasses.dataclass(frozen=True)
class SegSplit:
    """One split of a segmentation dataset, held in memory.

    Example:
        >>> import numpy as np
        >>> from resnet_jax.data import SegSplit
        >>> split = SegSplit(np.zeros((4, 8, 8, 1), np.float32), np.zeros((4, 8, 8), np.uint8),
        ...                  ids=("p01_0", "p01_1", "p02_0", "p02_1"), class_names=("background", "LV"))
        >>> len(split), split.num_classes, split.labels.shape      # masks are the targets
        (4, 2, (4, 8, 8))
        >>> split.take(2, seed=0).ids
        ('p01_0', 'p02_0')
    """

    images: np.ndarray  # (N, H, W, C) float32 in [0, 1]; C = 1 for MRI, 3 for photos
    masks: np.ndarray  # (N, H, W) uint8 class ids
    ids: tuple[str, ...]
    class_names: tuple[str, ...]  # background first

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> np.ndarray:
        """The masks, under the name the classification code uses for targets."""
        return self.masks

    def take(self, n: int | None, *, seed: int = 0) -> SegSplit:
        """A fixed random subset of ``n`` examples (the same for a given seed); all if ``n`` is None."""
        idx = subset(len(self), n, seed=seed)
        if idx is None:
            return self
        return SegSplit(self.images[idx], self.masks[idx], tuple(self.ids[i] for i in idx), self.class_names)

    def keep_classes(self, names: Sequence[str] | None) -> SegSplit:
        """The same images labelled with only the foreground classes ``names`` (in that order, after background);
        every other class becomes background. A dataset that labels only the myocardium is this, with ``['MYO']``.

        Example:
            >>> import numpy as np
            >>> from resnet_jax.data import SegSplit
            >>> split = SegSplit(np.zeros((1, 1, 4, 1), np.float32), np.array([[[0, 1, 2, 3]]], np.uint8),
            ...                  ids=("p01_0",), class_names=("background", "LV", "MYO", "RV"))
            >>> only = split.keep_classes(["MYO"])
            >>> only.class_names, only.masks.tolist()
            (('background', 'MYO'), [[[0, 0, 1, 0]]])
        """
        if names is None:
            return self
        lower = [c.lower() for c in self.class_names]
        unknown = [n for n in names if n.lower() not in lower[1:]]
        if unknown or not names:
            raise DataError(f"data.keep_classes={list(names)}: {unknown or 'none given'}; valid: a non-empty list of "
                            f"{list(self.class_names[1:])}")
        lookup = np.zeros(len(self.class_names), np.uint8)
        for new_id, n in enumerate(names, start=1):
            lookup[lower.index(n.lower())] = new_id
        kept = tuple(self.class_names[lower.index(n.lower())] for n in names)
        return SegSplit(self.images, lookup[self.masks], self.ids, (self.class_names[0], *kept))


# TFDS, for users with network access ----------------------------------------------------------

# name -> (class names, lookup table from the dataset's mask values to class ids; -1 = invalid)
TFDS_SEGMENTATION = {
    # Oxford-IIIT Pet trimaps: 1 pet, 2 background, 3 border (the uncertain outline)
    "oxford_iiit_pet": (("background", "pet", "border"), np.array([-1, 1, 0, 2], np.int16)),
}


def load_tfds_segmentation(name: str, split: str, *, image_size: int | tuple[int, int] = 224) -> SegSplit:
    """A TFDS segmentation dataset as a :class:`SegSplit`: RGB images resized (bilinear) to ``image_size``
    and scaled to [0, 1], masks resized (nearest) and mapped to class ids with background first.

    Natural photos of varying size are resized, not cropped as the MRI slices are: a crop would cut the
    object off. Offline, fails with the local alternative.
    """
    if name not in TFDS_SEGMENTATION:
        raise DataError(f"unknown TFDS segmentation dataset {name!r}; valid: {list(TFDS_SEGMENTATION)}")
    class_names, lookup = TFDS_SEGMENTATION[name]
    records, _ = tfds_records(
        name, split, offline=f"pass --data-dir DIR with PNG image/mask pairs (DIR/{split}.zip or DIR/{split}/images "
                             f"and DIR/{split}/masks), e.g. --data-dir ../shared/data/acdc_lv_myo")
    from PIL import Image

    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    images, masks, ids = [], [], []
    for i, r in enumerate(records):
        where = f"example {i} of {name} {split!r}"
        values = np.asarray(r["segmentation_mask"])[..., 0]
        if values.max() >= len(lookup) or np.any(lookup[values] < 0):
            raise DataError(f"{where} has mask values {sorted(np.unique(values).tolist())}; expected "
                            f"{[v for v in range(len(lookup)) if lookup[v] >= 0]}")
        image = Image.fromarray(np.asarray(r["image"], np.uint8)).convert("RGB").resize((w, h), Image.BILINEAR)
        mask = np.asarray(Image.fromarray(values.astype(np.uint8)).resize((w, h), Image.NEAREST))
        images.append(np.asarray(image, np.float32) / 255.0)
        masks.append(lookup[mask].astype(np.uint8))
        file_name = r.get("file_name", f"{split}-{i}")
        ids.append(file_name.decode() if isinstance(file_name, bytes) else str(file_name))
    return SegSplit(np.stack(images), np.stack(masks), tuple(ids), class_names)


# Per-image steps ------------------------------------------------------------------------------

def decode_grey(blob: bytes, *, where: str) -> np.ndarray:
    """Decode a single-channel PNG to ``(H, W)`` uint8 or uint16 with its stored values unchanged."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as img:
            img.load()
            if img.mode.startswith("I;16"):
                arr = np.array(img).astype(np.uint16)
            elif img.mode in ("L", "P"):
                arr = np.array(img).astype(np.uint8)
            elif img.mode == "I":  # 32-bit int container; keep values, which fit uint16 for PNGs
                arr = np.array(img)
                if arr.min() < 0 or arr.max() > 65535:
                    raise DataError(f"image {where} has values outside 0..65535 ({arr.min()}..{arr.max()})")
                arr = arr.astype(np.uint16)
            else:
                raise DataError(f"image {where} has mode {img.mode!r}; expected a grey PNG (L, I;16 or I)")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot decode image {where}: {err}") from err
    return arr


def normalise_intensity(image: np.ndarray, *, percentiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """Clip to the image's own percentiles and scale to [0, 1] (float32); a flat image gives zeros."""
    x = np.asarray(image, np.float64)
    lo, hi = np.percentile(x, percentiles)
    if hi <= lo:
        return np.zeros(x.shape, np.float32)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def crop_or_pad(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop or zero pad the two leading axes to ``size`` (an odd excess goes after)."""
    out = array
    for axis, target in enumerate(size):
        n = out.shape[axis]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif n < target:
            widths = [(0, 0)] * out.ndim
            widths[axis] = ((target - n) // 2, target - n - (target - n) // 2)
            out = np.pad(out, widths)
    return out


# Sources --------------------------------------------------------------------------------------

def _source(data_dir: Path, split: str) -> tuple[str, Path, str]:
    """``(kind, path, member prefix)``: a split zip, a split folder, or a flat images/masks folder."""
    if not data_dir.exists():
        raise DataError(f"data directory {data_dir} does not exist; expected {split}.zip, {split}/images + "
                        f"{split}/masks, or images/ + masks/ (e.g. ../shared/data/acdc_lv_myo)")
    if (data_dir / f"{split}.zip").is_file():
        return "zip", data_dir / f"{split}.zip", f"{split}/"
    if (data_dir / split / "images").is_dir():
        return "dir", data_dir / split, ""
    if (data_dir / "images").is_dir() and (data_dir / "masks").is_dir():
        return "dir", data_dir, ""
    found = sorted(p.name for p in data_dir.iterdir())
    raise DataError(f"no split {split!r} in {data_dir}: expected {split}.zip, {split}/images + {split}/masks, "
                    f"or a flat images/ + masks/; found {found or 'an empty directory'}")


def _read_pairs(kind: str, path: Path, prefix: str) -> dict[str, dict[str, bytes]]:
    """``{part: {id: png bytes}}`` for ``images`` and ``masks``."""
    out: dict[str, dict[str, bytes]] = {p: {} for p in _PARTS}
    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                rel = info.filename[len(prefix):] if info.filename.startswith(prefix) else info.filename
                parts = Path(rel).parts
                if len(parts) == 2 and parts[0] in _PARTS and rel.lower().endswith(".png"):
                    out[parts[0]][Path(rel).stem] = zf.read(info)
    else:
        for part in _PARTS:
            for f in sorted((path / part).glob("*.png")):
                out[part][f.stem] = f.read_bytes()
    return out


def _check_pairs(pairs: dict[str, dict[str, bytes]], where: Path) -> list[str]:
    images, masks = set(pairs["images"]), set(pairs["masks"])
    if images != masks:
        raise DataError(f"images and masks differ in {where}: ids only in images {sorted(images - masks)[:5]}, "
                        f"only in masks {sorted(masks - images)[:5]}")
    if not images:
        raise DataError(f"no <id>.png pairs under images/ and masks/ in {where}")
    return sorted(images)


def _cache_key(pairs, ids, params: dict) -> str:
    digest = hashlib.sha256(f"{_CACHE_VERSION}|{json.dumps(params, sort_keys=True)}|".encode())
    for i in ids:
        for part in _PARTS:
            digest.update(f"{part}/{i}".encode())
            digest.update(pairs[part][i])
    return digest.hexdigest()[:32]


def load_segmentation_split(
    data_dir: str | os.PathLike,
    split: str,
    *,
    image_size: int | tuple[int, int] = 224,
    class_names: Sequence[str] = ("background", "LV", "MYO", "RV"),
    percentiles: Sequence[float] = (0.5, 99.5),
    id_prefixes: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> SegSplit:
    """Load, normalise and crop/pad one split (see the module docstring for layouts and steps).

    Args:
      image_size: output ``H`` (and ``W``) or ``(H, W)``; centre crop or zero pad.
      class_names: background first; mask values must be below ``len(class_names)``.
      percentiles: the per-image intensity range mapped to [0, 1].
      id_prefixes: keep only ids starting with one of these (how a flat folder is split by patient).

    Example:
        >>> import numpy as np, pathlib, tempfile
        >>> from PIL import Image
        >>> from resnet_jax.data import load_segmentation_split
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for part in ("images", "masks"):
        ...     (root / "test" / part).mkdir(parents=True)
        >>> Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(root / "test/images/patient001_0.png")
        >>> Image.fromarray(np.eye(8, dtype=np.uint8) * 2).save(root / "test/masks/patient001_0.png")
        >>> split = load_segmentation_split(root, "test", image_size=12, cache_dir=root / "cache")   # zero padded
        >>> split.images.shape, split.masks.shape, split.ids, float(split.images.max())
        ((1, 12, 12, 1), (1, 12, 12), ('patient001_0',), 1.0)
        >>> acdc = load_segmentation_split("../shared/data/acdc_lv_myo", "test", image_size=224)  # doctest: +SKIP
    """
    data_dir = Path(data_dir).expanduser()
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    kind, path, prefix = _source(data_dir, split)
    with readable_zip(path):
        pairs = _read_pairs(kind, path, prefix)
    ids = _check_pairs(pairs, path)
    if id_prefixes is not None:
        ids = [i for i in ids if i.startswith(tuple(id_prefixes))]
        if not ids:
            raise DataError(f"no ids in {path} start with {list(id_prefixes)}")
    params = {"split": split, "size": list(size), "percentiles": list(percentiles), "classes": list(class_names)}
    cache = Path(cache_dir or default_cache_dir()) / f"segmentation-{_cache_key(pairs, ids, params)}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return SegSplit(z["images"], z["masks"], tuple(json.loads(str(z["ids"]))), tuple(class_names))
    images, masks = [], []
    for i in ids:
        where = f"{i!r} in {path}"
        image = decode_grey(pairs["images"][i], where=where)
        mask = decode_grey(pairs["masks"][i], where=f"mask {where}")
        if image.shape != mask.shape:
            raise DataError(f"image {where} is {image.shape} but its mask is {mask.shape}")
        if mask.max() >= len(class_names):
            raise DataError(f"mask {where} has class id {int(mask.max())} but only {len(class_names)} classes "
                            f"{list(class_names)} are configured (set the class names, or remap the masks)")
        images.append(crop_or_pad(normalise_intensity(image, percentiles=percentiles), size))
        masks.append(crop_or_pad(mask.astype(np.uint8), size))
    out = SegSplit(np.stack(images)[..., None], np.stack(masks), tuple(ids), tuple(class_names))
    files.savez(cache, images=out.images, masks=out.masks, ids=json.dumps(list(out.ids)))
    return out


# Synthetic ---------------------------------------------------------------------------------------

SYNTHETIC_CLASSES = ("background", "LV", "MYO", "RV")


def synthetic_split(split: str, *, n: int = 48, size: int = 32, seed: int = 0,
                        num_classes: int = 4) -> SegSplit:
    """Learnable slices: a bright disc (1) in a mid-grey ring (2) and a second blob (3), over noise."""
    rng = np.random.default_rng([seed, {"train": 0, "val": 1}.get(split, 2)])
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0.15, 0.05, (n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        r = rng.uniform(0.12, 0.2) * size
        d = np.hypot(yy - cy, xx - cx)
        masks[i][d < 1.6 * r] = 2
        masks[i][d < r] = 1
        if num_classes > 3:
            masks[i][(np.hypot(yy - cy, xx - cx + 2.2 * r) < 0.8 * r) & (masks[i] == 0)] = 3
    images += np.asarray([0.0, 0.7, 0.35, 0.55], np.float32)[masks]
    ids = tuple(f"{split}{i // 4:02d}_{i:03d}" for i in range(n))  # four slices per synthetic "patient"
    return SegSplit(np.clip(images, 0, 1)[..., None], masks, ids, SYNTHETIC_CLASSES[:num_classes])
