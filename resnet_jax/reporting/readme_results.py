"""The README's results, rendered from committed results folders (``docs/results/<name>/``), never typed.

A block in the README names a folder and a table, and optionally a task that narrows it to that task's runs::

    <!-- results: cifar10-paper-cpu/paper -->
    (generated)
    <!-- /results -->
    <!-- results: cpu/decisions:segmentation -->

``render`` rewrites every block's body from its folder; ``scripts/render_results.py --check`` fails when the
README differs from what it would write, so a number can only change by changing the results it comes from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from resnet_jax.ablation import speed, statistics
from resnet_jax.reporting import benchmark_results, factor_results, published, recipe_results, results, skip_verdict

BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+)/(?P<table>[\w-]+)(?::(?P<task>\w+))? -->\n)(?P<body>.*?)"
                   r"(?P<body_end><!-- /results -->)", re.S)
DECISIONS = ("non-trivial", "trivial", "improves", "undecided")
PROTOCOLS = ("single", "stage-except-decomposition", "shortcut", "pairs")


class ResultsError(ValueError):
    """A README block that names a missing folder or an unknown table."""


def read_json(path: Path):
    """A committed JSON file."""
    return json.loads(path.read_text())


SEED_IN_NAME = re.compile(r"-seed(\d+)(?=-|$)")
"""A seed in a run's folder name: ``<run>-seed<N>``, or inside it (``<run>-seed<N>-slim``)."""


def _by_seed(found: Sequence[Path]) -> list[Path]:
    """Runs sorted by name without its seed, then by seed: each run's seeds together, seed 0 first."""
    return sorted(found, key=lambda p: (SEED_IN_NAME.sub("", p.name), seed_of(p)))


def runs(folder: Path, task: str | None = None) -> list[Path]:
    """The trained runs of a results folder that hold ablation tables (of ``task`` only, when given), seed 0
    first (``<run>``, ``<run>-seed1``...)."""
    found = [p.parent.parent for p in folder.glob("*/ablation/baseline.json")]
    return _by_seed([r for r in found if task is None or _task(r) == task])


def _task(run: Path) -> str | None:
    """The task ``run`` was trained for; None for a folder that is not a trained run."""
    return read_json(run / "config.json")["task"] if (run / "config.json").is_file() else None


run_table = results.ablation_table


READINGS = (("ours, running statistics", ""), ("ours, batch statistics", ".bn-batch"))
"""The two BatchNorm readings of an ablated network, and the suffix of their tables."""
TASKS = ("classification", "segmentation", "skip")


def reading_tables(group: Sequence[Path], reading: str) -> dict[str, list[list[dict]]]:
    """Per protocol the seeds' rows for one reading (only the seeds that have that reading)."""
    return {p: [t for r in group if (t := run_table(r, p, reading))]
            for p in ("baseline", "stage-except-decomposition", "shortcut")}


def seed_of(run: Path) -> int:
    """A run's seed: its config's ``train.seed``; for a folder without one, from its name (``<run>-seed<N>``,
    anywhere in the name; none: seed 0)."""
    seed = (read_json(run / "config.json").get("train") or {}).get("seed") if (run / "config.json").is_file() else None
    return seed if isinstance(seed, int) else int(m.group(1)) if (m := SEED_IN_NAME.search(run.name)) else 0


def seeds_label(seeds: Sequence[int]) -> str:
    """``seed 0`` or ``seeds 0, 1``."""
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def reading_seeds(group: Sequence[Path], reading: str) -> list[int]:
    """The seeds of ``group`` that have ``reading`` (their baseline table read that way)."""
    return [seed_of(r) for r in group if run_table(r, "baseline", reading)]


def _groups(folder: Path, only: str | None = None) -> dict[str, list[Path]]:
    return {task: group for task in TASKS if (group := runs(folder, task)) and only in (None, task)}


def paper_table(folder: Path, task: str | None = None) -> str:
    """The study's published values beside ours, for each BatchNorm reading the folder holds (running
    statistics: every seed, mean and range; batch statistics: the seeds that have that reading)."""
    out = []
    for task, group in _groups(folder, task).items():
        columns, body = ["experiment", "stage", "paper"], None
        for label, reading in READINGS:
            tables = reading_tables(group, reading)
            if not tables["baseline"]:
                continue
            rows = published.beside_ours(task, tables)
            columns.append(f"{label} ({seeds_label(reading_seeds(group, reading))})")
            body = rows if body is None else [b + [r[3]] for b, r in zip(body, rows)]
        out.append(f"{published.PUBLISHED[task]['what']}:\n\n" + results.grid(columns, body, right_from=2))
    return "\n".join(out)


