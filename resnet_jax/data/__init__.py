"""Datasets from local ImageFolder trees or split zips (offline) or TFDS, decoded once and cached."""

from resnet_jax.data.images import DataError, Split, load_imagefolder, load_split, load_train_test
from resnet_jax.data.segmentation import SegSplit, load_segmentation_split

__all__ = ["DataError", "SegSplit", "Split", "load_imagefolder", "load_segmentation_split", "load_split",
           "load_train_test"]
