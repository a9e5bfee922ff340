"""resnet-jax: layer-ablation studies of convolutional networks in JAX/Flax."""

from importlib import metadata

try:
    __version__ = metadata.version("resnet-jax")
except metadata.PackageNotFoundError:  # run from a checkout on PYTHONPATH, not installed
    __version__ = "0+unknown"
