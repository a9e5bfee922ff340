"""Eliminating units: the slim model against the masked model on real images, the greedy search against a slow
loop, the PyTorch export against the Flax slim model, and the command end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import metrics
from resnet_jax.ablation import catalogue as abl
from resnet_jax.ablation import elimination as elim
from resnet_jax.ablation import engine, store
from resnet_jax.data import images as data
from resnet_jax.data.inputs import channel_stats, normalize
from resnet_jax.models import resnet as models
from resnet_jax.studies import comparison, eliminate
from tests.conftest import perturb_norms, run_cli, shared_dataset


def _model(name="resnet34", stem="torchvision", seed=0):
    model = models.create_model(name, num_classes=10, stem=stem)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
    return model, perturb_norms(variables, seed=seed)


@pytest.fixture(scope="module")
def cifar_images():
    root = shared_dataset("cifar10")
    test = data.load_imagefolder(root, "test").take(64, seed=0)
    mean, std = channel_stats(test.images)
    return np.asarray(normalize(test.images, mean, std))


def _masked_and_slim(model, variables, choices, x):
    layers = abl.catalogue(model, variables)
    masked = abl.apply(variables, abl.make_mask(variables["params"], elim.as_ablation(choices, layers), layers))
    slim = elim.slim_model(model, choices, layers)
    slim_vars = elim.slim_variables(model, variables, choices, layers, input_shape=x.shape)
    return model.apply(masked, x)[0], slim.apply(slim_vars, x)[0], slim, slim_vars


@pytest.mark.parametrize("stem", ["torchvision", "cifar"])
def test_slim_model_equals_the_masked_model_on_real_images(cifar_images, stem):
    """Zeroed conv2 (per-channel bias), zeroed conv1 (per-position bias: zero padding makes the border differ) and
    several units at once: the slim ResNet34 has no conv left there and gives the masked model's logits."""
    model, variables = _model(stem=stem)
    choices = (elim.Choice("layer1.1", "layer1.1.conv2"), elim.Choice("layer2.2", "layer2.2.conv1"),
               elim.Choice("layer3.3", "layer3.3.conv2"), elim.Choice("layer3.4", "layer3.4.conv1"),
               elim.Choice("layer4.2", "layer4.2.conv2"))
    masked, slim, slim_model, slim_vars = _masked_and_slim(model, variables, choices, cifar_images)
    np.testing.assert_allclose(slim, masked, rtol=0, atol=1e-5 * float(jnp.abs(masked).max()))
    assert (np.argmax(slim, -1) == np.argmax(masked, -1)).all()
    kept = models.conv_names(slim_vars)
    assert not any(n.startswith(("layer1.1.", "layer2.2.", "layer3.3.", "layer3.4.", "layer4.2.")) for n in kept)
    assert len(kept) == len(models.conv_names(variables)) - 10
    # Per-position where an earlier conv was zeroed, and that bias really varies at the border.
    b = np.asarray(slim_vars["params"]["layer2"]["2"]["branch_bias"])
    assert b.shape == ((4, 4, 128) if stem == "torchvision" else (16, 16, 128))
    assert np.ptp(b, axis=(0, 1)).max() > 0
    assert slim_vars["params"]["layer1"]["1"]["branch_bias"].shape == (64,)
    # And the masked model differs from the unablated one, so the equality is not vacuous.
    assert np.abs(np.asarray(model.apply(variables, cifar_images)[0]) - np.asarray(masked)).max() > 1e-2


def test_lesion_variant_is_relu_x_and_equals_the_lesioned_model(cifar_images):
    model, variables = _model()
    choices = (elim.Choice("layer2.1"), elim.Choice("layer3.2"))
    layers = abl.catalogue(model, variables)
    masked, slim, _, slim_vars = _masked_and_slim(model, variables, choices, cifar_images)
    gated = model.apply(variables, cifar_images, gates={"unit": {"layer2.1": jnp.zeros(64), "layer3.2": jnp.zeros(64)}})[0]
    np.testing.assert_allclose(slim, gated, rtol=0, atol=1e-5 * float(jnp.abs(gated).max()))
    np.testing.assert_allclose(slim, masked, rtol=0, atol=1e-5 * float(jnp.abs(gated).max()))
    assert "1" not in slim_vars["params"]["layer2"] and "2" not in slim_vars["params"]["layer3"]
    assert elim.count_params(slim_vars) < elim.count_params(variables)
    assert elim.conv_macs(layers, choices) < elim.conv_macs(layers)


