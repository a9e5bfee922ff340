"""Which training choice moves the segmentation rows toward the study's pattern: one factor changed at a time.

In the study's segmentation rows (PROTOCOLS.md) removing stage 1, 2 or 3 except its decomposition keeps most of
the baseline, while stage 4 and every projection shortcut take it to 0. A factor run changes one thing in the
chosen recipe (output stride, training length, the classes trained, the stem) and reruns the stage and shortcut
protocols. Rows are compared as *retention*, value over baseline, since the baselines differ; a group of rows (the
stage rows, the shortcut rows) lies at the mean absolute difference of its retentions from the study's. A factor
moves a group toward or away from the study only by more than that distance varies between the chosen recipe's
seeds.

A factors folder holds the factor runs, each exported on its own (``resnet-jax results --workdir RUN --out
docs/results/<folder>/<run>``), and ``factors.json`` naming the chosen recipe's runs, relative to the results root::

    {"reference": ["acdc-recipe/chosen", "acdc-recipe/chosen-seed1"]}

and, optionally, ``costs.json`` (``experiments/acdc_recipe.py costs``): each factor's conv MACs per slice and
epochs beside the reference's, so that a factor with no run is stated as untested, with what training it would
cost, instead of missing silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from resnet_jax import configs
from resnet_jax.configs.base import flatten
from resnet_jax.reporting import published, results
from resnet_jax.reporting.recipe_results import read_config

TASK = "segmentation"
GROUPS = {"stage": "stage-except-decomposition", "shortcut": "shortcut"}
"""The two groups of rows whose movement is reported, and the protocol each comes from."""
IGNORED = ("train.seed", "train.score_test", "data.data_dir")
"""Config keys that do not make a run a different factor: seeds are compared as seeds."""
SPEC = "factors.json"
COSTS = "costs.json"


def retention(tables: Mapping[str, Sequence[dict]]) -> dict[tuple[str, int], float]:
    """Per published row ``(protocol, stage)`` that the run has, its value over its own baseline."""
    values = published.stage_values(TASK, tables)
    base = (values[("baseline", None)] or [0.0])[0]
    if base <= 0:
        raise results.TableError(f"a baseline of {base} leaves no retention to compare (value over baseline)")
    return {key: v[0] / base for key, v in values.items() if key[1] is not None and v}


def paper_retention() -> dict[tuple[str, int], float]:
    """The study's rows over the study's baseline."""
    paper = published.PUBLISHED[TASK]
    return {(p, s): paper[p][s] / paper["baseline"] for p in GROUPS.values() for s in paper[p]}


def distance(kept: Mapping[tuple[str, int], float], protocol: str) -> float:
    """Mean absolute difference between a run's retentions and the study's, over one protocol's rows."""
    paper = paper_retention()
    gaps = [abs(v - paper[key]) for key, v in kept.items() if key[0] == protocol]
    if not gaps:
        raise results.TableError(f"no {protocol} rows to compare with the study's")
    return sum(gaps) / len(gaps)


def _tables(run: Path) -> dict[str, list[dict]]:
    found = {p: results.ablation_table(run, p) for p in ("baseline", *GROUPS.values())}
    missing = [f"ablation/{p}.json" for p, rows in found.items() if rows is None]
    if missing:
        raise FileNotFoundError(f"{run} lacks {missing}: run the baseline, stage and shortcut protocols on it")
    return found


def changes(reference: Mapping, config: Mapping) -> str:
    """What a factor run changed against the reference recipe, as ``key old -> new``; seeds aside."""
    keys = [k for k in configs.diff(reference, config) if k not in IGNORED]
    old, new = flatten(reference), flatten(config)
    return "; ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in keys) or "nothing (the reference)"


def _runs(folder: Path) -> tuple[list[Path], list[Path]]:
    spec = folder / SPEC
    if not spec.is_file():
        raise FileNotFoundError(f"{spec} is missing: it names the chosen recipe's runs, e.g. "
                                f'{{"reference": ["acdc-recipe/chosen"]}}')
    reference = [folder.parent / p for p in json.loads(spec.read_text()).get("reference", [])]
    if not reference:
        raise results.TableError(f"{spec} names no reference run; it names the chosen recipe's runs, e.g. "
                                f'{{"reference": ["acdc-recipe/chosen"]}}')
    own = sorted(p.parent for p in folder.glob("*/config.json"))
    return reference, own