NEAR, FAR = 0.05, 0.10
"""How close a row of ours must be to the paper's to count as agreeing, and how far to count as contradicting."""


def _distance(task: str, tables: dict) -> float:
    """Mean absolute distance of ours (seed means) from the paper over the stage and shortcut rows we have."""
    paper = published.PUBLISHED[task]
    rows = [(sum(v) / len(v), paper[p][s]) for (p, s), v in published.stage_values(task, tables).items()
            if v and s is not None]
    return sum(abs(m - q) for m, q in rows) / len(rows)


def _closer_reading(task: str, group: Sequence[Path]) -> str:
    """Which reading lies closer to the paper, over only the seeds both readings have; "within seed variation"
    when the gap is no larger than the spread of one reading's distance between seeds."""
    seeds = {label: reading_seeds(group, reading) for label, reading in READINGS}
    common = sorted(set.intersection(*map(set, seeds.values())))
    per_seed = {label: {r_seed: _distance(task, reading_tables([r], reading)) for r in group
                        if (r_seed := seed_of(r)) in seeds[label]} for label, reading in READINGS}
    mean = {label: sum(d[s] for s in common) / len(common) for label, d in per_seed.items()}
    (a, da), (b, db) = sorted(mean.items(), key=lambda kv: kv[1])
    spreads = [max(d.values()) - min(d.values()) for d in per_seed.values() if len(d) > 1]
    head = (f"- {task}, over {seeds_label(common)} (the seeds both readings have; per row, {a[6:]} {da:.3f} "
            f"against {b[6:]} {db:.3f} from the paper): ")
    if not spreads:
        return head + (f"the {a[6:]} reading lies closer by {db - da:.3f}, on one seed: the spread between seeds is "
                       f"not measured, so the gap may be seed variation.")
    spread = max(spreads)
    if db - da <= spread:
        return head + (f"within seed variation (a gap of {db - da:.3f}, where one reading's distance differs by up "
                       f"to {spread:.3f} between seeds); neither reading is the closer.")
    return head + (f"the {a[6:]} reading is the closer to the paper, by {db - da:.3f}, more than the {spread:.3f} "
                   f"its distance varies between seeds.")


def agreement(folder: Path, task: str | None = None) -> str:
    """Per task and reading, in sentences: how far our stage and shortcut values (seed means) lie from the
    paper's, which rows agree (within NEAR) and which contradict it (more than FAR away), and which reading
    is closer, compared over the seeds both readings have."""
    lines = []
    for task, group in _groups(folder, task).items():
        paper, present = published.PUBLISHED[task], 0
        for label, reading in READINGS:
            tables = reading_tables(group, reading)
            values = published.stage_values(task, tables)
            if not values[("baseline", None)]:
                continue
            present += 1
            means = {k: sum(v) / len(v) for k, v in values.items() if v}
            rows = {(p, s): (m, paper[p][s]) for (p, s), m in means.items() if s is not None}
            name = lambda p, s: f"{p} {s}"  # noqa: E731
            near = [name(p, s) for (p, s), (m, q) in rows.items() if abs(m - q) <= NEAR]
            far = [f"{name(p, s)} ({m:.2f} against {q:.2f})" for (p, s), (m, q) in rows.items() if abs(m - q) > FAR]
            lines.append(f"- {task}, {label[6:]} ({seeds_label(reading_seeds(group, reading))}): baseline "
                         f"{means[('baseline', None)]:.3f} against the paper's {paper['baseline']:.2f}; over the "
                         f"{len(rows)} stage and shortcut rows ours lies "
                         f"{_distance(task, tables):.3f} from the paper on average; within "
                         f"{NEAR} (agrees): {', '.join(near) or 'none'}; more than {FAR} away (contradicts): "
                         f"{', '.join(far) or 'none'}.")
        if present == len(READINGS):
            lines.append(_closer_reading(task, group))
    return "\n".join(lines) + "\n"


