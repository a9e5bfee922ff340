"""Training: it learns, augmentation does what it says, checkpoints restore, resume is exact."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import checkpointing, configs
from resnet_jax.training import classification as train
from resnet_jax.training import core, runs
from tests.conftest import REPO, count_shifted_crops, run_cli


def _tiny_state(config, n_classes=10, steps_per_epoch=10):
    model = train.build_model(config, n_classes)
    tx = core.make_optimizer(config, steps_per_epoch)
    return core.create_train_state(model, tx, (32, 32, 3), seed=0, mean=np.zeros(3, np.float32) + 0.5,
                                    std=np.ones(3, np.float32) * 0.25)


def test_overfits_one_fixed_batch_of_random_labels():
    config = configs.load_config("synthetic-tiny", ["train.learning_rate=0.05", "train.epochs=200",
                                                     "train.warmup_epochs=0", "train.weight_decay=0"])
    state = _tiny_state(config, steps_per_epoch=1)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 32).astype(np.int32))
    step = jax.jit(lambda s: train.train_step(s, images, labels, jax.random.key(0), augment_images=False,
                                              label_smoothing=0.0))
    for _ in range(80):
        state, out = step(state)
    assert float(out["accuracy"]) >= 0.95


def test_augment_is_a_shifted_crop_of_the_padded_image_possibly_flipped():
    images = jnp.asarray(np.random.default_rng(0).integers(1, 256, (64, 8, 8, 3), dtype=np.uint8))
    out = np.asarray(train.augment(images, jax.random.key(3), pad=2))
    assert 10 < count_shifted_crops(np.asarray(images), out, pad=2) < 54  # about half flipped


def test_weight_decay_touches_kernels_only():
    config = configs.load_config("synthetic-tiny", ["train.learning_rate=1.0", "train.weight_decay=0.1",
                                                     "train.momentum=0.0", "train.nesterov=false",
                                                     "train.warmup_epochs=0"])
    tx = core.make_optimizer(config, 10)
    params = {"conv": {"kernel": jnp.ones(3)}, "bn": {"scale": jnp.ones(3), "bias": jnp.ones(3)}}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    # step 0 of the schedule is the peak rate: update = -lr * (grad + wd * param)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.1)
    np.testing.assert_allclose(updates["bn"]["scale"], 0.0)
    np.testing.assert_allclose(updates["bn"]["bias"], 0.0)


def test_checkpoint_round_trip_is_exact(tmp_path):
    config = configs.load_config("synthetic-tiny")
    state = _tiny_state(config)
    state = state.replace(step=jnp.asarray(7), params=jax.tree.map(lambda x: x + 0.5, state.params))
    mngr = checkpointing.manager(tmp_path, best_metric="val_accuracy")
    checkpointing.save(mngr, 7, state, metrics={"val_accuracy": 0.5})
    restored = checkpointing.restore(mngr, _tiny_state(config))
    for name in ("params", "opt_state", "batch_stats", "image_mean", "image_std"):
        chex.assert_trees_all_equal(getattr(state, name), getattr(restored, name), strict=True)
    assert int(restored.step) == 7


def test_keeps_the_latest_and_the_best(tmp_path):
    state = {"x": jnp.zeros(2)}
    mngr = checkpointing.manager(tmp_path, keep=2, best_metric="val_accuracy")
    for step, acc in [(1, 0.9), (2, 0.1), (3, 0.2), (4, 0.3)]:
        checkpointing.save(mngr, step, state, metrics={"val_accuracy": acc})
    assert list(mngr.all_steps()) == [1, 3, 4]
    assert checkpointing.best_step(mngr, metric="val_accuracy") == 1


def _final_params(workdir):
    state = runs.restore(workdir, which="latest").state
    return state.step, jax.tree.leaves(state.params) + jax.tree.leaves(state.batch_stats)


def _train_cmd(workdir, *extra):
    return [sys.executable, "-m", "resnet_jax.cli", "train", "--config", "synthetic-tiny", "--workdir",
            str(workdir), "--set", "train.batch_size=8", "--set", "train.epochs=3", *extra]


def _assert_bitwise_equal(a, b):
    (step_a, leaves_a), (step_b, leaves_b) = _final_params(a), _final_params(b)
    assert int(step_a) == int(step_b)
    for x, y in zip(leaves_a, leaves_b):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("how", ["SIGKILL", pytest.param("SIGTERM", marks=pytest.mark.slow)])
def test_interrupted_then_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path, how):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    subprocess.run(_train_cmd(reference), check=True, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen(_train_cmd(interrupted), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = interrupted / "checkpoints" / "48"  # the end of epoch 1 (512 - 128 validation examples / batch 8)
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # into epoch 2
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=120)
    mngr = checkpointing.manager(interrupted, best_metric="val_accuracy")
    latest = mngr.latest_step()
    assert latest is not None and latest < 144, "the run finished before it could be interrupted"
    if how == "SIGTERM":
        assert proc.returncode == 143 and latest % 48 != 0, "SIGTERM must checkpoint mid-epoch"
    subprocess.run(_train_cmd(interrupted), check=True, env=env, capture_output=True, timeout=600)
    _assert_bitwise_equal(reference, interrupted)
    lines = [json.loads(x) for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]


def test_workdir_with_a_different_config_is_refused_unless_forced(tmp_path):
    ok = run_cli("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path), "--set", "train.epochs=1")
    assert ok.returncode == 0, ok.stderr
    refused = run_cli("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path), "--set", "train.epochs=2")
    assert refused.returncode == 2 and "train.epochs" in refused.stderr and "--force-new" in refused.stderr
    forced = run_cli("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path), "--set", "train.epochs=2",
                     "--force-new")
    assert forced.returncode == 0, forced.stderr
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_cli_train_then_evaluate_and_metrics_schema(tmp_path):
    result = run_cli("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ["epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                "images_per_second", "elapsed_s"]:
        assert key in line
    assert "test_accuracy" not in line  # the test split is scored once, on the chosen checkpoint
    assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "resnet_tiny"
    evaluated = run_cli("evaluate", "--workdir", str(tmp_path), "--checkpoint", "best")
    assert evaluated.returncode == 0, evaluated.stderr
    trained = json.loads((tmp_path / "evaluation.json").read_text())
    assert json.loads((tmp_path / "evaluation-best.json").read_text())["test_accuracy"] == pytest.approx(
        trained["test_accuracy"])


def test_a_run_resumes_with_its_data_folder_spelled_another_way(tmp_path, monkeypatch):
    """``--data-dir ../data`` then the same folder's absolute path: one dataset, so the run resumes."""
    (tmp_path / "data").mkdir()
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    args = ("train", "--config", "synthetic-tiny", "--workdir", str(tmp_path / "w"), "--set", "train.epochs=1")
    first = run_cli(*args, "--data-dir", "../data")
    assert first.returncode == 0, first.stderr
    again = run_cli(*args, "--data-dir", str(tmp_path / "data"))
    assert again.returncode == 0 and "different config" not in again.stderr, again.stderr
    stored = json.loads((tmp_path / "w" / "config.json").read_text())["data"]["data_dir"]
    assert stored == str((tmp_path / "data").resolve())


