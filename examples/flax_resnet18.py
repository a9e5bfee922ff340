"""A ResNet18 written as the official Flax examples write it, trained on CIFAR-10, then ablated by resnet-jax.

Copy this file to ablate your own model: all resnet-jax needs is a function (here :func:`load`) that returns
``(model, variables, call_keywords)``. Train, then ablate every layer of the trained model::

    python examples/flax_resnet18.py --epochs 1 --out ../runs/flax-resnet18/params.msgpack \\
        --data-dir ../shared/data/cifar10
    resnet-jax ablate --model examples.flax_resnet18:load \\
        --model-arg checkpoint=../runs/flax-resnet18/params.msgpack \\
        --data-dir ../shared/data/cifar10 --protocol all --workdir ../runs/flax-resnet18-ablate

The model is the examples' ImageNet layout (7x7/2 stem and 3x3/2 max-pool, ``ResNetBlock`` with
``Conv_0``/``BatchNorm_0`` naming, ``conv_proj``/``norm_proj`` projections, ``train=True`` by default); on 32x32
CIFAR images its four stages see 8, 4, 2 and 1 pixels. It takes images as ``x / 255`` (no mean or std), as
``ablate`` gives them by default. The weights are saved as msgpack (``flax.serialization``): ``params`` and
``batch_stats``.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class ResNetBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; a 1x1 projection where the shape changes."""

    filters: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    act: Callable[[jax.Array], jax.Array] = nn.relu
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.filters, (3, 3))(y))
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """The examples' ResNet: ``train`` switches BatchNorm between batch and running statistics."""

    stage_sizes: Sequence[int]
    block_cls: Callable[..., nn.Module]
    num_classes: int
    num_filters: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        conv = functools.partial(nn.Conv, use_bias=False)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.max_pool(nn.relu(norm(name="bn_init")(x)), (3, 3), strides=(2, 2), padding="SAME")
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2**i, conv=conv, norm=norm, strides=strides)(x)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)


def load(checkpoint: str = "params.msgpack", num_classes: str = "10"):
    """What ``resnet-jax ablate --model examples.flax_resnet18:load`` calls: the model, its trained variables and
    the keywords that score it in evaluation mode (the model trains by default)."""
    variables = flax.serialization.msgpack_restore(Path(checkpoint).read_bytes())
    return ResNet18(num_classes=int(num_classes)), variables, {"train": False}


# Training ------------------------------------------------------------------------------------------------------

def read_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and labels of an ImageFolder split (a folder or a per-split zip, as ../shared/data has)."""
    from resnet_jax.data.images import load_imagefolder

    data = load_imagefolder(data_dir, split)
    return data.images, data.labels


def create_state(model: nn.Module, tx: optax.GradientTransformation, seed: int = 0) -> dict[str, Any]:
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "opt_state": tx.init(variables["params"])}


def train_step(model: nn.Module, tx: optax.GradientTransformation, state: dict, images: jax.Array,
               labels: jax.Array) -> tuple[dict, jax.Array]:
    """One SGD step in training mode; returns the new state and the batch's loss."""
    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]},
                                      images.astype(jnp.float32) / 255.0, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    changes, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], changes), "batch_stats": updates["batch_stats"],
            "opt_state": opt_state}, loss


def accuracy(model: nn.Module, variables: dict, images: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    apply = jax.jit(lambda x: model.apply(variables, x.astype(jnp.float32) / 255.0, train=False))
    hits = sum(int((np.argmax(apply(images[i:i + batch]), -1) == labels[i:i + batch]).sum())
               for i in range(0, len(images), batch))
    return hits / len(images)


def train(data_dir: str, out: str, *, epochs: int = 1, batch_size: int = 128, learning_rate: float = 2e-3,
          seed: int = 0) -> dict[str, Any]:
    """Train ResNet18 on the ``train`` split, save ``{params, batch_stats}`` to ``out``, score the ``test`` split."""
    images, labels = read_split(data_dir, "train")
    model, steps = ResNet18(num_classes=int(labels.max()) + 1), epochs * (len(images) // batch_size)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 10), steps)
    tx = optax.adamw(schedule, weight_decay=5e-4)
    state, step = create_state(model, tx, seed), jax.jit(functools.partial(train_step, model, tx))
    began, rng = time.perf_counter(), np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        for i in range(len(images) // batch_size):
            batch = order[i * batch_size:(i + 1) * batch_size]
            images_b = images[batch][:, :, ::-1] if rng.random() < 0.5 else images[batch]  # a horizontal flip
            state, loss = step(state, images_b, labels[batch])
            if i % 50 == 0:
                print(f"epoch {epoch + 1} step {i}: loss {float(loss):.3f} ({time.perf_counter() - began:.0f}s)")
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(flax.serialization.to_bytes(jax.device_get(variables)))
    seconds = time.perf_counter() - began
    test_images, test_labels = read_split(data_dir, "test")
    return {"train_seconds": round(seconds, 1), "test_accuracy": accuracy(model, variables, test_images, test_labels),
            "checkpoint": str(out)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", required=True, help="where the msgpack of params and batch_stats goes")
    parser.add_argument("--data-dir", default="../shared/data/cifar10", help="CIFAR-10 as an ImageFolder tree or zips")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    args = parser.parse_args(argv)
    print(train(args.data_dir, args.out, epochs=args.epochs, batch_size=args.batch_size,
                learning_rate=args.learning_rate))


if __name__ == "__main__":
    main()
