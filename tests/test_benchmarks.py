"""The accelerator check and the benchmarks' device handling, on this machine (no GPU needed)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import accelerator_summary  # noqa: E402
import record  # noqa: E402
import torch_rows  # noqa: E402

from resnet_jax.reporting import readme_results  # noqa: E402


def test_targets_are_the_ratios_the_speed_issue_states():
    throughput = {"rows": [{"framework": "jax conv_impl=xla", "eval_img_s": 200_000.0},
                           {"framework": "torchvision fp32", "eval_img_s": 50_000.0}]}
    sweep = {"ratio_engine_vs_jax_loop": 0.3, "ideal_mac_ratio": 0.5, "n_masks": 40, "n_examples": 10_000,
             "seconds": {"engine, 2nd call": 1.5}}
    acdc = {"baseline": {"masks": 1, "seconds": 2.0}, "single": {"masks": 36, "seconds": 30.0}}
    out = accelerator_summary.targets(throughput, sweep, acdc)
    assert out["arithmetic_seconds"] == pytest.approx(0.5 * 40 * 10_000 / 200_000)  # 1.0 s at the JAX eval rate
    assert out["engine_2nd_call_vs_arithmetic"] == pytest.approx(1.5)
    assert out["engine_incl_compile_vs_naive_loop"] == 0.3
    assert (out["segmentation_sweep_seconds"], out["segmentation_sweep_masks"]) == (32.0, 37)
    assert accelerator_summary.targets(None, None, {}) == {}


def test_summary_reads_steps_and_runs(tmp_path):
    (tmp_path / "steps.jsonl").write_text(json.dumps({"step": "throughput", "rc": 124, "milliseconds": 60000}) + "\n")
    run = tmp_path / "runs" / "cifar10"
    (run / "ablation").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "images_per_second": 123.0}) + "\n")
    (run / "ablation" / "single.json").write_text(json.dumps({"rows": [{}, {}], "seconds": 4.0}))
    summary = accelerator_summary.summarise(tmp_path)
    assert summary["steps"][0]["rc"] == 124 and summary["device_kind"]
    assert summary["runs"]["cifar10"]["sweeps"] == {"single": {"masks": 2, "seconds": 4.0}}
    assert summary["runs"]["cifar10"]["last_epoch"]["images_per_second"] == 123.0


def test_accelerator_check_without_data_is_a_clear_error(tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts" / "accelerator_check.sh")], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "DATA_ROOT": str(tmp_path), "OUT": str(tmp_path / "o")})
    assert result.returncode == 2 and "set DATA_ROOT" in result.stderr


@pytest.mark.torch
def test_torch_rows_fall_back_to_the_cpu_with_one_fp32_row():
    torch = pytest.importorskip("torch")
    dev = torch_rows.device()
    names = [v["name"] for v in torch_rows.variants(dev)]
    if dev.type == "cuda":
        assert names == ["fp32", "bf16 autocast", "fp32 torch.compile"]
    else:
        assert names == ["fp32"] and torch_rows.describe(dev).startswith("cpu")
        assert "fp32 torch.compile" in [v["name"] for v in torch_rows.variants(dev, compile_on_cpu=True)]
    net, autocast = torch_rows.prepare(torch.nn.Conv2d(3, 4, 3), dev, torch_rows.variants(dev)[0])
    with autocast():
        assert net(torch.zeros(1, 3, 8, 8, device=dev)).shape == (1, 4, 6, 6)


WRITES = "import sys, json; out = sys.argv[sys.argv.index('--out') + 1]; json.dump({'value': float(sys.argv[1])}, open(out, 'w'))"


def test_record_keeps_each_finished_benchmark_with_its_command_and_drops_a_failed_ones_old_numbers(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text(WRITES)
    fails = tmp_path / "fails.py"
    fails.write_text("raise SystemExit(3)")
    out = tmp_path / "results"
    assert record.record(out, {"a": [str(script), "1.5"], "b": [str(script), "2"]}, command="first") == 0
    assert json.loads((out / "b.json").read_text()) == {"value": 2.0}
    # b again, now failing: its old numbers go, a's stay with their provenance
    assert record.record(out, {"b": [str(fails)]}, command="second") == 3
    kept = json.loads((out / "provenance.json").read_text())
    assert not (out / "b.json").exists() and sorted(kept["benchmarks"]) == ["a"]
    assert kept["benchmarks"]["a"]["command"] == f"python {script} 1.5" and kept["benchmarks"]["a"]["machine"]["cores"] >= 1
    assert kept["benchmarks"]["a"]["code"]["version"]


def _provenance(folder, *names):
    entry = {"command": "python benchmarks/x.py", "seconds": 12.3, "finished": "2026-12-05T05:00:00+00:00",
             "code": {"version": "0.1.0", "commit": "0123456789abcdef", "dirty": False}}
    machine = {"cpu": "Test CPU", "cores": 2, "backend": "cpu", "device_count": 1, "device_kind": "cpu"}
    (folder / "provenance.json").write_text(json.dumps({"benchmarks": {n: {**entry, "machine": machine} for n in names}}))


def test_benchmark_blocks_render_the_stored_numbers_and_their_provenance(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    _provenance(folder, "throughput", "ablation_sweep")
    (folder / "throughput.json").write_text(json.dumps({"rows": [
        {"framework": "jax conv_impl=auto", "batch": 128, "train_img_s": 300.0, "eval_img_s": 1600.0},
        {"framework": "torchvision fp32", "batch": 128, "train_img_s": 400.0, "eval_img_s": 1500.0}],
        "jax_device_kind": "cpu", "torch_device": "cpu (x86_64, 2 threads)"}))
    (folder / "ablation_sweep.json").write_text(json.dumps({
        "n_examples": 1000, "n_masks": 40, "batch_size": 128, "macs_per_image": 75e6, "matmul_peak_gflops": 300.0,
        "seconds": {"naive JAX loop": 40.0, "resnet-jax engine": 10.0}, "ratio_engine_vs_jax_loop": 0.25,
        "ratio_engine_vs_torch_loop": None, "ratio_engine_2nd_call_vs_jax_loop": 0.2, "accuracies_identical": True,
        "accuracies_identical_jax": True, "accuracies_identical_torch": True,
        "engine_scratch_mb": 146.0, "peak_rss_mb": 2700.0, "ideal_mac_ratio": 0.471}))
    text = ("<!-- results: benchmarks/throughput -->\n<!-- /results -->\n"
            "<!-- results: benchmarks/sweep -->\n<!-- /results -->\n")
    out = readme_results.render(text, tmp_path)
    assert "| resnet-jax (`conv_impl=auto`) | 128 | 300.0 | 1600.0 | 0.75x |" in out  # 300 / 400
    # 2 * 75e6 MACs * 1000 images * 40 masks = 6,000 GFLOP: 150 GFLOP/s in 40 s, 50 % of the 300 peak
    assert "| (a) naive JAX loop (one jitted masked forward per mask) | 40.0 | 1.000 | 150.0 | 50 % |" in out
    assert "| (b) resnet-jax engine (gates, shared prefixes; compilation included) | 10.0 | 4.000 | 600.0 | 200 % |" in out
    assert "b/a (engine / naive JAX loop) = 0.250;" in out and "b/c" not in out
    assert "Accuracies of (a) and both (b) rows identical (other" in out  # no PyTorch loop ran
    assert "JAX on cpu, PyTorch on cpu (x86_64, 2 threads). Measured" in out
    assert out.count("Measured 2026-12-05 on Test CPU, 2 cores, backend cpu (1 cpu device(s)) by resnet-jax 0.1.0 "
                     "at commit 0123456789: `python benchmarks/x.py`, 12 s.") == 2
    sweep = json.loads((folder / "ablation_sweep.json").read_text())  # a PyTorch loop that disagreed is said so
    sweep["seconds"]["PyTorch loop"] = 20.0
    (folder / "ablation_sweep.json").write_text(json.dumps({**sweep, "accuracies_identical_torch": False}))
    out = readme_results.render(text, tmp_path)
    assert "| (c) PyTorch loop (state_dict edits, inference mode, channels_last) | 20.0 | 2.000 |" in out
    assert "Accuracies of (a) and both (b) rows identical; of (c) to (b)'s NOT identical (other" in out
    _provenance(folder, "throughput")  # the sweep's JSON without its provenance entry is refused
    with pytest.raises(readme_results.ResultsError, match="does not record ablation_sweep"):
        readme_results.render(text, tmp_path)


def test_conv_and_decision_rule_blocks_group_identical_convs_and_show_every_setting(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    _provenance(folder, "conv_kernels", "decision_rule")
    conv = lambda name, auto, ms: {"layer": name, "in": [2, 2], "out": [2, 2], "kernel": 3, "stride": 1,  # noqa: E731
                                   "channels": [256, 256], "ms": ms, "auto": auto, "best": "dense"}
    times = {"xla": 124.5, "patches": 5.8, "dense": 3.2}
    (folder / "conv_kernels.json").write_text(json.dumps({
        "batch_size": 256, "layers": [conv("layer4.0.conv2", "dense", times), conv("layer4.1.conv1", "patches", times)],
        "totals_ms": {"xla": 249.0, "patches": 11.6, "dense": 6.4, "auto": 9.0}}))
    row = {"metric": "accuracy", "m": 36, "effects": "-", "true_drop": "margin", "families": 1800, "fwer": 0.041,
           "fwer_se": 0.005, "misses": 0.041, "misses_se": 0.005, "share_non-trivial": 0.01, "share_trivial": 0.02,
           "share_improves": 0.0, "share_undecided": 0.97}
    skewed = {**row, "metric": "dice", "effects": "skewed", "families": 2000, "fwer": 0.9, "fwer_se": 0.0067}
    zero = {**row, "metric": "dice", "effects": "normal", "true_drop": "0", "fwer": 0.0, "misses": 0.06,
            "misses_se": 0.0053}
    (folder / "decision_rule.json").write_text(json.dumps({
        "rows": [row, skewed, zero, {**row, "m": 630, "families": 1, "fwer": 0.0, "fwer_se": float("nan"),
                                              "misses_se": float("nan")}],
        "alpha": 0.05, "margin": 0.01, "dice_630_resamples": 503999, "dice_630_seconds": 31.0}))
    text = "<!-- results: benchmarks/conv-kernels -->\n<!-- /results -->\n<!-- results: benchmarks/decision-rule -->\n<!-- /results -->\n"
    out = readme_results.render(text, tmp_path)
    assert "| `layer4.0.conv2` and 1 more | 2x2 -> 2x2 | 3x3 / 1 | 256 -> 256 | 124.50 | 5.80 | 3.20 | dense | dense |" in out
    assert "`auto` / XLA = 0.036); `auto` runs the fastest form for 1 of 2 convs." in out  # 9.0 / 249.0
    assert "| accuracy | 36 | - | margin | 1,800 | 0.041 +- 0.005 | 0.041 +- 0.005 | 0.010 | 0.020 | 0.000 | 0.970 |" in out
    assert "| accuracy | 630 | - | margin | 1 | 0.000 | 0.041 | " in out  # one family: no standard error
    assert ("margin (0.01), against alpha 0.05 (estimate +- standard error): accuracy, 36 masks 0.041 +- 0.005 (at or "
            "below alpha); dice, 36 masks (skewed) 0.900 +- 0.007 (above alpha by more than 2 standard errors).") in out
    assert ("false significant change (an interval without 0): dice, 36 masks (normal) 0.060 +- 0.005 (above alpha, "
            "within 2 standard errors).") in out
    assert "503,999 resamples" in out