def test_a_data_folder_stored_relative_by_an_older_run_is_the_folder_it_names(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    config = configs.load_config("synthetic-tiny", data_dir=tmp_path / "data")
    stored = {**config, "data": {**config["data"], "data_dir": "data"}}  # as an older resnet-jax kept it
    assert configs.diff(stored, config) == []
    elsewhere = {**config, "data": {**config["data"], "data_dir": "other"}}
    assert configs.diff(elsewhere, config) == ["data.data_dir"]


@pytest.mark.parametrize("args, message", [
    (["--config", "nope"], "neither a preset"),
    (["--config", "synthetic-tiny", "--set", "train.epoch=3"], "train.epochs"),
    (["--config", "cifar10-resnet34-smoke", "--data-dir", "/nonexistent/dir"], "does not exist"),
])
def test_cli_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, args, message):
    result = run_cli("train", "--workdir", str(tmp_path / "w"), *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "w").exists()


def test_help_everywhere():
    for args in (["--help"], ["train", "--help"], ["evaluate", "--help"]):
        result = run_cli(*args)
        assert result.returncode == 0 and "usage" in result.stdout


def test_the_test_split_never_chooses_the_checkpoint(tmp_path):
    """Permuting the test labels changes test scores but not one validation score or the chosen checkpoint."""
    config = configs.load_config("synthetic-tiny", ["train.epochs=4", "train.keep_checkpoints=1"])
    honest = core.train_and_evaluate(config, tmp_path / "honest", train.TASK, log=lambda _: None)
    load = train.TASK.load_splits

    def permuted_test_labels(cfg):
        splits = load(cfg)
        labels = np.random.default_rng(1).permutation(splits.test.labels)
        return core.Splits(splits.train, splits.val, type(splits.test)(splits.test.images, labels,
                                                                           splits.test.class_names))

    permuted_task = dataclasses.replace(train.TASK, load_splits=permuted_test_labels)
    core.train_and_evaluate(config, tmp_path / "permuted", permuted_task, log=lambda _: None)
    read = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["val_accuracy"] for r in read("honest")] == [r["val_accuracy"] for r in read("permuted")]
    assert all("test_accuracy" not in r for r in read("honest"))
    chosen = {name: json.loads((tmp_path / name / "evaluation.json").read_text()) for name in ("honest", "permuted")}
    assert chosen["honest"]["step"] == chosen["permuted"]["step"]
    assert chosen["honest"]["test_accuracy"] != chosen["permuted"]["test_accuracy"]  # the permutation did bite
    best_val = max(read("honest"), key=lambda r: r["val_accuracy"])
    assert chosen["honest"]["step"] == best_val["step"]  # the earliest best: orbax keeps it among ties
    run = runs.restore(tmp_path / "honest")
    assert int(run.state.step) == best_val["step"] and "validation accuracy" in run.choice
    assert honest["epoch"] == 4


