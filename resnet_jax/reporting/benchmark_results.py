"""The README's benchmark tables, rendered from a folder written by ``benchmarks/record.py``.

The folder holds each benchmark's own JSON (``conv_kernels.json``, ``throughput.json``, ``ablation_sweep.json``,
``decision_rule.json``) and ``provenance.json`` with every benchmark's command, wall time, code and date and the
machine; every block ends with that line, so each number names the run it comes from.

Usage: ``benchmark_results.throughput(Path("docs/results/benchmarks"))`` is one README block's Markdown;
``scripts/render_results.py`` renders them all.
"""

from __future__ import annotations

import json
from pathlib import Path

from resnet_jax.reporting import results

FORM_NAMES = {"xla": "XLA", "patches": "im2col", "dense": "dense"}
SWEEP_METHODS = {
    "naive JAX loop": "(a) naive JAX loop (one jitted masked forward per mask)",
    "resnet-jax engine": "(b) resnet-jax engine (gates, shared prefixes; compilation included)",
    "engine, 2nd call": "(b) again, everything compiled",
    "PyTorch loop": "(c) PyTorch loop (state_dict edits, inference mode, channels_last)",
}


def _load(folder: Path, name: str) -> tuple[dict, dict]:
    """A benchmark's JSON and its provenance entry; FileNotFoundError names what is missing."""
    path, record = folder / f"{name}.json", folder / "provenance.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {path.name}; record it with "
                                f"`python benchmarks/record.py ... --only {name}`")
    entry = json.loads(record.read_text()).get("benchmarks", {}).get(name) if record.is_file() else None
    if entry is None:
        raise FileNotFoundError(f"{record} does not record {name}: its {path.name} has no provenance")
    return json.loads(path.read_text()), entry


def measured(entry: dict) -> str:
    """Where, when and by what code a benchmark ran, and its command; for one that reads a trained run, the
    command that made that run (or that its record does not name it)."""
    needs = entry.get("needs")
    if needs:
        where = f" (its tables: `{needs['results']}`)" if needs.get("results") else ""
        made = needs["made_by"]
        run = (f" The trained run it reads, `{needs['run']}`, was made by "
               + (f"`{made}`" if made.startswith("resnet-jax ") else made) + f"{where}.")
    else:
        run = (f" The command that made its trained run is {results.NOT_RECORDED}." if "--workdir" in entry["command"]
               else "")
    return (f"Measured {entry['finished'][:10]} on {results.machine_text(entry['machine'])} by "
            f"{results.code_text(entry['code'])}: `{entry['command']}`, {entry['seconds']:.0f} s.{run}")


def conv_kernels(folder: Path, task: str | None = None) -> str:
    """Each distinct conv of ResNet34 with the time of each formulation, the one ``auto`` runs and the fastest;
    then the sums over every conv."""
    data, entry = _load(folder, "conv_kernels")
    groups: dict[tuple, list[dict]] = {}
    for row in data["layers"]:
        key = (tuple(row["in"]), tuple(row["out"]), row["kernel"], row["stride"], tuple(row["channels"]))
        groups.setdefault(key, []).append(row)
    ms = lambda t: "-" if t != t else f"{t:.2f}"  # noqa: E731  (NaN: the dense operator was too large to time)
    rows = []
    for (x, y, kernel, stride, channels), members in groups.items():
        first = members[0]
        rows.append([f"`{first['layer']}`" + (f" and {len(members) - 1} more" if len(members) > 1 else ""),
                     f"{x[0]}x{x[1]} -> {y[0]}x{y[1]}", f"{kernel}x{kernel} / {stride}",
                     " -> ".join(map(str, channels)), *(ms(first["ms"][f]) for f in FORM_NAMES),
                     FORM_NAMES[first["auto"]], FORM_NAMES[first["best"]]])
    header = ["convs", "map", "kernel / stride", "channels", *(f"{n} ms" for n in FORM_NAMES.values()),
              "`auto` runs", "fastest"]
    totals, layers = data["totals_ms"], data["layers"]
    picked = sum(r["auto"] == r["best"] for r in layers)
    return (f"Batch {data['batch_size']}, forward only, each distinct conv timed once:\n\n" + results.grid(header, rows, 4)
            + f"\nSum over the {len(layers)} convs (ms): XLA everywhere {totals['xla']:,.1f}, im2col everywhere "
              f"{totals['patches']:,.1f}, `auto` {totals['auto']:,.1f} (`auto` / XLA = "
              f"{totals['auto'] / totals['xla']:.3f}); `auto` runs the fastest form for {picked} of {len(layers)} "
              f"convs.\n\n" + measured(entry) + "\n")