def decisions_table(folder: Path, task: str | None = None) -> str:
    """Per run and protocol, how many masks each decision got (margin and error rate as the tables state)."""
    rows = []
    for run in runs(folder, task):
        for protocol in PROTOCOLS:
            table = run_table(run, protocol)
            if not table:
                continue
            counts = [sum(r.get("decision") == d for r in table) for d in DECISIONS]
            rows.append([run.name, protocol, len(table), *counts, table[0].get("margin", "-"),
                         table[0].get("alpha", "-")])
    return results.grid(["run", "protocol", "masks", *DECISIONS, "margin", "alpha"], rows, right_from=2)


def layers(folder: Path, task: str | None = None) -> str:
    """Per task, the ``single`` masks grouped by their decisions over the seeds: the same decision in every
    seed, or split between seeds (with each seed's decision)."""
    lines = []
    for task, group in _groups(folder, task).items():
        seeds = [t for r in group if (t := run_table(r, "single"))]
        if not seeds:
            continue
        by_mask: dict[str, list[str]] = {}
        for rows in seeds:
            for row in rows:
                by_mask.setdefault(row["mask"], []).append(row.get("decision") or "-")
        same = {d: [m for m, ds in by_mask.items() if len(ds) == len(seeds) and set(ds) == {d}] for d in DECISIONS}
        split = [f"`{m}` ({' / '.join(ds)})" for m, ds in by_mask.items() if len(set(ds)) > 1 or len(ds) < len(seeds)]
        every = "in every seed" if len(seeds) > 1 else "in its one seed"
        lines.append(f"- {task}, `single` over {len(seeds)} seed(s), {len(by_mask)} convs:")
        lines += [f"  - {d} {every} ({len(ms)}): {', '.join(f'`{m}`' for m in ms)}" for d, ms in same.items() if ms]
        if split:
            lines.append(f"  - split between seeds ({len(split)}): {', '.join(split)}")
    return "\n".join(lines) + "\n"


def readings(folder: Path, task: str | None = None) -> str:
    """Per run that has them, the study's open readings in sentences: stage 1's adjacent conv read as
    ``layer1.0.conv1`` alone, the identity shortcuts cut one at a time, and how many ``single`` decisions the
    batch-statistics reading changes."""
    lines = []
    for run in runs(folder, task):
        standard, first = run_table(run, "stage-except-decomposition"), run_table(run, "stage-except-decomposition-first-conv")
        cuts, batch, single = run_table(run, "identity-shortcut", ".cut-identity"), run_table(run, "single", ".bn-batch"), \
            run_table(run, "single")
        if not (first or cuts or batch):
            continue
        lines.append(f"- `{run.name}`:")
        if standard and first:
            one = lambda rows: next((r for r in rows if published.stage_of(r["mask"]) == 1), None)  # noqa: E731
            a, b = one(standard), one(first)
            if a and b:
                lines.append(f"  - stage 1 with its adjacent conv read as `layer1.0.conv1` alone: {b['value']:.3f} "
                             f"({b.get('decision', '-')}) instead of {a['value']:.3f} ({a.get('decision', '-')})")
        if cuts:
            counts = {d: sum(r.get("decision") == d for r in cuts) for d in DECISIONS}
            lines.append(f"  - identity shortcuts cut one at a time ({len(cuts)}): value "
                         f"{min(r['value'] for r in cuts):.3f}-{max(r['value'] for r in cuts):.3f}; "
                         + ", ".join(f"{d} {n}" for d, n in counts.items() if n))
        if batch and single:
            before = {r["mask"]: r.get("decision") for r in single}
            changed = [r["mask"] for r in batch if r["mask"] in before and before[r["mask"]] != r.get("decision")]
            lines.append(f"  - BatchNorm on batch statistics: {len(changed)} of {len(batch)} `single` decisions change")
    return "\n".join(lines) + "\n"


def checkpoint_criterion(evaluation: dict, config: dict) -> str:
    """The validation score that chose a run's checkpoint: recorded in ``evaluation.json``; a run of an earlier
    version recorded none, and ranked segmentation by mean foreground Dice (``val_dice``) whatever its tables led
    with, classification by accuracy."""
    if "chosen_by" in evaluation:
        return evaluation["chosen_by"]
    return "val_dice" if config.get("task") == "segmentation" or "metric" in config else "val_accuracy"


LEAD_SCORES = ("test_accuracy", "test_dice_myo", "test_dice")