def test_projection_units_cannot_be_eliminated_and_the_error_lists_the_valid_ones():
    model, variables = _model("resnet_tiny")
    layers = abl.catalogue(model, variables)
    with pytest.raises(ValueError, match=r"layer2\.0.*valid: \['layer1\.0', 'layer1\.1', 'layer2\.1'"):
        elim.as_ablation((elim.Choice("layer2.0", "layer2.0.conv2"),), layers)
    assert [c.unit for c in elim.candidates(layers)] == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert len(elim.candidates(layers, granularity="conv")) == 10


def test_stage_protocols_on_a_slim_model_name_only_stages_with_a_row():
    """A stage that keeps only its first unit (decomposition and adjacent convs, which the protocol keeps) has no
    row; the others resolve as before."""
    from resnet_jax.ablation import protocols

    model, variables = _model("resnet_tiny")
    layers = abl.catalogue(model, variables)
    choices = (elim.Choice("layer2.1", "layer2.1.conv2"), elim.Choice("layer3.1", "layer3.1.conv2"))
    slim = elim.slim_model(model, choices, layers)
    slim_layers = abl.catalogue(slim, elim.slim_variables(model, variables, choices, layers, input_shape=(1, 32, 32, 3)))
    specs = protocols.protocol_specs("stage-except-decomposition", slim_layers)
    assert [s.name for s in specs] == ["layer1", "layer4"]
    assert [a.layers for a in abl.resolve_all(specs, slim_layers)] == [
        ("layer1.1.conv1", "layer1.1.conv2"), ("layer4.1.conv1", "layer4.1.conv2")]
    # Stage 1's first unit eliminated: its "first conv" reading has no adjacent conv left to keep.
    first = (elim.Choice("layer1.0", "layer1.0.conv2"),)
    no_first = abl.catalogue(elim.slim_model(model, first, layers),
                             elim.slim_variables(model, variables, first, layers, input_shape=(1, 32, 32, 3)))
    specs = protocols.protocol_specs("stage-except-decomposition-first-conv", no_first)
    assert abl.resolve_all(specs, no_first)[0].layers == ("layer1.1.conv1", "layer1.1.conv2")


def test_slim_initial_parameters_are_the_source_init_pruned_and_a_per_position_bias_fixes_the_size():
    model, variables = _model("resnet_tiny")
    layers = abl.catalogue(model, variables)
    choices = (elim.Choice("layer2.1", "layer2.1.conv1"),)
    slim_vars = elim.slim_variables(model, variables, choices, layers, input_shape=(1, 32, 32, 3))
    initial = model.init(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))["params"]
    pruned = elim.slim_initial(initial, slim_vars["params"])
    assert jax.tree.structure(pruned) == jax.tree.structure(slim_vars["params"])
    np.testing.assert_array_equal(pruned["layer3"]["1"]["conv2"]["kernel"], initial["layer3"]["1"]["conv2"]["kernel"])
    assert not np.any(np.asarray(pruned["layer2"]["1"]["branch_bias"]))
    slim = elim.slim_model(model, choices, layers)
    with pytest.raises(ValueError, match=r"layer2\.1 was eliminated with a per-position bias for \(4, 4\) maps"):
        slim.apply(slim_vars, jnp.zeros((1, 64, 64, 3)))


def _slow_greedy(model, variables, layers, x, y, options, max_drop):
    """The search written as a loop over masked forwards, one model at a time."""
    def accuracy(choices):
        masked = abl.apply(variables, abl.make_mask(variables["params"], elim.as_ablation(choices, layers), layers))
        return float(np.mean(np.argmax(np.asarray(model.apply(masked, x)[0]), -1) == y))

    baseline, removed, path = accuracy(()), [], []
    while True:
        remaining = [c for c in options if c.unit not in {r.unit for r in removed}]
        if not remaining:
            return baseline, path
        values = [accuracy(tuple(removed) + (c,)) for c in remaining]
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        path.append((remaining[best], values[best]))
        if baseline - values[best] > max_drop:
            return baseline, path
        removed.append(remaining[best])


