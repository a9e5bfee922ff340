"""The main job: every stage on tiny data, resumable, one self-contained report."""

import base64
import json
import re
import shutil
import subprocess

import pytest

from resnet_jax.reporting import published, readme_results, study_report
from tests.conftest import SHARED_DATA, run_cli
from tests.studies.test_skip import check_outputs


def test_findings_read_the_decisions_and_the_paper_rows_line_up():
    rows = [
        {"mask": "conv1", "delta": -0.30, "decision": "non-trivial"},
        {"mask": "layer4.1.conv2", "delta": -0.005, "decision": "trivial"},
        {"mask": "layer4.1.conv1", "delta": 0.02, "decision": "undecided"},
        {"mask": "baseline", "delta": 0.0},
    ]
    assert study_report.classify_layers(rows) == {"non-trivial": ["conv1"], "trivial": ["layer4.1.conv2"],
                                                  "improves": [], "undecided": ["layer4.1.conv1"]}
    means = study_report.stage_means(rows[:3])
    assert means["stem"] == pytest.approx(-0.30) and means["layer4"] == pytest.approx(0.0075)
    seg = {"baseline": [[{"mask": "baseline", "value": 0.8, "dice_myo": 0.7}]],
           "shortcut": [[{"mask": "encoder.layer3.0.downsample", "value": 0.2, "dice_myo": 0.1}],
                        [{"mask": "encoder.layer3.0.downsample", "value": 0.4, "dice_myo": 0.3}]]}
    table = published.beside_ours("segmentation", seg)
    assert table[0] == ["baseline", "-", "0.87", "0.700"]
    assert ["shortcut", "3", "0.00", "0.200 [0.100, 0.300] (2 seeds)"] in table
    assert ["stage-except-decomposition", "1", "0.82", "-"] in table


def test_unknown_preset_and_stage_are_clear_errors(tmp_path):
    bad = run_cli("reproduce", "--preset", "smoke", "--workdir", str(tmp_path), "--only", "cifar-trian")
    assert bad.returncode == 2 and "cifar-train" in bad.stderr


def test_every_reproduce_preset_names_valid_presets_of_each_task():
    from resnet_jax import configs
    from resnet_jax.studies import reproduce

    tasks = {"cifar": "classification", "acdc": "segmentation", "skip": "skip"}
    for name, preset in reproduce.PRESETS.items():
        for key, task in tasks.items():
            config = configs.load_config(preset[key])  # validates every value against its family's schema
            assert config["task"] == task, (name, key)
    paper = configs.load_config(reproduce.PRESETS["paper-cpu"]["cifar"])
    assert paper["data"]["max_test_examples"] is None and paper["data"]["val_examples"] == 5000  # the full test split
    assert paper["train"]["warmup_epochs"] / paper["train"]["epochs"] == pytest.approx(0.3)  # one-cycle's 30 % rise