def lead_test_score(evaluation: Mapping, where: Path | str = "evaluation.json") -> str:
    """The key of a run's lead test score: the one its patients' interval was computed for (a segmentation run
    leading with mean Dice stores ``test_dice_patients_*`` beside ``test_dice_myo``), else the first of accuracy,
    myocardium Dice and mean Dice that the run has (``where`` names the file in the error when it has none)."""
    interval = next((k.removesuffix("_patients_low") for k in evaluation if k.endswith("_patients_low")), None)
    found = interval or next((k for k in LEAD_SCORES if k in evaluation), None)
    if found is None:
        raise results.TableError(f"{where} holds no test score: none of {list(LEAD_SCORES)} (it holds "
                                 f"{sorted(evaluation)})")
    return found


def training_table(folder: Path, task: str | None = None) -> str:
    """Per run: epochs, what chose the checkpoint and its validation score, the test score, the wall time."""
    rows = []
    for run in runs(folder, task):
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        evaluation = read_json(run / "evaluation.json")
        score = lead_test_score(evaluation, run / "evaluation.json")
        chosen = next((m for m in metrics if m["step"] == evaluation["step"]), {})
        val, criterion = chosen.get("val_" + score[5:]), checkpoint_criterion(evaluation, read_json(run / "config.json"))
        rows.append([run.name, metrics[-1]["epoch"], chosen.get("epoch", "-"),
                     f"{criterion[4:]} {chosen[criterion]:.4f}" if criterion in chosen else criterion,
                     f"{val:.4f}" if val is not None else "-", score[5:],
                     f"**{evaluation[score]:.4f}**" + results.patient_interval_text(evaluation, score),
                     evaluation["n_examples"], f"{metrics[-1]['elapsed_s'] / 60:.1f}"])
    return results.grid(["run", "epochs", "chosen epoch", "chosen by (validation)", "validation", "metric", "test",
                         "test examples", "training minutes"], rows)


STAGE_PREFIX = {"classification": ("cifar-", "verify"), "segmentation": ("acdc-",), "skip": ("skip-",)}
"""The ``reproduce`` stages of each task, by name; the others (readings, report) serve every task."""


def _stage_serves(name: str, task: str | None) -> bool:
    owner = next((t for t, prefixes in STAGE_PREFIX.items() if name.startswith(prefixes)), None)
    return task is None or owner in (None, task)


def budget_line(folder: Path, task: str | None = None) -> str:
    """Where and with what code the folder's results were computed (preset and seeds), how long each stage took,
    the commit and command of each (or that its record lacks them), any code with uncommitted changes and any run
    without a dataset digest (the stages and training of ``task`` only, when given)."""
    p = read_json(folder / "provenance.json")
    shown = {name: s for name, s in p["stages"].items() if "seconds" in s and _stage_serves(name, task)}
    serves = lambda run: task is None or _task(folder / Path(run).parts[0]) == task  # noqa: E731
    trained = [s for run, s in p.get("training_seconds", {}).items() if serves(run)]  # Study B: models in its run
    preset, seeds = results.run_identity(folder)
    preset, seeds = p.get("preset") or preset, p.get("seeds") or seeds
    made = f"preset `{preset}`" if preset else "no reproduce preset recorded"
    made += f", {seeds} seed{'s' if seeds != 1 else ''}" if seeds else ""
    dirty = (f" (`--allow-dirty`: uncommitted {', '.join(p['uncommitted'])})" if p.get("allow_dirty") else "")
    undigested = [run for run, digests in _digests(folder, p).items() if digests == results.NO_DIGEST and serves(run)]
    return (f"Compute: {results.machine_text(p['machine'])}; {made}; training {sum(trained) / 3600:.2f} h in all. "
            f"Stages (last call each): {_stage_words(shown) or 'none recorded'}. Exported {p['date'][:10]} by "
            f"{results.code_text(p['code'])}{dirty}: `{p['command']}`."
            + (f" No dataset digest recorded for {', '.join(undigested)}." if undigested else "") + "\n")


def _digests(folder: Path, p: dict) -> dict[str, dict | str]:
    """The record's dataset digests per run, with :data:`results.NO_DIGEST` for each run folder it lacks (an
    earlier export listed only the runs that had one)."""
    runs = {str(c.parent.relative_to(folder)): results.NO_DIGEST for c in sorted(folder.rglob("config.json"))}
    return {**runs, **p.get("datasets", {})}