@pytest.mark.parametrize("granularity", ["unit", "conv"])
def test_greedy_search_with_the_engine_equals_a_slow_loop(tmp_path, granularity):
    """Labels are the unablated model's own predictions, so accuracy measures how much each set changes it."""
    model, variables = _model("resnet_tiny", seed=1)
    layers = abl.catalogue(model, variables)
    split = data.synthetic_split("test", n=96)
    mean, std = channel_stats(split.images)
    x = np.asarray(normalize(split.images, mean, std))
    y = np.argmax(model.apply(variables, x)[0], -1)
    options = elim.candidates(layers, granularity=granularity)
    results = store.ResultStore(tmp_path, store.context(variables, split.images, y, metrics.Accuracy()))
    inputs = engine.Inputs(model, variables, layers, split.images, y, mean, std, metrics.Accuracy(), 32)
    score = eliminate.set_scorer(inputs, results=results, protocol="t")
    baseline = score([()])[0]
    assert baseline == 1.0
    path = elim.greedy(options, score, baseline=baseline, max_drop=0.5)
    slow_baseline, slow = _slow_greedy(model, variables, layers, x, y, options, 0.5)
    assert [(r["added"], r["value"]) for r in path] == [(c, pytest.approx(v, abs=1e-6)) for c, v in slow]  # steps of 1/96
    assert len(path) >= 2  # the search took at least one step and then stopped or ran out
    # Resuming recomputes nothing: every set is in the store.
    calls = []
    again = eliminate.set_scorer(inputs, results=results, protocol="t")
    assert elim.greedy(options, lambda s: calls.append(len(s)) or again(s), baseline=baseline,
                       max_drop=0.5) == path
    rows = results.load()
    assert len(rows) == 1 + sum(len(r["scores"]) for r in path)
    # A crash cut the store's last row: it is set aside with a warning, recomputed, and the search is unchanged.
    whole = results.path.read_bytes()
    results.path.write_bytes(whole[:-300])
    with pytest.warns(RuntimeWarning, match="did not parse"):
        assert elim.greedy(options, again, baseline=baseline, max_drop=0.5) == path
    aside = results.path.with_name("results.jsonl.torn-1")
    assert whole[:-300].endswith(aside.read_bytes()) and len(results.load()) == len(rows)


def test_greedy_on_literal_scores_stops_at_the_largest_set_within_the_drop():
    a, b, c = (elim.Choice(u, u + ".conv2") for u in ("u1", "u2", "u3"))
    table = {frozenset(): 1.0, frozenset("a"): 0.99, frozenset("b"): 0.995, frozenset("c"): 0.9,
             frozenset("ab"): 0.985, frozenset("bc"): 0.9, frozenset("abc"): 0.8}
    names = {a: "a", b: "b", c: "c"}
    score = lambda sets: [table[frozenset(names[x] for x in s)] for s in sets]  # noqa: E731
    path = elim.greedy([a, b, c], score, baseline=1.0, max_drop=0.02)
    assert [r["added"] for r in path] == [b, a, c]
    assert elim.chosen(path) == (b, a)
    assert not path[-1]["accepted"] and path[-1]["drop"] == pytest.approx(0.2)
    assert set(elim.one_shot(path, baseline=1.0, max_drop=0.02)) == {a, b}
    # A drop of exactly the margin is kept although 1.0 - 0.99 is 0.010000000000000009 in floats.
    assert elim.greedy([a], lambda sets: [0.99], baseline=1.0, max_drop=0.01)[0]["accepted"]
    # alone: b 0.995, a 0.99, c 0.9 -> the two smallest drops are b and a, the three all of them
    assert elim.k_smallest(path, 2) == (b, a) and set(elim.k_smallest(path, 3)) == {a, b, c}
    assert elim.k_smallest(path, 0) == () and elim.k_smallest([], 2) == ()
    with pytest.raises(ValueError, match="cannot pick 4 of 3 units"):
        elim.k_smallest(path, 4)
    draws = elim.random_sets([a, b, c], 2, draws=5, seed=0)
    assert all(len({x.unit for x in d}) == 2 for d in draws)
    assert draws == elim.random_sets([a, b, c], 2, draws=5, seed=0)


