"""The accelerator check and the benchmarks' device handling, on this machine (no GPU needed)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import accelerator_summary  # noqa: E402
import torch_rows  # noqa: E402


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