def _stage_words(shown: dict[str, dict]) -> str:
    """The stages with their minutes, grouped by the commit and command that ran them; what a stage's record lacks
    is said (an earlier version recorded no command), and code with uncommitted changes is named as such."""
    groups: dict[tuple, list[str]] = {}
    for name, s in shown.items():
        code = s.get("code") or {}
        gaps = tuple(s.get("gaps", results.stage_gaps(s)))
        key = (code.get("commit"), bool(code.get("dirty")), s.get("command"), gaps)
        groups.setdefault(key, []).append(f"{name} {s['seconds'] / 60:.1f} min")
    parts = []
    for (commit, dirty, command, gaps), names in groups.items():
        said = ([f"commit {commit[:10]}" + (f" {results.DIRTY}" if dirty else "")] if commit else [])
        said += [*gaps, *([f"run as `{command}`"] if command else [])]
        parts.append(f"{', '.join(names)}: {', '.join(said)}")
    return "; ".join(parts)


def _skip_runs(folder: Path, task: str | None) -> list[tuple[Path, dict]]:
    """Study B's runs in the folder, seed 0 first, with their results; a block naming another task is an error,
    not Study B's numbers under that task's name."""
    if task not in (None, "skip"):
        raise ResultsError(f"Study B's tables serve the task 'skip' only, not {task!r}")
    found = _by_seed([p.parent for p in folder.glob("*/skip_results.json")])
    return [(run, read_json(run / "skip_results.json")) for run in found]


def _ci(a: dict) -> str:
    return f"{a['accuracy']:.4f} [{a['ci_low']:.4f}, {a['ci_high']:.4f}]"


STUDY_B = {"cnn1": "98 %", "router": "62 %", "literal": "close to 100 %"}
"""Study B's published numbers (PROTOCOLS.md's last section)."""


def skip_study(folder: Path, task: str | None = None) -> str:
    """Study B beside the study's numbers, one column per seed: CNN-1, the router on the study's labels, the
    literal CNN-3 (whose depth reveals the label), and the dense labelling's router."""
    found = _skip_runs(folder, task)
    if not found:
        raise ResultsError(f"{folder} holds no Study B results (*/skip_results.json)")
    rows = [
        ["CNN-1 test accuracy", STUDY_B["cnn1"], *[_ci(r["cnn1"]["test"]) for _, r in found]],
        ["router on the study's labels (held-out labelled images)", STUDY_B["router"],
         *[f"{_ci(r['router'])} (n = {r['router']['n']}; majority {r['router']['majority_rate']:.4f})"
           for _, r in found]],
        ["literal CNN-3, depth = the true label", STUDY_B["literal"],
         *[_ci(r["literal"]["depth_true_label"]) for _, r in found]],
        ["literal CNN-3, depth = the router's / full depth", "-",
         *[f"{r['literal']['depth_router']['accuracy']:.4f} / {r['literal']['depth_full']['accuracy']:.4f}"
           for _, r in found]],
        ["images the study's selection labels (layer 1 / 2 / 3)", "-",
         *[f"{r['selection']['n_labelled']} ({' / '.join(str(x['labelled_here']) for x in r['selection']['per_layer'])})"
           for _, r in found]],
        ["dense labelling's router (validation labels)", "-",
         *[f"{_ci(r['dense_router'])} (majority {r['dense_router']['majority_rate']:.4f})" for _, r in found]],
    ]
    return results.grid(["", "the study", *[f"ours, `{run.name}` [95 % CI]" for run, _ in found]], rows, right_from=1)


def skip_points(folder: Path, task: str | None = None) -> str:
    """Per Study B seed, every method at its operating point chosen on validation and scored on test, then the
    verdict's sentences (paired tests against CNN-1 and against random depth)."""
    out = []
    for run, r in _skip_runs(folder, task):
        rows = [[b["label"], b["setting"] or "-", _ci(b), f"{b['mean_conv_layers']:.3f}", f"{b['mac_ratio_vs_cnn1']:.3f}",
                 skip_verdict.wall_ratio_text(b)] for b in skip_verdict.table_points(r["curves"])]
        out.append(f"`{run.name}` (test split, {r['split_sizes']['test']} images; operating point: the cheapest within "
                   f"{r['curves']['tolerance']} of CNN-1's validation accuracy):\n\n"
                   + results.grid(["method", "operating point", "test accuracy [95 % CI]", "mean conv layers", "MAC ratio",
                            "wall ratio [interval]"], rows, right_from=3)
                   + "\n" + "\n".join(f"- {line}" for line in _skip_verdict(r)) + "\n")
    return "\n".join(out)