def _row(label: str, run: Path, changed: str, seed: int) -> tuple[list, dict[str, float]]:
    tables = _tables(run)
    kept = retention(tables)
    values = published.stage_values(TASK, tables)
    dist = {group: distance(kept, protocol) for group, protocol in GROUPS.items()}
    cells = [label, changed, seed, f"{values[('baseline', None)][0]:.3f}"]
    cells += [f"{v[0]:.3f}" if v else "-" for key, v in values.items() if key[1] is not None]
    return cells + [f"{dist['stage']:.3f}", f"{dist['shortcut']:.3f}"], dist


def _measured(folder: Path) -> tuple[list[list], list[dict[str, float]], dict[str, list[dict[str, float]]]]:
    """The table's rows (the study, the reference seeds, each factor run), the reference seeds' distances and
    each factor's runs' distances."""
    reference, own = _runs(folder)
    base = read_config(reference[0])
    study = ["the study", "-", "-", f"{published.PUBLISHED[TASK]['baseline']:.2f}",
             *(f"{published.PUBLISHED[TASK][p][s]:.2f}" for p, s in paper_retention()), "0", "0"]
    rows, ref_dist, by_factor = [study], [], {}
    for run in reference:
        cells, dist = _row(f"reference: {run.parent.name}/{run.name}", run, "-", read_config(run)["train"]["seed"])
        rows.append(cells)
        ref_dist.append(dist)
    for run in own:
        config = read_config(run)
        changed = changes(base, config)
        cells, dist = _row(run.name, run, changed, config["train"]["seed"])
        rows.append(cells)
        by_factor.setdefault(changed, []).append(dist)
    return rows, ref_dist, by_factor


def factors(folder: Path, task: str | None = None) -> str:
    """The chosen recipe's seeds and every factor run: the stage and shortcut values, each group's distance from
    the study's pattern, then one sentence per factor on how each group moved."""
    rows, ref_dist, by_factor = _measured(folder)
    header = ["run", "changed", "seed", "baseline", *(f"{'stage' if p == GROUPS['stage'] else 'shortcut'} {s}"
                                                     for p, s in paper_retention()), "stage distance",
              "shortcut distance"]
    return results.grid(header, rows, right_from=2) + "\n" + effects_text(ref_dist, by_factor) + \
        untested(folder, set(by_factor))


def effects(folder: Path, task: str | None = None) -> str:
    """The sentences of :func:`factors` alone (one per factor), for a page that links to the table."""
    _, ref_dist, by_factor = _measured(folder)
    return effects_text(ref_dist, by_factor) + untested(folder, set(by_factor))


def effects_text(reference: Sequence[dict[str, float]], by_factor: Mapping[str, Sequence[dict[str, float]]]) -> str:
    if not by_factor:
        return "No factor run yet: only the reference seeds are measured.\n"
    lines = [_sentence(f, d, reference) for f, d in by_factor.items()]
    return "\n".join(lines + _in_all(reference, by_factor)) + "\n"


def _compare(group: str, runs: Sequence[dict[str, float]], reference: Sequence[dict[str, float]]
             ) -> tuple[float, float, float, str | None]:
    """The reference seeds' mean distance, the factor's, the seeds' range, and the move: 'toward' or 'away from'
    the study's pattern where the means differ by more than the range; None within it; 'unmeasured' with one
    reference seed (no range)."""
    ref = [d[group] for d in reference]
    mean_ref, mean, spread = sum(ref) / len(ref), sum(d[group] for d in runs) / len(runs), max(ref) - min(ref)
    if len(ref) < 2:
        move = "unmeasured"
    elif abs(mean - mean_ref) <= spread:
        move = None
    else:
        move = "toward" if mean < mean_ref else "away from"
    return mean_ref, mean, spread, move


def _sentence(factor: str, runs: Sequence[dict[str, float]], reference: Sequence[dict[str, float]]) -> str:
    parts = []
    for group in GROUPS:
        mean_ref, mean, spread, move = _compare(group, runs, reference)
        moved = f"{mean_ref:.3f} -> {mean:.3f} ({mean - mean_ref:+.3f})"
        if move == "unmeasured":  # a difference, not yet a move: nothing to weigh it against
            parts.append(f"{group} rows {moved}: not called a move toward or away from the "
                         f"study's pattern, since one reference seed leaves the seed-to-seed spread unmeasured")
        elif move is None:
            parts.append(f"{group} rows {moved}: within the range between the reference seeds, {spread:.3f}, no measured move")
        else:
            parts.append(f"{group} rows {moved}: {move} the study's pattern, "
                         f"beyond the range between the reference seeds, {spread:.3f}")
    seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
    return f"- `{factor}` ({seeds}; distance from the study, reference -> factor): " + "; ".join(parts) + "."


