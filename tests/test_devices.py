"""Eight simulated CPU devices give the results of one (data sharded over a jax.sharding.Mesh)."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import REPO, xla_flags

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from resnet_jax import configs, devices
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import engine
from resnet_jax.data import images as data
from resnet_jax.models import resnet as models
from resnet_jax.training import runs
assert jax.device_count() == int(sys.argv[1]), jax.devices()
devices.enable_compilation_cache(devices.compilation_cache_dir())  # the suite's cache ($RESNET_JAX_COMPILE_CACHE)
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
                  "train_loss": last["train_loss"], "val_loss": last["val_loss"]}))
"""


def _run(n_devices, workdir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(f"--xla_force_host_platform_device_count={n_devices}")}
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
    np.testing.assert_allclose(one["val_loss"], eight["val_loss"], rtol=5e-4)


_COMPILE_ONCE = """
import sys
import jax
import jax.numpy as jnp
from resnet_jax import devices

events = []
jax.monitoring.register_event_listener(lambda event, **kwargs: events.append(event))
devices.enable_compilation_cache(sys.argv[1] if sys.argv[1] != "off" else None)
f = jax.jit(lambda x: jnp.tanh(x @ x.T) + jnp.arange(64.0))
f(jnp.ones((64, 64))).block_until_ready()
print(events.count("/jax/compilation_cache/cache_misses"), events.count("/jax/compilation_cache/cache_hits"))
"""


def test_a_second_process_loads_its_programs_from_the_compilation_cache(tmp_path):
    def run(cache):
        out = subprocess.run([sys.executable, "-c", _COMPILE_ONCE, cache], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
        assert out.returncode == 0, out.stderr
        return tuple(int(n) for n in out.stdout.split())

    cache = str(tmp_path / "compiled")
    misses, hits = run(cache)  # the function, and the small programs that make its input
    assert misses >= 1 and hits == 0  # compiled, and stored
    assert run(cache) == (0, misses)  # loaded: nothing compiled
    assert any((tmp_path / "compiled").iterdir())
    assert run("off") == (0, 0)  # no cache, although the suite sets JAX_COMPILATION_CACHE_DIR: nothing asked


def test_the_cli_keeps_its_compiled_programs_where_the_user_says(tmp_path):
    from tests.conftest import run_cli

    run = tmp_path / "run"
    trained = run_cli("train", "--config", "synthetic-tiny", "--workdir", str(run), "--set", "train.epochs=1")
    assert trained.returncode == 0, trained.stderr  # in this process, with the suite's programs
    cache = tmp_path / "compiled"  # a process of its own, told where to keep its programs: it compiles afresh
    result = run_cli("evaluate", "--workdir", str(run), env_extra={"RESNET_JAX_COMPILE_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    written = [p.name for p in cache.iterdir()]
    assert any(name.startswith("jit_eval_step-") for name in written), written  # the evaluation step, compiled here
    # the cache folder is made when the cache is enabled, before any command runs: a command that compiles
    # nothing shows the flag as well as one that does
    off = run_cli("--no-compile-cache", "presets", env_extra={"RESNET_JAX_COMPILE_CACHE": str(tmp_path / "unused")})
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "unused").exists()


class _Device:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_the_memory_budget_is_half_of_what_a_device_reports():
    from resnet_jax import devices

    assert devices.memory_budget_mb(_Device({"bytes_limit": 8 * 2**30, "bytes_in_use": 10})) == 4096.0
    assert devices.memory_budget_mb(_Device({"bytes_limit": 140 * 2**30}), fraction=0.25) == 35 * 1024.0
    assert devices.memory_budget_mb(_Device(None)) == devices.FALLBACK_MEMORY_MB  # CPUs report nothing
    assert devices.memory_budget_mb(object()) == devices.FALLBACK_MEMORY_MB


def test_a_resident_training_set_gives_the_batches_the_host_would_send():
    from resnet_jax import devices

    mesh = devices.data_mesh()
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8), rng.integers(0, 10, 50).astype(np.int32))
    resident_fetch, resident = devices.batch_source(mesh, arrays)
    host_fetch, on_host = devices.batch_source(mesh, arrays, budget_bytes=100)  # too small: sliced on the host
    assert resident and not on_host
    idx = rng.permutation(50)[:16]
    for got, sent, original in zip(resident_fetch(idx), host_fetch(idx), arrays):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(sent))
        np.testing.assert_array_equal(np.asarray(got), original[idx])
        assert got.sharding == sent.sharding