def test_stratified_holdout_keeps_class_shares_and_is_fixed_by_seed():
    from resnet_jax.data.images import DataError, stratified_holdout

    labels = np.repeat(np.arange(3), [50, 30, 20])
    kept, held = stratified_holdout(labels, 10, seed=0)
    assert np.bincount(labels[held]).tolist() == [5, 3, 2]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(100))
    again, _ = stratified_holdout(labels, 10, seed=0)
    other, _ = stratified_holdout(labels, 10, seed=1)
    assert np.array_equal(kept, again) and not np.array_equal(kept, other)
    _, uneven = stratified_holdout(labels, 7, seed=0)  # quotas 3.5, 2.1, 1.4: the largest remainder wins
    assert np.bincount(labels[uneven]).tolist() == [4, 2, 1]
    with pytest.raises(DataError, match="val_examples=100"):
        stratified_holdout(labels, 100, seed=0)


def test_a_run_of_an_older_resnet_jax_is_read_as_it_ran():
    stored = {"task": "classification", "train": {"seed": 3}, "data": {"name": "cifar10"}}
    config = configs.complete(stored)
    assert config["data"]["val_examples"] == 0 and config["data"]["split_seed"] == 3


def test_a_run_without_a_validation_split_says_the_test_split_chose_its_checkpoint(tmp_path):
    config = configs.load_config("synthetic-tiny", ["train.epochs=1", "data.val_examples=0"])
    core.train_and_evaluate(config, tmp_path, train.TASK, log=lambda _: None)
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert "test_accuracy" in line and "val_accuracy" not in line
    run = runs.restore(tmp_path)
    assert run.chosen_by == "test_accuracy" and "the test split chose the checkpoint" in run.choice


def test_a_stop_on_an_epochs_last_step_keeps_its_row_and_a_resumed_epoch_averages_all_its_steps(tmp_path, monkeypatch):
    config = configs.load_config("synthetic-tiny", ["train.batch_size=8", "train.epochs=3"])
    task, quiet = runs.task_for(config, command="train"), lambda line: None
    core.train_and_evaluate(config, tmp_path / "reference", task, log=quiet)
    original = core.run_epochs

    def interrupted_at(call):  # SIGINT arrives during this process's ``call``-th training step
        def run(state, mngr, *, step_fn, **kwargs):
            calls = []

            def step(*args):
                calls.append(1)
                if len(calls) == call:
                    os.kill(os.getpid(), signal.SIGINT)
                return step_fn(*args)
            return original(state, mngr, step_fn=step, **kwargs)
        return run

    workdir = tmp_path / "stopped"
    monkeypatch.setattr(core, "run_epochs", interrupted_at(48))  # the last of epoch 1's 48 steps
    with pytest.raises(KeyboardInterrupt):
        core.train_and_evaluate(config, workdir, task, log=quiet)
    rows = lambda w: [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["epoch"] for r in rows(workdir)] == [1]  # the epoch was evaluated and ranked before stopping
    assert 48 in checkpointing.manager(workdir, best_metric="val_accuracy").all_steps()
    monkeypatch.setattr(core, "run_epochs", interrupted_at(20))  # mid epoch 2
    with pytest.raises(KeyboardInterrupt):
        core.train_and_evaluate(config, workdir, task, log=quiet)
    monkeypatch.setattr(core, "run_epochs", original)
    core.train_and_evaluate(config, workdir, task, log=quiet)
    got, want = rows(workdir), rows(tmp_path / "reference")
    assert [r["epoch"] for r in got] == [1, 2, 3] and got[1]["resumed_mid_epoch"]
    for a, b in zip(got, want):  # the resumed epoch's train loss is over all 48 steps, as uninterrupted
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_accuracy"] == b["val_accuracy"]