def test_every_seed_gets_its_own_run_slim_network_controls_and_study_b(tmp_path, monkeypatch):
    """The seed loop of the per-seed stages, the work itself replaced by recorders: seed k > 0 works in
    ``<name>-seed<k>`` with ``train.seed=k``, and each seed's controls train with that seed for the slim model's
    whole budget (the run's epochs plus fine-tuning), the slim architecture from that seed's own elimination."""
    from resnet_jax import files
    from resnet_jax.studies import comparison, eliminate, reproduce
    from resnet_jax.studies import skip as skip_study
    from resnet_jax.training import runs

    trained, eliminated, compared, studied = {}, [], [], {}

    def train(config, path, log):
        trained[path.name] = config
        files.write_json(path / "config.json", config)

    def eliminate_workdir(run, slim, settings, log, force_untrained):
        eliminated.append((run.name, slim.name))
        units = [[f"layer4.{len(eliminated)}", "channel"]]  # each seed's own choice
        config = json.loads((run / "config.json").read_text())
        files.write_json(slim / "config.json", {**config, "model": {**config["model"], "eliminated": units}})
        return {"units": [u for u, _ in units]}

    monkeypatch.setattr(runs, "train", train)
    monkeypatch.setattr(eliminate, "eliminate_workdir", eliminate_workdir)
    monkeypatch.setattr(eliminate, "format_summary", lambda summary: "")
    monkeypatch.setattr(comparison, "compare", lambda run, slim, trained, repeats, log: compared.append(
        (run.name, slim.name, {k: v.name for k, v in trained.items()})) or {})
    monkeypatch.setattr(comparison, "format_comparison", lambda result: "")
    monkeypatch.setattr(comparison, "write_comparison", lambda slim, result: None)
    monkeypatch.setattr(skip_study, "run_study", lambda config, path, log: studied.update({path.name: config}))
    reproduce.reproduce("smoke", tmp_path, only=["cifar-train", "cifar-eliminate", "skip-study"], seeds=2,
                        log=lambda s: None)

    seeds = {name: c["train"]["seed"] for name, c in trained.items()}
    assert seeds == {"cifar10-resnet34": 0, "cifar10-resnet34-seed1": 1, "cifar10-resnet18": 0,
                     "cifar10-resnet18-seed1": 1, "cifar10-resnet34-slim-scratch": 0,
                     "cifar10-resnet34-slim-scratch-seed1": 1}
    assert eliminated == [("cifar10-resnet34", "cifar10-resnet34-slim"),
                          ("cifar10-resnet34-seed1", "cifar10-resnet34-slim-seed1")]
    for k, suffix in enumerate(("", "-seed1")):
        assert trained[f"cifar10-resnet18{suffix}"]["model"]["name"] == "resnet18"
        scratch = trained[f"cifar10-resnet34-slim-scratch{suffix}"]
        assert scratch["model"]["eliminated"] == [[f"layer4.{k + 1}", "channel"]]  # this seed's slim architecture
        assert {c["train"]["epochs"] for c in (scratch, trained[f"cifar10-resnet18{suffix}"])} == {1 + 1}
        assert compared[k] == (f"cifar10-resnet34{suffix}", f"cifar10-resnet34-slim{suffix}",
                               {"resnet18": f"cifar10-resnet18{suffix}", "scratch": f"cifar10-resnet34-slim-scratch{suffix}"})
    assert {name: c["train"]["seed"] for name, c in studied.items()} == {"mnist-skip": 0, "mnist-skip-seed1": 1}