def _skip_verdict(r: dict) -> list[str]:
    """The verdict written from the stored points by today's code (its words and the adjusted p beside each paired
    verdict follow the code, its numbers the results), after CNN-1's stored competence warning, as the study puts it."""
    return skip_verdict.verdict_lines(r)


def _slim_runs(folder: Path, task: str | None) -> list[Path]:
    found = [p.parent.parent for p in folder.glob("*/elimination/summary.json")]
    return _by_seed([r for r in found if task is None or _task(r) == task])


def elimination(folder: Path, task: str | None = None) -> str:
    """Per slim run (seed 0 first): the greedy path on the split that chose the units, then every model of the
    comparison on test (speeds measured side by side) and the slim model's paired differences from each."""
    out = []
    for slim in _slim_runs(folder, task):
        s = read_json(slim / "elimination" / "summary.json")
        split, metric = s["metric_split"], s["metric"]
        path = [[p["step"], f"`{p['added']}`" + ("" if p["accepted"] else " (rejected)"), p["units_removed"],
                 f"{p['value']:.4f}", f"{p['drop']:+.4f}", f"{p['params']:,}", f"{p['conv_macs'] / 1e6:.1f} M"]
                for p in s["path"]]
        out.append(f"`{slim.name}`: greedy search over whole units on the {split} split (baseline "
                   f"{s['baseline'][split]:.4f}), stopping before a drop above {s['max_drop']}; removed "
                   f"{len(s['units'])}: {', '.join(f'`{u}`' for u in s['units']) or 'none'}.\n\n"
                   + (results.grid(["step", "removed next", "units removed", f"{split} {metric}", "drop", "params",
                             "conv MACs"], path, right_from=2) if path else "")
                   + _before_finetuning(s) + _comparison(slim))
    if not out:
        raise ResultsError(f"{folder} holds no elimination results (*/elimination/summary.json)"
                           + (f" of task {task}" if task else ""))
    return "\n".join(out)


def _before_finetuning(s: dict) -> str:
    """The chosen set against its baselines on test, each removed at once with no training: the study's one-shot
    set (every unit harmless alone), the k units with the smallest single drops, random sets of k units."""
    k = len(s["units"])
    if not k:
        return ""
    parts = [f"the full network {s['full']['test']:.4f}", f"the search's {k} units {s['slim']['test']:.4f}"]
    if s.get("one_shot", {}).get("choices"):
        parts.append(f"the one-shot set ({len(s['one_shot']['choices'])} units harmless alone, at once) "
                     f"{s['one_shot']['test']:.4f}")
    if s.get("k_smallest", {}).get("choices"):
        same = sorted(map(tuple, s["k_smallest"]["choices"])) == sorted(map(tuple, s["choices"]))
        parts.append(f"the {k} smallest single drops {s['k_smallest']['test']:.4f} "
                     f"({'the same units as the search' if same else 'other units than the search'})")
    tests = [r["test"] for r in s.get("random", [])]
    if tests:
        parts.append(f"{len(tests)} random sets of {k} units {sum(tests) / len(tests):.4f} (range over draws: "
                     f"{min(tests):.4f} to {max(tests):.4f})")
    return f"\nOn test, removed at once with no training: {'; '.join(parts)}.\n"


