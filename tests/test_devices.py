"""Eight simulated CPU devices give the results of one (data sharded over a jax.sharding.Mesh)."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import REPO

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from resnet_jax import configs
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine
from resnet_jax.data import images as data
from resnet_jax.models import resnet as models
from resnet_jax.training import runs
assert jax.device_count() == int(sys.argv[1]), jax.devices()
model = models.create_model("resnet_tiny", num_classes=10)
variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
layers = abl.catalogue(model, variables)
split = data.synthetic_split("test", n=48)
ablations = [abl.Ablation("baseline", "zero-kernel", ())] + [
    abl.Ablation(l.name, "zero-kernel", (l.name,)) for l in layers[::3]]
results = engine.evaluate(model, variables, ablations, layers, split.images, split.labels,
                          image_mean=0.5, image_std=0.25, batch_size=16, progress=False)
config = configs.load_config("synthetic-tiny", ["train.epochs=1", "train.batch_size=64", "train.learning_rate=0.005"])
last = runs.train(config, sys.argv[2], log=lambda s: None)
print(json.dumps({"predictions": [r.per_example["prediction"].tolist() for r in results],
                  "train_loss": last["train_loss"], "test_loss": last["test_loss"]}))
"""


def _run(n_devices, workdir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(n_devices), str(workdir)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one(tmp_path):
    one, eight = _run(1, tmp_path / "one"), _run(8, tmp_path / "eight")
    assert one["predictions"] == eight["predictions"]
    # Same global batch statistics and gradients, summed in a different order across devices. The
    # losses are compared, not the accuracy: a one-epoch model sits near chance, where a rounding-level
    # change of the weights flips a few argmaxes.
    np.testing.assert_allclose(one["train_loss"], eight["train_loss"], rtol=5e-4)
    np.testing.assert_allclose(one["test_loss"], eight["test_loss"], rtol=5e-4)