def test_slim_torch_export_matches_the_flax_slim_model(cifar_images):
    torch = pytest.importorskip("torch")
    from resnet_jax.interop import export

    model, variables = _model(stem="cifar")
    choices = (elim.Choice("layer1.2", "layer1.2.conv2"), elim.Choice("layer3.1", "layer3.1.conv1"))
    _, slim, slim_model, slim_vars = _masked_and_slim(model, variables, choices, cifar_images)
    layers = abl.catalogue(model, variables)
    config = {"model": {"name": "resnet34", "stem": "cifar", "eliminated": [list(p) for p in
                                                                         elim.eliminated(choices, layers)]}}
    arch = export.architecture(config, slim_vars)
    net = export.build(arch)
    net.load_state_dict(export.torch_state_dict(slim_vars), strict=True)
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(np.ascontiguousarray(cifar_images.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(logits, slim, rtol=0, atol=1e-4)
    assert sum(p.numel() for p in net.parameters()) == elim.count_params(slim_vars)


@pytest.mark.slow
def test_cli_eliminate_then_export_then_evaluate(tmp_path):
    """A tiny trained run: search on validation, slim run with a fine-tuning epoch, export, evaluate the slim run."""
    run = tmp_path / "run"
    assert run_cli("train", "--config", "synthetic-tiny", "--workdir", str(run)).returncode == 0
    out = tmp_path / "slim"
    r = run_cli("eliminate", "--workdir", str(run), "--out", str(out), "--max-drop", "0.05",
                "--finetune-epochs", "1", "--random-draws", "3")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "elimination" / "summary.json").read_text())
    assert summary["slim"]["test"] == summary["slim"]["test_masked"]
    assert summary["split_chose_units"] == "val" and summary["finetuned"]["epochs"] == 1
    assert len(summary["random"]) == (3 if summary["units"] else 0)
    for i, draw in enumerate(summary["random"]):  # fine-tuned like the slim model, each in its own run
        tuned = json.loads((out / "random" / f"draw-{i}" / "evaluation.json").read_text())
        assert draw["finetuned"] == pytest.approx(tuned["test_accuracy"], abs=1e-6)
    config = json.loads((out / "config.json").read_text())
    assert [u for u, _ in config["model"]["eliminated"]] == summary["units"]
    assert (out / "elimination" / "path.csv").is_file() and (out / "elimination" / "path.png").is_file()
    again = run_cli("eliminate", "--workdir", str(run), "--out", str(out), "--max-drop", "0.2")
    assert again.returncode == 2 and "other settings" in again.stderr
    e = run_cli("evaluate", "--workdir", str(out))
    assert e.returncode == 0, e.stderr
    a = run_cli("ablate", "--workdir", str(out), "--protocol", "all")
    assert a.returncode == 0, a.stderr
    # Eliminating again from the slim run keeps the earlier eliminations.
    more = tmp_path / "slimmer"
    c = run_cli("eliminate", "--workdir", str(out), "--out", str(more), "--max-drop", "0.5", "--random-draws", "0")
    assert c.returncode == 0, c.stderr
    chained = json.loads((more / "config.json").read_text())["model"]["eliminated"]
    assert chained[:len(config["model"]["eliminated"])] == config["model"]["eliminated"]
    assert run_cli("evaluate", "--workdir", str(more)).returncode == 0
    x = run_cli("export-torch", "--workdir", str(out), "--out", str(tmp_path / "torch"))
    assert x.returncode == 2 and "no torchvision counterpart for model 'resnet_tiny'" in x.stderr
    result = comparison.compare(run, out, batch=16, repeats=1, steps=1, log=lambda s: None)
    names = [r["name"] for r in result["rows"]]
    assert names[0] == "resnet_tiny (full)"
    # the row names the checkpoint it shows: fine-tuned, or step 0 when fine-tuning did not improve validation
    tuned = summary["finetuned"]
    assert names[2].startswith("slim, fine-tuned" if tuned["step"] else "slim, fine-tuning 1 epoch(s) did not improve")
    assert tuned["kept"].startswith(f"step {tuned['step']}")
    full, slim = result["rows"][0], result["rows"][1]
    assert (slim["params"] < full["params"]) == bool(summary["units"])
    assert all(r["eval_images_per_s"] > 0 and r["train_images_per_s"] > 0 for r in result["rows"])
    assert comparison.write_comparison(out, result).is_file()
    paired = result["paired_vs_slim"]  # slim minus each other model, on the same test images
    smallest = ["k-smallest"] if summary["units"] else []  # the k units with the smallest drops alone, together
    assert set(paired) == {"full", *smallest, *(f"random-{i}" for i in range(len(summary["random"])))}
    assert len(summary["k_smallest"]["choices"]) == len(summary["units"])
    assert any(n.startswith(f"the {len(summary['units'])} smallest single drops") for n in names) == bool(smallest)
    assert any("fine-tuned 1 epoch(s) (3 draws, mean)" in n for n in names) == bool(summary["units"])
    assert all(c["comparisons"] == len(paired) and c["low"] <= c["difference"] <= c["high"] for c in paired.values())
    expected = summary["finetuned"]["test"] - summary["full"]["test"]  # independent: the runs' own test scores
    assert paired["full"]["difference"] == pytest.approx(expected, abs=1e-6)
    assert "slim minus full" in comparison.format_comparison(result)
