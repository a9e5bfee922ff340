"""The segmentation recipe search, rendered: runs that differ in how they were trained, side by side on validation.

A recipe is chosen on the validation patients only; a run trained with ``train.score_test=false`` has no test score
until the chosen one is rerun with it true, and the table says "not scored" rather than leave a gap. Each run is
its own results folder (``resnet-jax results --workdir RUN --out docs/results/<study>/<run>``), so the search grows
one run at a time and a README block names the study's folder::

    <!-- results: acdc-recipe/recipe -->
    <!-- /results -->
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from resnet_jax import configs
from resnet_jax.reporting import results


def read_config(run: Path) -> dict:
    """A committed run's config, completed with the defaults of the version reading it."""
    return configs.complete(json.loads((run / "config.json").read_text()))


def training_runs(folder: Path) -> list[Path]:
    """Segmentation runs in ``folder`` or one level below it (a folder with ``config.json`` and ``metrics.jsonl``),
    sorted by name; slim networks made from a run (``elimination/``, ``model.eliminated``) are that run's elimination,
    not a recipe, even where no unit was removed."""
    found = [p.parent for pattern in ("config.json", "*/config.json") for p in folder.glob(pattern)]
    return sorted((r for r in found if (r / "metrics.jsonl").is_file() and not (r / "elimination").is_dir()
                   and (c := read_config(r))["task"] == "segmentation" and not c["model"].get("eliminated")),
                  key=lambda r: r.relative_to(folder).as_posix())


def loss_words(train: Mapping) -> str:
    """``cross-entropy`` or ``cross-entropy + w x Dice``."""
    return "cross-entropy" + (f" + {train['dice_weight']:g} x Dice" if train["dice_weight"] else "")


def augmentation_words(train: Mapping) -> str:
    """The training transform in a few words, or ``none``."""
    if not train["augment"]:
        return "none"
    named = (("shift", "max_shift", " px"), ("rotate", "max_rotate", " deg"), ("scale", "max_scale", ""),
             ("gamma", "max_gamma", ""), ("contrast", "max_contrast", ""), ("brightness", "max_brightness", ""))
    parts = (["flip"] if train["flip"] else []) + [
        f"{name} {value:g}{unit}" for name, key, unit in named if (value := train.get(key, 0))]
    return ", ".join(parts) or "none"


def recipe_cells(config: Mapping) -> list:
    """What a recipe is made of: output stride, crop, stem, classes, loss, augmentation, epochs and peak rate."""
    m, d, t = config["model"], config["data"], config["train"]
    kept = d.get("keep_classes")
    return [m["output_stride"], d["image_size"], m["stem"], ", ".join(kept or d["class_names"][1:]), loss_words(t),
            augmentation_words(t), t["epochs"], f"{t['learning_rate']:g}"]


RECIPE_HEADER = ("run", "output stride", "crop (px)", "stem", "classes trained", "loss", "augmentation",
                 "epochs", "peak lr")


def _criterion(config: Mapping) -> str:
    """The validation score that ranked the run's checkpoints, as training named it."""
    from resnet_jax.training.segmentation import checkpoint_metric

    return "val_" + checkpoint_metric(config)


COMPARE_WITH = "compare-with.json"
"""Optional, in a recipe folder: ``{"runs": [paths relative to the results root]}``, committed runs of other folders
(the preset in use, say) shown as rows beside the search's own, under their paths."""


