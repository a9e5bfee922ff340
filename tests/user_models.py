"""Models a user might hand to ``resnet-jax ablate --model tests.user_models:FUNCTION``, with deterministic
weights, and functions that break the contract in each way the command must refuse in one line."""

from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from resnet_jax.models import resnet

SIZE = 8
CLASSES = 3


class VGG(nn.Module):
    """conv-BN-ReLU twice, a max-pool, a Dense head; trains (batch statistics) by default, as users write it."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        for features in (4, 6):
            x = nn.Conv(features, (3, 3))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(CLASSES)(x.reshape(x.shape[0], -1))


def vgg_variables(seed: int) -> dict:
    return VGG().init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)), train=False)


def vgg(seed: str = "0"):
    """The VGG with weights drawn from ``seed``, scored in evaluation mode."""
    return VGG(), vgg_variables(int(seed)), {"train": False}


def vgg_from_file(checkpoint: str):
    """The VGG with the weights a msgpack file holds (what a user's ``load`` does)."""
    template = vgg_variables(0)
    return VGG(), flax.serialization.from_bytes(template, Path(checkpoint).read_bytes()), {"train": False}


class NNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.head = nnx.Linear(4, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.head(x.mean(axis=(1, 2)))


def nnx_cnn(seed: str = "0"):
    """An NNX module alone (no variables: they live in the module)."""
    return NNXCNN(nnx.Rngs(int(seed)))


def tiny_resnet():
    """resnet_jax's own ResNet (it declares stages and units), two units, 4 filters."""
    model = resnet.ResNet(stage_sizes=(1, 1), num_classes=CLASSES, num_filters=4, stem="cifar", conv_impl="xla")
    return model, model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))


# Broken on purpose -----------------------------------------------------------------------------------------------

def raises(checkpoint: str = "missing.msgpack"):
    return VGG(), flax.serialization.from_bytes(vgg_variables(0), Path(checkpoint).read_bytes())


def returns_dict():
    return {"model": VGG(), "params": vgg_variables(0)["params"]}


def linen_without_variables():
    return VGG()


def trains_on_call():
    """The VGG without its ``{"train": False}``: its call would update batch statistics."""
    return VGG(), vgg_variables(0)


class DenseOnly(nn.Module):
    """Takes flattened 16x16 RGB images only: 8x8 images do not fit its reshape."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(CLASSES)(x.reshape(x.shape[0], 16, 16, 3).reshape(x.shape[0], -1))


def wrong_size():
    model = DenseOnly()
    return model, model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


NOT_A_FUNCTION = 3


class Segmenter(nn.Module):
    """Per-pixel logits of ``classes`` classes from two convs (a segmentation model's output shape)."""

    classes: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Conv(self.classes, (1, 1))(x)


def segmenter(classes: str = "4"):
    model = Segmenter(int(classes))
    return model, model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