def test_force_new_with_the_same_preset_discards_the_chosen_stages_outputs_and_runs_them_again(tmp_path, monkeypatch):
    """``--force-new`` on the run the workdir already holds: the chosen stages' declared outputs (and those of the
    stages made from them) go, the stages run again; undeclared files and the other stages' outputs stay."""
    from resnet_jax import files, ledger
    from resnet_jax.studies import reproduce
    from resnet_jax.studies import skip as skip_study
    from resnet_jax.training import runs

    calls = []

    def train(config, path, log):
        calls.append(path.name)
        assert not (path / "stale.txt").exists()  # discarded before it runs again
        files.write_json(path / "config.json", config)
        (path / "stale.txt").write_text(f"call {len(calls)}")

    monkeypatch.setattr(runs, "train", train)
    monkeypatch.setattr(skip_study, "run_study", lambda config, path, log: files.write_json(path / "study.json", {}))
    lines = []
    reproduce.reproduce("smoke", tmp_path, only=["cifar-train", "skip-study"], log=lines.append)
    (tmp_path / "notes.txt").write_text("mine")  # never declared by any stage
    ledger.finish(tmp_path, "cifar-ablate", {}, seconds=0)  # a stage made from the run: forgotten with it
    reproduce.reproduce("smoke", tmp_path, only=["cifar-train"], force_new=True, log=lines.append)
    assert calls == ["cifar10-resnet34", "cifar10-resnet34"], lines
    assert (tmp_path / "cifar10-resnet34" / "stale.txt").read_text() == "call 2"
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "mnist-skip" / "study.json").is_file()
    assert any("discarded" in line and "cifar10-resnet34" in line for line in lines), lines
    record = json.loads((tmp_path / "stages.json").read_text())
    assert record["stages"]["skip-study"]["finished"] and record["stages"]["cifar-train"]["finished"]
    assert "cifar-ablate" not in record["stages"]
    reproduce.reproduce("smoke", tmp_path, only=["cifar-train", "skip-study"], force_new=True, log=lines.append)
    assert calls == ["cifar10-resnet34"] * 3 and (tmp_path / "mnist-skip").is_dir()
    assert not any("done earlier, skipped" in line for line in lines), lines


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke-preset run of the main job with one seed, shared by the tests that read its report (a second
    seed is added to the classification run by the test below, cheaply; every seed's elimination and Study B
    are the seed loop's, tested above)."""
    for name in ("cifar10", "mnist", "acdc_lv_myo"):
        if not (SHARED_DATA / name).is_dir():
            pytest.skip(f"shared dataset {name} not present")
    workdir = tmp_path_factory.mktemp("reproduce")
    args = ("reproduce", "--preset", "smoke", "--workdir", str(workdir), "--data-root", str(SHARED_DATA))
    first = run_cli(*args, timeout=3600, own_process=True)  # a hang guard: on a cold compile cache it took 1,100 s
    assert first.returncode == 0, first.stderr[-4000:]
    return workdir, args


def test_smoke_preset_runs_every_stage_resumes_and_adds_a_seed(smoke_run):
    workdir, args = smoke_run
    stages = json.loads((workdir / "stages.json").read_text())["stages"]
    assert set(stages) == {"cifar-train", "cifar-ablate", "cifar-pairs", "cifar-eliminate", "acdc-train", "acdc-ablate",
                           "acdc-eliminate", "readings", "skip-study", "verify", "report"}
    page = (workdir / "report" / "index.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 6
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    md = (workdir / "report" / "report.md").read_text()
    assert "## Findings" in md and "Study B" in md and "95 % CI" in md
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (workdir / "report" / link).is_file()
    trained = json.loads((workdir / "cifar10-resnet34" / "metrics.jsonl").read_text().splitlines()[-1])
    assert trained["step"] == 4 and 0.0 <= trained["val_accuracy"] <= 1.0  # (160 - 32 validation) / batch 32
    assert "The paper beside ours" in md and "Pairwise interactions" in md
    assert "open readings" in md and "BatchNorm on batch statistics, single" in md and "Identity shortcuts cut" in md
    assert json.loads((workdir / "cifar10-resnet34" / "ablation" / "pairs.json").read_text())["rows"]
    assert "a slim network from the trivial units" in md and "resnet18, same recipe, 2 epochs" in md  # 1 + 1 fine-tuning
    assert "slim architecture from scratch, 2 epochs" in md and "smallest single drops, removed together" in md
    skip = check_outputs(workdir / "mnist-skip", 256)  # Study B on the shared MNIST digits
    assert skip["cnn1"]["test"]["accuracy"] > 0.3  # one epoch on 512 digits; chance is 0.1
    control = json.loads((workdir / "cifar10-resnet18" / "config.json").read_text())["train"]
    assert control["seed"] == 0 and control["epochs"] == 2  # the control: the run's seed, the slim model's budget
    for slim in ("cifar10-resnet34-slim", "acdc-pspnet34-slim"):
        summary = json.loads((workdir / slim / "elimination" / "summary.json").read_text())
        assert summary["slim"]["test"] == summary["slim"]["test_masked"]  # exact, on every task
        assert (workdir / slim / "elimination" / "comparison.json").is_file()
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.count("done earlier, skipped") == 10  # every stage but the report, which always runs
    # A rerun with more seeds adds the missing seed (here of the classification run only) and combines the tables.
    out = workdir.parent / f"{workdir.name}-results"
    more = run_cli(*args, "--seeds", "2", "--only", "cifar-train,cifar-ablate,report", "--results", str(out))
    assert more.returncode == 0, more.stderr[-4000:]
    assert (workdir / "cifar10-resnet34-seed1" / "ablation" / "single.json").is_file()
    assert json.loads((workdir / "cifar10-resnet34-seed1" / "config.json").read_text())["train"]["seed"] == 1
    combined = json.loads((workdir / "cifar10-resnet34-seeds" / "single.json").read_text())
    assert all(r["n_seeds"] == 2 and r["value_min"] <= r["value_mean"] <= r["value_max"] for r in combined["rows"])
    assert "2 seeds" in (workdir / "report" / "report.md").read_text()
    record = json.loads((out / "provenance.json").read_text())  # the committed-results folder of this run
    assert set(record["stages"]) == set(stages) and record["preset"] == "smoke" and record["seeds"] == 2
    assert record["command"].startswith("resnet-jax reproduce --preset smoke") and record["datasets"]
    table = "cifar10-resnet34-seeds/single.csv"
    assert (out / table).read_bytes() == (workdir / table).read_bytes() and not list(out.rglob("checkpoints"))
    paper = readme_results.paper_table(out)
    assert "CIFAR-10, test accuracy" in paper and "myocardium Dice" in paper and "batch statistics" in paper


# Run in the page once it has loaded: one line per figure with the size the browser decoded it to, and the width
# of the widest table. The element's id is assembled at run time, so the script's own text never matches it.
_PROBE = """<script>window.addEventListener("load", () => {
  const sizes = [...document.images].map(i => `${i.complete}:${i.naturalWidth}x${i.naturalHeight}`);
  const widest = Math.max(0, ...[...document.querySelectorAll("table")].map(t => t.getBoundingClientRect().width));
  const out = document.createElement("pre");
  out.id = ["probe", "result"].join("-");
  out.textContent = `${Math.ceil(widest)} ${sizes.join(" ")}`;
  document.body.appendChild(out);
});</script>"""


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def probe_page(html: str, tmp_path) -> tuple[int, list[str]]:
    """The widest table's width in a 1,280-px window and each figure's decoded size, as Chromium renders them."""
    probed = tmp_path / "index.html"
    probed.write_text(html.replace("</body>", _PROBE + "</body>"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                          "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe-result">([^<]*)</pre>', dom)
    assert found, f"the page's load handler did not run; Chromium printed: {dom[-2000:]}"
    widest, *sizes = found.group(1).split()
    return int(widest), sizes


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_the_probe_reads_what_the_browser_renders(tmp_path):
    """The probe itself against a literal page: two images (one broken) and a table wider than the window."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), "red").save(buffer, format="PNG")
    png = base64.b64encode(buffer.getvalue()).decode()
    page = (f'<html><body><img src="data:image/png;base64,{png}"><img src="missing.png">'
            f'<table style="width:2000px"><tr><td>x</td></tr></table></body></html>')
    widest, sizes = probe_page(page, tmp_path)
    assert widest == 2000 and sizes[0] == "true:3x2" and sizes[1].endswith(":0x0")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_report_figures_render_in_chromium(smoke_run, tmp_path):
    workdir, _ = smoke_run
    page = (workdir / "report" / "index.html").read_text()
    n_figures = len(re.findall(r"<img\b", page))
    widest, sizes = probe_page(page, tmp_path)
    assert len(sizes) == n_figures >= 6
    assert all(re.fullmatch(r"true:[1-9]\d*x[1-9]\d*", s) for s in sizes), sizes  # loaded, non-empty
    assert widest <= 1280, f"a table is {widest} px wide in a 1,280-px window"


def test_report_prints_verify_floats_to_three_significant_digits():
    assert [study_report._short(c) for c in ("0.000274658203125", "0.748", "1000", "True", "zero-kernel")] == [
        "0.000275", "0.748", "1000", "True", "zero-kernel"]


def test_data_root_is_checked_up_front_and_compared_by_resolved_path(tmp_path):
    from resnet_jax.studies import reproduce

    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    with pytest.raises(reproduce.StageError, match=r"lacks acdc_lv_myo/, mnist/"):
        reproduce.reproduce("smoke", tmp_path / "w", data_root=root, only=["cifar-train", "acdc-train", "skip-study"],
                            log=lambda s: None)
    assert not (tmp_path / "w" / "stages.json").exists()  # refused before claiming the workdir
    work = tmp_path / "w2"
    work.mkdir()
    typed = str(root / ".." / "data")  # an older record kept the root as typed
    (work / "stages.json").write_text(json.dumps({"run": {"preset": "smoke", "data_root": typed}, "stages": {}}))
    reproduce._claim(work, {"preset": "smoke", "data_root": str(root.resolve())}, force_new=False)  # no refusal
    with pytest.raises(reproduce.StageError, match="holds a reproduce run"):
        reproduce._claim(work, {"preset": "cpu", "data_root": str(root.resolve())}, force_new=False)