def compared_runs(folder: Path) -> list[tuple[str, Path]]:
    """The folder's own search runs (labelled by their path inside it; seed 0: a further seed of the chosen recipe
    is reported with it, :func:`chosen`, not as a candidate), then the runs its ``compare-with.json`` names."""
    own = [(run.relative_to(folder).as_posix(), run) for run in training_runs(folder)
           if read_config(run)["train"]["seed"] == 0]
    listed = json.loads((folder / COMPARE_WITH).read_text())["runs"] if (folder / COMPARE_WITH).is_file() else []
    missing = [p for p in listed if not (folder.parent / p / "metrics.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder / COMPARE_WITH} names {missing}, which hold no trained run under "
                                f"{folder.parent}")
    return own + [(p, folder.parent / p) for p in listed]


def selection_row(label: str, run: Path, config: Mapping) -> list:
    """One run: its recipe, its best validation score (and epoch), minutes trained, and its test score if scored."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if not lines:
        raise results.TableError(f"{run / 'metrics.jsonl'} holds no finished epoch")
    criterion = _criterion(config)
    if criterion not in lines[0]:
        raise results.TableError(f"{run / 'metrics.jsonl'} has no {criterion} per epoch (trained without a "
                                 f"validation split?): a recipe is chosen on validation")
    best = max(lines, key=lambda x: x[criterion])
    done = lines[-1]["epoch"]
    epochs = config["train"]["epochs"]
    evaluation = run / "evaluation.json"
    test = json.loads(evaluation.read_text()) if evaluation.is_file() else None
    test_key = "test_" + criterion[4:]
    *recipe, _, peak_lr = recipe_cells(config)
    return [label, *recipe, f"{done}" if done == epochs else f"{done} of {epochs} (unfinished)", peak_lr,
            f"**{best[criterion]:.4f}** (epoch {best['epoch']})", f"{best['val_dice']:.4f}",
            f"{lines[-1]['elapsed_s'] / 60:.1f}",
            f"{test[test_key]:.4f}" + results.patient_interval_text(test, test_key) if test and test_key in test
            else "not scored"]


def recipe(folder: Path, task: str | None = None) -> str:
    """Every run of a recipe search: the recipe, validation Dice of the lead class at its best epoch, mean foreground
    Dice there, minutes of training, and the test score where the run was chosen and scored."""
    found = compared_runs(folder)
    if not found:
        raise FileNotFoundError(f"{folder} holds no segmentation run (a folder with config.json and metrics.jsonl)")
    config = {label: read_config(run) for label, run in found}
    ranked = {label: _criterion(c) for label, c in config.items()}
    if len(set(ranked.values())) > 1:
        raise results.TableError(f"the runs of {folder} were ranked by different validation scores ({ranked}); one "
                                 f"table compares runs ranked by the same score")
    rows = [selection_row(label, run, config[label]) for label, run in found]
    lead = next(iter(ranked.values()))[4:]
    table = results.grid([*RECIPE_HEADER, f"best validation {lead}", "validation mean Dice there",
                          "training minutes", f"test {lead}"], rows, right_from=1)
    return table + "\n" + _leader(rows, lead)


def _leader(rows: Sequence[list], lead: str) -> str:
    value = lambda row: float(row[-4].split("**")[1])  # noqa: E731
    top = max(rows, key=value)
    return (f"Best on validation so far: `{top[0]}` ({lead} {value(top):.4f}, {top[-2]} minutes of training"
            f"{'' if top[-1] == 'not scored' else f'; test {top[-1]}'}).\n")


TARGET = {"dice_myo": 0.82}
"""What the recipe search aims at on test: a myocardium Dice 2D networks on ACDC exceed (about 0.86-0.90), below
the study's 0.87 on its own data."""


def _against(target: float | None, value: float, low: float | None, high: float | None) -> str:
    """Where a test score stands against the target, its interval over patients included."""
    if target is None:
        return ""
    said = f"; the target, at least {target:g}, is "
    if value < target:
        return said + "not reached" + ("" if high is None else f" (the interval's upper end, {high:.4f}, is below it "
                                                               f"too)" if high < target else " (the interval reaches it)")
    return said + "reached" + ("" if low is None or low >= target else
                               f" by the point estimate; the interval's lower end, {low:.4f}, is below it")


def chosen(folder: Path, task: str | None = None) -> str:
    """The chosen recipe on test, one sentence per seed: the runs of the folder scored on test
    (``evaluation.json``), with the interval over patients and where each stands against :data:`TARGET`."""
    scored = [run for run in training_runs(folder) if (run / "evaluation.json").is_file()]
    if not scored:
        raise results.TableError(f"no run of {folder} is scored on test yet: the chosen recipe is scored once, by "
                                 f"rerunning it with train.score_test=true")
    lines = []
    for run in scored:
        config, test = read_config(run), json.loads((run / "evaluation.json").read_text())
        key = "test_" + _criterion(config)[4:]
        if key not in test:
            raise results.TableError(f"{run / 'evaluation.json'} has no {key}, the score that ranked its checkpoints")
        value, low, high = test[key], test.get(f"{key}_patients_low"), test.get(f"{key}_patients_high")
        chosen_on = "TEST (no validation split)" if str(test.get("chosen_by", "val_")).startswith("test_") \
            else "validation"
        lines.append(f"- `{run.name}` (seed {config['train']['seed']}): test {key[5:]} **{value:.4f}**"
                     f"{results.patient_interval_text(test, key)}, pooled over the {test['n_examples']} test "
                     f"slices, checkpoint chosen on {chosen_on}{_against(TARGET.get(key[5:]), value, low, high)}.")
    return "\n".join(lines) + "\n"
