"""Training any preset (jit-compiled steps on every local device, resumable) and restoring a trained run.

    from resnet_jax import configs
    from resnet_jax.training import restore, train
    train(configs.load_config("cifar10-resnet34-smoke", data_dir="../shared/data/cifar10"), "runs/smoke")
    run = restore("runs/smoke")                                  # model, state, splits, task
"""

from resnet_jax.training.core import Run, Task, TrainState
from resnet_jax.training.runs import read_config, restore, train

__all__ = ["Run", "Task", "TrainState", "read_config", "restore", "train"]