def _in_all(reference: Sequence[dict[str, float]], by_factor: Mapping[str, Sequence[dict[str, float]]]) -> list[str]:
    """One closing sentence over every factor run: which moved a group beyond the reference seeds' range, and
    which way; nothing where the range is unmeasured (one reference seed)."""
    if len(reference) < 2:
        return []
    moves = [f"`{f}` {move} the study's pattern ({group} rows)" for f, runs in by_factor.items() for group in GROUPS
             if (move := _compare(group, runs, reference)[3]) is not None]
    run = f"In all ({len(by_factor)} factor{'s' if len(by_factor) != 1 else ''} run)"
    if moves:
        return [f"- {run}, beyond the range between the reference seeds: " + "; ".join(moves) + "."]
    return [f"- {run}: no factor moved the stage or shortcut rows beyond the range between the reference seeds, "
            f"toward or away from the study's pattern; none is measured to explain the contradiction."]


def _training_minutes(run: Path) -> float | None:
    path = run / "provenance.json"
    seconds = json.loads(path.read_text()).get("training_seconds", {}) if path.is_file() else {}
    return sum(seconds.values()) / 60 if seconds else None


COST_KEYS = ("overrides", "conv_macs", "epochs", "input_shape")


def _costs(path: Path, reference: Sequence[Path]) -> dict:
    """``costs.json``, refused with its reason where it counts another candidate or lacks what a sentence needs."""
    costs = json.loads(path.read_text())
    missing = [k for k in ("candidate", "reference", "factors") if k not in costs]
    missing += [f"{name}.{k}" for name, c in {"reference": costs.get("reference", {}), **costs.get("factors", {})}.items()
                for k in (*COST_KEYS, *(("changed",) if name != "reference" else ())) if k not in c]
    if missing:
        raise results.TableError(f"{path} lacks {missing}: rerun experiments/acdc_recipe.py costs")
    if costs["candidate"] != reference[0].name:
        raise results.TableError(f"{path} counts candidate {costs['candidate']!r} but {path.parent / SPEC} names "
                                 f"{reference[0].name!r} as the reference: rerun experiments/acdc_recipe.py costs")
    if costs["reference"]["conv_macs"] <= 0:
        raise results.TableError(f"{path}: the reference's conv_macs is {costs['reference']['conv_macs']}, no size to "
                                 f"compare a factor's with")
    return costs


def _estimate(minutes: float, reference: Mapping, cost: Mapping) -> float:
    """Training minutes if time grew with conv MACs and epochs from the reference's measured ``minutes``."""
    return minutes * cost["conv_macs"] / reference["conv_macs"] * cost["epochs"] / reference["epochs"]


def untested(folder: Path, measured: set[str]) -> str:
    """One sentence per factor that ``costs.json`` names and no run measures (its change, as the table labels it,
    is not among ``measured``): untested, with its conv MACs and epochs beside the reference's and the training
    minutes they imply if time grows with both (an estimate from the reference's measured minutes, not a
    measurement); then the same estimate beside the measured minutes of each factor run, to show how far it holds."""
    path = folder / COSTS
    if not path.is_file():
        return ""
    reference, own = _runs(folder)
    costs = _costs(path, reference)
    ref = costs["reference"]
    minutes = [m for m in map(_training_minutes, reference) if m is not None]
    mean = sum(minutes) / len(minutes) if minutes else None
    lines = []
    for name, cost in costs["factors"].items():
        if cost["changed"] in measured:
            continue
        text = (f"- `{cost['changed']}` (`{name}`): not run, so its effect on the study's pattern is untested. Its "
                f"conv MACs per {' x '.join(map(str, cost['input_shape'][1:]))} slice are "
                f"{cost['conv_macs'] / 1e6:,.0f} M, {cost['conv_macs'] / ref['conv_macs']:.1f}x the reference's "
                f"{ref['conv_macs'] / 1e6:,.0f} M, over {cost['epochs']} epochs against {ref['epochs']}")
        if mean is not None:
            estimate = _estimate(mean, ref, cost)
            text += (f"; if training time grew with both, the reference's {mean:.1f} training minutes would become "
                     f"about {estimate:,.0f} ({f'{estimate / 60:.1f} hours; ' if estimate >= 120 else ''}an "
                     f"estimate, not a measurement)")
        lines.append(text + ".")
    by_change, base = {c["changed"]: c for c in costs["factors"].values()}, read_config(reference[0])
    checks = [f"{_estimate(mean, ref, by_change[change]):.1f} minutes estimated against {m:.1f} measured "
              f"(`{run.name}`)" for run in own if lines and mean is not None
              and (change := changes(base, read_config(run))) in by_change and (m := _training_minutes(run)) is not None]
    if checks:
        lines.append("- The same estimate for the factor runs that were trained: " + "; ".join(checks) + ".")
    return "".join(line + "\n" for line in lines)