def _comparison(slim: Path) -> str:
    path = slim / "elimination" / "comparison.json"
    if not path.is_file():
        return ""
    c = read_json(path)
    spread = lambda r: f" (range over draws: {r['low']:.4f} to {r['high']:.4f})" if "low" in r else ""  # noqa: E731
    rows = [[r["name"], f"{r['value']:.4f}" + spread(r),
             f"{r['params'] / 1e6:.2f} M", f"{r['conv_macs'] / 1e6:.1f} M",
             speed.images_per_s(r, "eval_images_per_s", ",.0f"),
             speed.images_per_s(r, "train_images_per_s", ",.0f"),
             " / ".join(speed.images_per_s(r["ratios_vs_full"], k, ".3f") for k in
                        ("params", "conv_macs", "eval_images_per_s", "train_images_per_s"))] for r in c["rows"]]
    head = ["model", f"test {c['metric']}", "params", "conv MACs", "eval img/s", "train img/s",
            "vs full: params / MACs / eval / train"]
    timed = any("speed_vs_full" in r for r in c["rows"])
    if timed:  # faster or slower only where the interval of a speed ratio excludes 1
        head.append("speed vs full [interval]")
        for row, r in zip(rows, c["rows"]):
            row.append("reference" if r is c["rows"][0] else speed.speeds_text(r))
    paired = [f"- slim minus {name}: {statistics.comparison_text(d)}" for name, d in c.get("paired_vs_slim", {}).items()]
    why = speed.why_not_compared({"repeats": c["repeats"]}) if c["repeats"] < speed.MIN_REPEATS else speed.NO_INTERVAL
    return (f"\nOn test ({c['metric']}; "
            + ("speeds not timed: 0 rounds of timing):\n\n" if not c["repeats"] else
               f"speeds on {c['device']}, batch {c['batch']}, median of {c['repeats']} rounds, each timing every "
               f"model in a shuffled order; a speed ratio is the median over rounds, its interval "
               f"distribution-free):\n\n" if timed else
               f"speeds on {c['device']}, batch {c['batch']}, median of {c['repeats']} rounds; eval and train speed "
               f"not compared: {why}):\n\n")
            + results.grid(head, rows)
            + ("\n" + "\n".join(paired) + "\n" if paired else ""))


INTERACTS = 0.05
"""How far a pair's drop must sit from the sum of its parts' drops to count as an interaction."""


def pairs(folder: Path, task: str | None = None) -> str:
    """Per run with a ``pairs`` table: its decisions, how many pairs interact, the strongest synergies and
    redundancies (interaction = drop(A and B) - drop(A) - drop(B), from the ``single`` table of the same run),
    and the algebraic check that zeroing a unit's conv2 makes its conv1 irrelevant (both together score as conv2
    alone)."""
    out = []
    for run in runs(folder, task):
        table, single = run_table(run, "pairs"), run_table(run, "single")
        if not table or not single:
            continue
        drop = {r["mask"]: r["baseline"] - r["value"] for r in single}
        value = {r["mask"]: r["value"] for r in single}
        rows = [{**r, "a": a, "b": b, "interaction": (r["baseline"] - r["value"]) - drop[a] - drop[b]}
                for r in table for a, b in [r["mask"].split("+")]]
        counts = ", ".join(f"{sum(r.get('decision') == d for r in rows)} {d}" for d in DECISIONS)
        units = [r for r in rows if r["a"].endswith(".conv1") and r["b"] == r["a"][:-1] + "2"]
        exact = sum(r["value"] == value[r["b"]] for r in units)
        meta = read_json(run / "ablation" / "pairs.json")
        grid = lambda chosen: results.grid(  # noqa: E731
            ["pair", "drop together", "drop A", "drop B", "interaction", "decision"],
            [[f"`{r['a']} + {r['b']}`", f"{r['baseline'] - r['value']:+.4f}", f"{drop[r['a']]:+.4f}",
              f"{drop[r['b']]:+.4f}", f"{r['interaction']:+.4f}", r.get("decision", "-")] for r in chosen])
        ranked = sorted(rows, key=lambda r: r["interaction"])
        out.append(f"`{run.name}`: {len(rows)} pairs on {rows[0]['n_examples']} test examples "
                   f"({meta.get('seconds', 0) / 60:.1f} min of engine time): {counts} (margin {rows[0].get('margin', '-')}, "
                   f"alpha {rows[0].get('alpha', '-')}); {sum(abs(r['interaction']) > INTERACTS for r in rows)} pairs "
                   f"interact by more than {INTERACTS}. A unit's conv1 and conv2 together score exactly as its conv2 "
                   f"alone in {exact} of {len(units)} units (a zeroed conv2 leaves its branch input-independent).\n\n"
                   f"The most synergistic pairs:\n\n" + grid(ranked[::-1][:5])
                   + "\nThe most redundant pairs:\n\n" + grid(ranked[:5]))
    if not out:
        raise ResultsError(f"{folder} holds no pairs table (*/ablation/pairs.json)" + (f" of task {task}" if task else ""))
    return "\n".join(out)