def throughput(folder: Path, task: str | None = None) -> str:
    """Train and eval images/s of ResNet34 per framework and batch, and the train rate against torchvision's."""
    data, entry = _load(folder, "throughput")

    def name(framework: str) -> str:
        if framework.startswith("jax conv_impl="):
            return f"resnet-jax (`conv_impl={framework.split('=', 1)[1]}`)"
        return framework.replace("torchvision ", "torchvision, ")

    rows = []
    for r in data["rows"]:
        ref = next((x for x in data["rows"] if x["framework"] == "torchvision fp32" and x["batch"] == r["batch"]), None)
        rows.append([name(r["framework"]), str(r["batch"]), f"{r['train_img_s']:.1f}", f"{r['eval_img_s']:.1f}",
                     f"{r['train_img_s'] / ref['train_img_s']:.2f}x" if ref else "-"])
    devices = f"JAX on {data['jax_device_kind']}" + (f", PyTorch on {data['torch_device']}" if data["torch_device"]
                                                    else "")
    return (results.grid(["framework", "batch", "train images/s", "eval images/s", "train vs torchvision fp32"], rows, 1)
            + f"\n{devices}. " + measured(entry) + "\n")


def sweep(folder: Path, task: str | None = None) -> str:
    """Every masked-model evaluation method's time on the same images and masks, and the ratios between them."""
    data, entry = _load(folder, "ablation_sweep")
    n, k, peak = data["n_examples"], data["n_masks"], data["matmul_peak_gflops"]
    flops = 2 * data["macs_per_image"] * n * k
    rows = [[SWEEP_METHODS.get(method, method), f"{t:.1f}", f"{k / t:.3f}", f"{flops / t / 1e9:.1f}", f"{100 * flops / t / 1e9 / peak:.0f} %"]
            for method, t in data["seconds"].items()]
    torch_ratio = data.get("ratio_engine_vs_torch_loop")
    same = lambda flag: "identical" if flag else "NOT identical"  # noqa: E731
    checked = (f"Accuracies of (a) and both (b) rows {same(data['accuracies_identical_jax'])}"
               + (f"; of (c) to (b)'s {same(data['accuracies_identical_torch'])}" if "PyTorch loop" in data["seconds"]
                  else "") + " (other PyTorch rows are timed, not compared)")
    return (f"N = {n:,} test images, K = {k} masks, batch {data['batch_size']}; model GFLOP/s counts every masked "
            f"model as a full forward of {data['macs_per_image'] / 1e6:.1f} M multiply-adds per image:\n\n"
            + results.grid(["method", "seconds", "masks/s", "model GFLOP/s", f"% of matmul peak ({peak:.0f} GFLOP/s)"], rows, 1)
            + f"\nb/a (engine / naive JAX loop) = {data['ratio_engine_vs_jax_loop']:.3f}"
            + (f", b/c (engine / PyTorch loop) = {torch_ratio:.3f}" if torch_ratio is not None else "")
            + f"; the engine's second call / naive JAX loop = {data['ratio_engine_2nd_call_vs_jax_loop']:.3f}. "
              f"{checked}. The engine's largest chunk needed {data['engine_scratch_mb']:.0f} MB of scratch "
              f"memory (XLA's plan); peak RSS of the process {data['peak_rss_mb']:,.0f} MB; the conv MACs the "
              f"shared prefixes leave are {data['ideal_mac_ratio']:.3f} of the loops'.\n\n" + measured(entry) + "\n")


def _estimate(r: dict, key: str) -> str:
    """A share of families with its standard error (one family: none)."""
    se = r.get(f"{key}_se", float("nan"))
    return f"{r[key]:.3f}" + (f" +- {se:.3f}" if se == se else "") if key in r else "-"


def _setting(r: dict) -> str:
    effects = r.get("effects", "-")
    return f"{r['metric']}, {r['m']} masks" + ("" if effects == "-" else f" ({effects})")


