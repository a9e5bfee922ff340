"""The main job: every stage on tiny data, resumable, one self-contained report."""

import base64
import json
import re
import shutil
import subprocess

import pytest

from resnet_jax import study_report
from tests.conftest import SHARED_DATA, run_cli


def test_findings_thresholds_on_literal_rows():
    rows = [
        {"mask": "conv1", "delta": -0.30, "ci_high": 0.40, "baseline": 0.70},  # non-trivial
        {"mask": "layer1.0.conv1", "delta": -0.06, "ci_high": 0.71, "baseline": 0.70},  # interval reaches baseline
        {"mask": "layer4.1.conv2", "delta": -0.005, "ci_high": 0.71, "baseline": 0.70},  # trivial
        {"mask": "layer4.1.conv1", "delta": 0.02, "ci_high": 0.75, "baseline": 0.70},  # neither
    ]
    assert study_report.classify_layers(rows) == {"non_trivial": ["conv1"], "trivial": ["layer4.1.conv2"]}
    means = study_report.stage_means(rows)
    assert means["stem"] == pytest.approx(-0.30) and means["layer4"] == pytest.approx(0.0075)


def test_unknown_preset_and_stage_are_clear_errors(tmp_path):
    bad = run_cli("reproduce", "--preset", "smoke", "--workdir", str(tmp_path), "--only", "cifar-trian")
    assert bad.returncode == 2 and "cifar-train" in bad.stderr


def test_smoke_preset_runs_every_stage_and_resumes(tmp_path):
    for name in ("cifar10", "mnist", "acdc_lv_myo"):
        if not (SHARED_DATA / name).is_dir():
            pytest.skip(f"shared dataset {name} not present")
    args = ("reproduce", "--preset", "smoke", "--workdir", str(tmp_path), "--data-root", str(SHARED_DATA))
    first = run_cli(*args, timeout=1200)
    assert first.returncode == 0, first.stderr[-4000:]
    stages = json.loads((tmp_path / "stages.json").read_text())
    assert set(stages) == {"cifar-train", "cifar-ablate", "acdc-train", "acdc-ablate", "skip-study", "verify",
                           "report"}
    page = (tmp_path / "report" / "index.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 6
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Findings" in md and "Study B" in md and "95 % CI" in md
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (tmp_path / "report" / link).is_file()
    again = run_cli(*args, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.count("done earlier, skipped") == 6
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:  # every figure decoded and laid out by a real browser
        shot = tmp_path / "shot.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                        "--window-size=1200,8000", (tmp_path / "report" / "index.html").as_uri()],
                       capture_output=True, timeout=120)
        assert shot.is_file() and shot.stat().st_size > 10_000