def verify(folder: Path, task: str | None = None) -> str:
    """Per run cross-checked in PyTorch (``verify.csv``): how many masks agree, prediction disagreements, and the
    largest differences of the metric and of a logit."""
    import csv

    lines = []
    for path in sorted(p for p in folder.glob("*/verify.csv") if task is None or _task(p.parent) == task):
        rows = list(csv.DictReader(path.open()))
        masks = [r for r in rows if r["protocol"] != "baseline"]
        lines.append(f"- `{path.parent.name}`: the baseline and {len(masks)} masks "
                     f"({', '.join(dict.fromkeys(r['protocol'] for r in masks))}) on {rows[0]['n_examples']} test "
                     f"images: {sum(r['ok'] == 'True' for r in rows)} of {len(rows)} agree within tolerance, "
                     f"{sum(int(r['disagreements']) for r in rows)} prediction disagreements in all, largest metric "
                     f"difference {max(float(r['abs_delta']) for r in rows):.4f}, largest logit deviation "
                     f"{max(float(r['max_logit_deviation']) for r in rows):.1e}.")
    if not lines:
        raise ResultsError(f"{folder} holds no PyTorch cross-check (*/verify.csv)" + (f" of task {task}" if task else ""))
    return "\n".join(lines) + "\n"


TABLES: dict[str, Callable[..., str]] = {
    "paper": paper_table, "agreement": agreement, "decisions": decisions_table, "layers": layers,
    "readings": readings, "training": training_table, "budget": budget_line, "skip": skip_study,
    "skip-points": skip_points, "elimination": elimination, "verify": verify, "pairs": pairs,
    "recipe": recipe_results.recipe, "recipe-chosen": recipe_results.chosen, "factors": factor_results.factors, "factor-effects": factor_results.effects, **benchmark_results.TABLES}


def provenance_records(folder: Path) -> list[Path]:
    """A results folder's provenance: its own record, or (a study grown one exported run at a time) each run's."""
    own = folder / "provenance.json"
    return [own] if own.is_file() else sorted(folder.glob("*/provenance.json"))


def render(text: str, results_root: Path) -> str:
    """``text`` with every results block's body regenerated from ``results_root``."""
    def body(match: re.Match) -> str:
        folder, table, task = results_root / match["name"], match["table"], match["task"]
        if task is not None and task not in TASKS:
            raise ResultsError(f"README block {match['name']}/{table}:{task}: unknown task {task!r}; known: {list(TASKS)}")
        if table not in TABLES:
            raise ResultsError(f"README block {match['name']}/{table}: unknown table {table!r}; known: {sorted(TABLES)}")
        records = provenance_records(folder)
        if not records:
            raise ResultsError(f"README block {match['name']}/{table}: {folder} is not a results folder "
                               f"(no provenance.json of its own, nor in any run folder inside it); folders "
                               f"there: {sorted(p.name for p in results_root.glob('*/'))}")
        warnings = sorted({w for r in records if (w := read_json(r).get("warning"))})
        warning = "; ".join(warnings)
        try:
            return (match.group(1) + (f"**Warning: {warning}.**\n\n" if warning else "")
                    + TABLES[table](folder, task) + match["body_end"])
        except (FileNotFoundError, results.TableError) as err:
            raise ResultsError(f"README block {match['name']}/{table}: {err}") from None
    return BLOCK.sub(body, text)


SKIPPED_DOCS = ("_build", "results")
"""Folders of ``docs/`` that hold no page with blocks: the site's build output and the results data itself."""


def pages(root: Path) -> list[Path]:
    """The files whose results blocks ``scripts/render_results.py`` renders: ``README.md`` and every Markdown page
    under ``docs/`` that holds a block (not ``docs/_build/`` or the data folders of ``docs/results/``)."""
    docs = root / "docs"
    found = [p for p in sorted(docs.rglob("*.md")) if p.relative_to(docs).parts[0] not in SKIPPED_DOCS
             and BLOCK.search(p.read_text())]
    return [root / "README.md", *found]


def differing_blocks(text: str, results_root: Path) -> list[str]:
    """The blocks whose body differs from what ``render`` writes."""
    key = lambda m: f"{m['name']}/{m['table']}" + (f":{m['task']}" if m["task"] else "")  # noqa: E731
    fresh = {key(m): m["body"] for m in BLOCK.finditer(render(text, results_root))}
    return [key(m) for m in BLOCK.finditer(text) if fresh[key(m)] != m["body"]]
