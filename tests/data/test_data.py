"""Loaders against ImageFolder trees and zips generated here, with known pixels and labels."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import images as data
from tests.conftest import shared_dataset


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _tree(rng, classes=("cat", "dog", "emu"), per_class=3, shape=(6, 5, 3)):
    """{relative path: pixels} for a tiny lossless ImageFolder split."""
    return {f"{c}/{i}.png": rng.integers(0, 256, shape, dtype=np.uint8) for c in classes for i in range(per_class)}


def _write_dir(root, split, tree):
    for rel, pixels in tree.items():
        path = root / split / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(pixels))


def _write_zip(root, split, tree, extra=None):
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / f"{split}.zip", "w") as zf:
        for rel, pixels in tree.items():
            zf.writestr(f"{split}/{rel}", _png(pixels))
        for rel, blob in (extra or {}).items():
            zf.writestr(f"{split}/{rel}", blob)


@pytest.mark.parametrize("writer", [_write_dir, _write_zip])
def test_imagefolder_reads_pixels_labels_and_sorted_classes(tmp_path, writer):
    tree = _tree(np.random.default_rng(0), classes=("zebra", "ant", "mole"))
    writer(tmp_path, "train", tree)
    split = data.load_imagefolder(tmp_path, "train", cache_dir=tmp_path / "cache")
    assert split.class_names == ("ant", "mole", "zebra")
    assert split.images.shape == (9, 6, 5, 3) and split.images.dtype == np.uint8
    expected = {}
    for rel, pixels in tree.items():
        expected.setdefault(rel.split("/")[0], []).append(pixels.tobytes())
    for image, label in zip(split.images, split.labels):
        assert image.tobytes() in expected[split.class_names[label]]


def test_grey_images_keep_one_channel(tmp_path):
    _write_zip(tmp_path, "test", _tree(np.random.default_rng(1), shape=(4, 4)))
    assert data.load_imagefolder(tmp_path, "test", cache_dir=tmp_path / "c").images.shape == (9, 4, 4, 1)


def test_second_load_comes_from_the_cache_without_decoding(tmp_path, monkeypatch):
    _write_zip(tmp_path, "train", _tree(np.random.default_rng(2)))
    first = data.load_imagefolder(tmp_path, "train", cache_dir=tmp_path / "c")
    monkeypatch.setattr(data, "decode_image", lambda *a, **k: pytest.fail("decoded again"))
    monkeypatch.setattr(data, "_DECODED", {})  # another process: only the file on disk is shared
    second = data.load_imagefolder(tmp_path, "train", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


@pytest.mark.parametrize("writer", [_write_dir, _write_zip])
def test_a_split_read_again_in_one_process_is_the_same_and_no_caller_can_change_it(tmp_path, writer):
    tree = _tree(np.random.default_rng(4))
    writer(tmp_path, "train", tree)
    first = data.load_imagefolder(tmp_path, "train", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="read-only"):
        first.images[0, 0, 0, 0] = 255 - first.images[0, 0, 0, 0]
    with pytest.raises(ValueError, match="read-only"):
        first.labels[0] = 1 - first.labels[0]
    for path in (tmp_path / "c").iterdir():  # the decoded file gone: what comes back must still be the images
        path.unlink()
    second = data.load_imagefolder(tmp_path, "train", cache_dir=tmp_path / "c")
    assert sorted(i.tobytes() for i in second.images) == sorted(p.tobytes() for p in tree.values())
    assert sorted(second.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_changed_content_is_not_served_from_a_stale_cache(tmp_path):
    rng = np.random.default_rng(3)
    _write_zip(tmp_path, "train", _tree(rng))
    first = data.load_imagefolder(tmp_path, "train", cache_dir=tmp_path / "c")
    _write_zip(tmp_path, "train", _tree(rng))
    second = data.load_imagefolder(tmp_path, "train", cache_dir=tmp_path / "c")
    assert not np.array_equal(first.images, second.images)


def test_corrupt_image_names_the_member_and_archive(tmp_path):
    _write_zip(tmp_path, "train", _tree(np.random.default_rng(4)), extra={"dog/broken.png": b"not an image"})
    with pytest.raises(data.DataError, match=r"train/dog/broken\.png.*train\.zip"):
        data.load_imagefolder(tmp_path, "train", cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.npz")), "a failed load must not leave a cache file"


def test_class_folders_that_differ_between_splits_are_refused(tmp_path):
    rng = np.random.default_rng(5)
    _write_zip(tmp_path, "train", _tree(rng, classes=("a", "b", "c")))
    _write_zip(tmp_path, "test", _tree(rng, classes=("a", "b", "d")))
    with pytest.raises(data.DataError, match=r"only in train \['c'\], only in test \['d'\]"):
        data.load_train_test("x", data_dir=tmp_path)


def test_missing_and_empty_data_directories(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_imagefolder(tmp_path / "nope", "train")
    with pytest.raises(data.DataError, match="empty directory"):
        data.load_imagefolder(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(data.DataError, match="no images"):
        data.load_imagefolder(tmp_path, "train")


def test_mixed_image_sizes_are_refused_with_the_file(tmp_path):
    tree = _tree(np.random.default_rng(6))
    tree["emu/odd.png"] = np.zeros((3, 3, 3), np.uint8)
    _write_dir(tmp_path, "train", tree)
    with pytest.raises(data.DataError, match="odd.png"):
        data.load_imagefolder(tmp_path, "train", cache_dir=tmp_path / "c")


def test_tfds_failure_points_to_data_dir(monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds, "builder", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(data.DataError, match="--data-dir"):
        data.load_split("cifar10", "train")
    with pytest.raises(data.DataError, match="valid TFDS names"):
        data.load_split("imagenet21k", "train")


def test_take_is_a_fixed_subset():
    split = data.synthetic_split("train")
    a, b = split.take(50, seed=3), split.take(50, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert len(a) == 50 and len(split.take(None)) == len(split)


def test_shared_cifar10_zip_reads_as_imagefolder():
    root = shared_dataset("cifar10")
    test = data.load_imagefolder(root, "test")
    assert test.images.shape == (10_000, 32, 32, 3)
    assert test.class_names[:3] == ("airplane", "automobile", "bird")
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_the_tfds_route_reads_a_mocked_download():
    """Without --data-dir a preset reads TFDS; its download is replaced by TFDS's own mock data."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from resnet_jax import configs
    from resnet_jax.training import classification

    config = configs.load_config("cifar10-resnet34-smoke")
    assert config["data"]["data_dir"] is None
    with tfds.testing.mock_data(num_examples=40):
        splits = classification.load_splits(config)
    # the smoke preset holds 32 of the 40 training images out to validate
    assert splits.train.images.shape == (8, 32, 32, 3) and splits.train.images.dtype == np.uint8
    assert len(splits.val) == 32 and len(splits.test) == 40 and splits.train.num_classes == 10
    assert set(np.unique(splits.train.labels)) <= set(range(10))


def test_decoded_datasets_are_kept_beside_the_compiled_programs(monkeypatch, tmp_path):
    """One folder of caches per user: ``$RESNET_JAX_CACHE/datasets``, else ``resnet-jax/datasets`` under
    ``$XDG_CACHE_HOME`` or ``~/.cache``, as the compiled programs' ``resnet-jax/compiled``."""
    from resnet_jax import devices

    monkeypatch.setenv("RESNET_JAX_CACHE", str(tmp_path / "mine"))
    assert data.default_cache_dir() == tmp_path / "mine" / "datasets"
    monkeypatch.delenv("RESNET_JAX_CACHE")
    monkeypatch.delenv("RESNET_JAX_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "resnet-jax" / "datasets"
    assert devices.compilation_cache_dir() == tmp_path / "xdg" / "resnet-jax" / "compiled"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "resnet-jax" / "datasets"