def _against(r: dict, key: str, alpha: float) -> str:
    """An estimate ``+- se`` and where it lies from ``alpha``, in words."""
    value, se = r[key], r[f"{key}_se"]
    where = ("at or below alpha" if value <= alpha else
             "above alpha by more than 2 standard errors" if value - 2 * se > alpha else
             "above alpha, within 2 standard errors")
    return f"{_setting(r)} {value:.3f} +- {se:.3f} ({where})"


def decision_rule(folder: Path, task: str | None = None) -> str:
    """The simulated decision rule: per metric, family size, per-patient effects and true drop, the share of
    families with a wrong decision and with an interval that misses the true drop, and the share of each decision;
    then the error where it is the claim (the margin; a false significant change at 0) against alpha."""
    data, entry = _load(folder, "decision_rule")
    decisions = ("non-trivial", "trivial", "improves", "undecided")
    rows = [[r["metric"], str(r["m"]), r.get("effects", "-"), r["true_drop"], f"{r['families']:,}",
             _estimate(r, "fwer"), _estimate(r, "misses"), *(f"{r[f'share_{d}']:.3f}" for d in decisions)]
            for r in data["rows"]]
    alpha, many = data["alpha"], [r for r in data["rows"] if r["families"] > 1]
    at_margin = "; ".join(_against(r, "fwer", alpha) for r in many if r["true_drop"] == "margin")
    at_zero = "; ".join(_against(r, "misses", alpha) for r in many if r["true_drop"] == "0" and "misses" in r)
    power = "; ".join(f"{_setting(r)} {r['share_non-trivial']:.3f}" for r in data["rows"] if r["true_drop"] == "5x margin")
    return (results.grid(["metric", "masks per family", "per-patient effects", "true drop", "families",
                          "family-wise error", "an interval misses", *(f"share {d}" for d in decisions)], rows, 4)
            + f"\nFamily-wise error where the true drop equals the margin ({data['margin']}), against alpha {alpha} "
              f"(estimate +- standard error): {at_margin}."
            + (f" With no true drop, families with a false significant change (an interval without 0): {at_zero}."
               if at_zero else "")
            + f" Power (share non-trivial at 5x the margin): {power}. The 630-mask Dice family took "
              f"{data['dice_630_resamples']:,} resamples, tested in {data['dice_630_seconds']:.1f} s.\n\n"
            + measured(entry) + "\n")


SHARING_MODELS = {"resnet34": "ResNet34 (declares its units: copies join at a unit)",
                  "resnet34-hooked": "ResNet34 scored as any model (module outputs gated, vmapped)",
                  "vgg11-bn": "VGG-11-BN, a user's model (no declared structure)"}


def prefix_sharing(folder: Path, task: str | None = None) -> str:
    """Per model, XLA's FLOPs of the engine's sweep and of a loop of masked forwards against the minimum a sweep
    needs, and the time of both."""
    data, entry = _load(folder, "prefix_sharing")
    rows = [[SHARING_MODELS.get(r["model"], r["model"]), r["masks"], f"{r['sweep_gflops']:,.1f}",
             f"{r['minimum_gflops']:,.1f}", f"{r['loop_gflops']:,.1f}", f"{r['sweep_over_minimum']:.2f}",
             f"{r['loop_over_minimum']:.2f}", f"{r['sweep_seconds']:.1f}", f"{r['loop_seconds']:.1f}",
             f"{r['loop_over_sweep_time']:.2f}"] for r in data["rows"]]
    first = data["rows"][0]
    return (f"Every single-conv zero-kernel mask and the unablated model, {first['images']:,} images ({data['data']}), batch "
            f"{first['batch_size']}, {data['backend']}:\n\n"
            + results.grid(["model", "masks", "sweep GFLOP", "minimum GFLOP", "loop GFLOP", "sweep / minimum",
                            "loop / minimum", "sweep s", "loop s", "loop / sweep time"], rows, 1)
            + "\n" + measured(entry) + "\n")


TABLES = {"conv-kernels": conv_kernels, "throughput": throughput, "sweep": sweep, "decision-rule": decision_rule,
          "prefix-sharing": prefix_sharing}
