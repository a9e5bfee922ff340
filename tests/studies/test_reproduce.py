"""The main job: every stage on tiny data, resumable, one self-contained report."""

import base64
import json
import re

import pytest

from resnet_jax.ablation.statistics import P_TEST
from resnet_jax.reporting import figures, published, readme_results, study_report
from resnet_jax.studies import comparison
from tests.browser import CHROMIUM, probe_page
from tests.conftest import SHARED_DATA, run_cli, shared_dataset
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
    assert ["shortcut", "3", "0.00", "0.200 (range over 2 seeds: 0.100 to 0.300)"] in table
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

    def eliminate_workdir(run, slim, settings, data_dir, log, force_untrained):
        eliminated.append((run.name, slim.name))
        units = [[f"layer4.{len(eliminated)}", "channel"]]  # each seed's own choice
        config = json.loads((run / "config.json").read_text())
        files.write_json(slim / "config.json", {**config, "model": {**config["model"], "eliminated": units}})
        return {"units": [u for u, _ in units]}

    monkeypatch.setattr(runs, "train", train)
    monkeypatch.setattr(eliminate, "eliminate_workdir", eliminate_workdir)
    monkeypatch.setattr(eliminate, "format_summary", lambda summary: "")
    monkeypatch.setattr(comparison, "compare", lambda run, slim, trained, repeats, data_dir, log: compared.append(
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
        shared_dataset(name)  # skips, or under CI=true fails, when one is missing
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
        compared = json.loads((workdir / slim / "elimination" / "comparison.json").read_text())
        assert compared["repeats"] == 0 and not any("eval_images_per_s" in r for r in compared["rows"])  # not timed
    assert "Speeds not timed (the run asked for 0 rounds of timing)" in md
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.count("done earlier, skipped") == 10  # every stage but the report, which always runs
    # A rerun with more seeds adds the missing seed (here of the classification run only) and combines the tables.
    out = workdir.parent / f"{workdir.name}-results"
    more = run_cli(*args, "--seeds", "2", "--only", "cifar-train,cifar-ablate,report", "--results", str(out),
                   "--allow-dirty")  # a checkout being edited; tests/reporting/test_provenance.py tests the refusal
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
    probed = probe_page(page, tmp_path, width=390)
    assert probed["widest_table"] == 2000 and probed["scroll_width"] >= 2000 and probed["font_px"] == 16
    assert probed["figures"][0] == "true:3x2" and probed["figures"][1].endswith(":0x0")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_report_figures_render_in_chromium(smoke_run, tmp_path):
    workdir, _ = smoke_run
    page = (workdir / "report" / "index.html").read_text()
    n_figures = len(re.findall(r"<img\b", page))
    wide = probe_page(page, tmp_path)
    assert len(wide["figures"]) == n_figures >= 6
    assert all(re.fullmatch(r"true:[1-9]\d*x[1-9]\d*", s) for s in wide["figures"]), wide  # loaded, non-empty
    assert wide["widest_table"] <= 1280, f"a table is {wide['widest_table']} px wide in a 1,280-px window"
    assert wide["scroll_width"] <= 1280
    phone = probe_page(page, tmp_path, width=390)
    assert phone["scroll_width"] <= 392, f"the page is {phone['scroll_width']} px wide on a 390-px screen"
    assert phone["font_px"] >= 12
    for text in (page, (workdir / "report" / "report.md").read_text()):
        assert str(workdir) not in text and str(SHARED_DATA.resolve()) not in text


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


def test_the_html_report_renders_its_inline_markdown_and_escapes_the_rest():
    page = study_report._html([("p", "Made by `reproduce --x <y>`: **two** seeds, see [the paper](https://arxiv.org/abs/2009.09938); "
                                     "[bad](javascript:alert(1)) <b>raw</b>"),
                               ("list", ["**non-trivial** for `conv1`"]), ("table", ["**mask**"], [["`layer1.0`"]])],
                              "t")
    assert "<code>reproduce --x &lt;y&gt;</code>" in page and "<strong>two</strong>" in page
    assert '<a href="https://arxiv.org/abs/2009.09938">the paper</a>' in page
    assert "<li><strong>non-trivial</strong> for <code>conv1</code></li>" in page
    assert "<th><strong>mask</strong></th>" in page and "<td><code>layer1.0</code></td>" in page
    assert "&lt;b&gt;raw&lt;/b&gt;" in page and 'href="javascript' not in page
    body = page.split("<body>")[1]
    assert "**" not in body and "`" not in body


def _phone_blocks() -> list[tuple]:
    """A report's widest forms: a table of long cells, a long preformatted line, a long unbroken word, a figure."""
    header = [f"column heading {i}" for i in range(12)]
    return [("h1", "resnet-jax"), ("p", "A paragraph of words. " * 20 + "layer4.2.downsample." * 6),
            ("table", header, [[f"0.{i}123456 [0.1, 0.2]" for i in range(12)]] * 3), ("pre", "x" * 400),
            ("list", ["a finding " * 30])]


def test_the_html_report_declares_a_phone_viewport_and_scrolls_wide_tables_in_their_own_box():
    page = study_report._html(_phone_blocks(), "t")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert re.search(r'<div class="scroll"><table>.*?</table></div>', page)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_the_html_report_fits_a_phone_and_a_desktop_in_chromium(tmp_path):
    page = study_report._html(_phone_blocks(), "t")
    phone = probe_page(page, tmp_path, width=390)
    assert phone["scroll_width"] <= 392, f"the page is {phone['scroll_width']} px wide on a 390-px screen"
    assert phone["font_px"] >= 12
    wide = probe_page(page, tmp_path)
    assert wide["scroll_width"] <= 1280 and wide["font_px"] >= 12


def test_the_report_prints_no_absolute_path_of_the_machine(tmp_path):
    import html

    workdir, data = tmp_path / "work", (tmp_path / "data").resolve()
    (workdir / "cifar10-resnet34").mkdir(parents=True)
    (workdir / "stages.json").write_text(json.dumps({"run": {"preset": "smoke", "data_root": str(data)},
                                                     "stages": {}}))
    config = {"data": {"data_dir": str(data / "cifar10"), "name": "cifar10"},
              "out": str(workdir / "cifar10-resnet34" / "checkpoints"), "model": {"name": "resnet34"}}
    (workdir / "cifar10-resnet34" / "config.json").write_text(json.dumps(config))
    study_report.write_study_report(workdir)
    for name in ("index.html", "report.md"):
        text = html.unescape((workdir / "report" / name).read_text())
        assert str(tmp_path) not in text, name
        assert "cifar10-resnet34/checkpoints" in text and '"data_dir": "cifar10"' in text


def test_the_pareto_plot_shows_a_model_that_shares_another_ones_point():
    """The slim model and its fine-tuned self share parameters and measured speed (and here accuracy): each model
    gets its own marker, outlined and smaller than the ones drawn before it, so a point under another still shows."""
    rows = [{"name": "resnet34 (full)", "value": 0.70, "params": 21e6, "eval_images_per_s": 700.0},
            {"name": "slim, 3 units removed", "value": 0.71, "params": 10e6, "eval_images_per_s": 880.0},
            {"name": "slim, fine-tuned 2 epoch(s)", "value": 0.71, "params": 10e6, "eval_images_per_s": 880.0},
            {"name": "random 3 units", "value": 0.70, "low": 0.69, "high": 0.72, "params": 15e6,
             "eval_images_per_s": 870.0}]
    fig = figures.pareto_figure(rows, metric="accuracy")
    for ax in fig.axes:
        assert [c.get_label() for c in ax.containers] == [r["name"] for r in rows]
        points = [c.lines[0] for c in ax.containers]  # each model's point (its error bar's data line)
        assert [tuple(line.get_xydata()[0]) for line in points][1:3] in ([(880.0, 0.71)] * 2, [(10.0, 0.71)] * 2)
        assert len({line.get_marker() for line in points}) == len(rows)
        sizes = [line.get_markersize() for line in points]
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(rows)
        assert all(line.get_markerfacecolor() == "none" for line in points)
        assert [line.get_zorder() for line in points] == sorted({line.get_zorder() for line in points})
    figures.pyplot().close(fig)


def test_a_comparison_never_timed_plots_parameters_only_and_its_report_says_not_timed(tmp_path):
    """A comparison asked for 0 rounds of timing (the smoke preset) holds no speeds: no speed panel, and every
    speed cell and ratio says "not timed" instead of failing on a missing key."""
    rows = [{"name": "resnet34 (full)", "value": 0.70, "params": 21e6, "conv_macs": 1e9,
             "ratios_vs_full": {"params": 1.0, "conv_macs": 1.0}},
            {"name": "slim, 3 units removed", "value": 0.71, "params": 10e6, "conv_macs": 5e8,
             "ratios_vs_full": {"params": 10 / 21, "conv_macs": 0.5}}]
    fig = figures.pareto_figure(rows, metric="accuracy")
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "parameters (M)"
    assert [tuple(c.lines[0].get_xydata()[0]) for c in fig.axes[0].containers] == [(21.0, 0.70), (10.0, 0.71)]
    figures.pyplot().close(fig)
    slim = tmp_path / "slim"
    (slim / "elimination").mkdir(parents=True)
    (slim / "elimination" / "comparison.json").write_text(json.dumps(
        {"metric": "accuracy", "device": "cpu", "batch": 16, "repeats": 0, "rows": rows}))
    block = readme_results._comparison(slim)
    assert "(accuracy; speeds not timed: 0 rounds of timing)" in block and block.count("not timed") == 1 + 2 * 4
    text = comparison.format_comparison({"metric": "accuracy", "rows": rows})
    assert text.count("not timed") == 2 * 2 + 2 * 2 + 1  # images/s and ratios per row; the slim row's words
    assert "0.476" in text and "0.500" in text  # the size ratios are still there


def _study_b(verdict: str, difference: float) -> dict:
    full = {"method": "full", "setting": None, "accuracy": 0.98, "ci_low": 0.97, "ci_high": 0.99,
            "mac_ratio_vs_cnn1": 1.0, "wall_ratio_vs_cnn1": 1.0, "meets_validation_target": True}
    point = {**full, "method": "early_exit", "label": "early exit (threshold on top softmax probability)",
             "setting": "threshold 0.8", "accuracy": 0.98 + difference,
             "mac_ratio_vs_cnn1": 0.5, "wall_ratio_vs_cnn1": 0.6,
             "vs_cnn1": {"difference": difference, "low": difference - 0.002, "high": difference + 0.002,
                         "p_value": 0.001, "p_test": P_TEST, "comparisons": 8, "alpha": 0.05,
                         "verdict": verdict}}
    return {"best": [full, point], "test": [], "tolerance": 0.005}


@pytest.mark.parametrize("verdict, difference, said", [
    ("worse", -0.004, "At 0.0040 below CNN-1's test accuracy (paired: worse) it saves 50.0% of the MACs"),
    ("better", 0.004, "At 0.0040 above CNN-1's test accuracy (paired: better) it saves 50.0% of the MACs"),
    ("no significant difference", -0.001, "At a test accuracy not distinguishable from CNN-1's (paired) it saves "
                                          "50.0% of the MACs")])
def test_study_b_words_its_saving_as_its_paired_verdict_reads(verdict, difference, said):
    from resnet_jax.studies.skip import verdict as study_b_verdict

    (line,) = study_b_verdict(_study_b(verdict, difference))
    assert said in line
    if verdict != "no significant difference":
        assert "equal accuracy" not in line.lower()


def test_study_b_names_the_adjustment_of_the_p_beside_each_paired_verdict():
    from resnet_jax.studies.skip import verdict as study_b_verdict

    (line,) = study_b_verdict(_study_b("worse", -0.004))
    assert "Bonferroni-adjusted p over 8 comparisons = 0.008 (unadjusted p = 0.001): worse" in line
