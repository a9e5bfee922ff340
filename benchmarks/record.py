"""Run the benchmarks the README reports, one after another, and keep their JSON beside a provenance record.

The README's benchmark tables are rendered from this folder (``scripts/render_results.py``), so each number
there traces back to one stored run: the exact command of every benchmark, its wall time, the code (version and
git commit), the date and the machine. A benchmark that fails leaves no JSON and stops the recording with its
exit status; the ones finished before it stay, and ``--only`` reruns a subset into the same folder.

    python benchmarks/record.py --workdir runs/reproduce/cifar10-resnet34 --data-dir ../shared/data/cifar10 \\
        [--out docs/results/benchmarks] [--only conv_kernels throughput ablation_sweep decision_rule prefix_sharing]

The ablation sweep reads a trained CIFAR-10 ResNet34 run (``--workdir``); ``resnet-jax reproduce --preset cpu
--only cifar-train --workdir runs/reproduce --data-root ../shared/data`` makes ``runs/reproduce/cifar10-resnet34``,
and the record names the command that made the run it read (``needs``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from resnet_jax import files, ledger  # noqa: E402
from resnet_jax.reporting import results  # noqa: E402

PROVENANCE = "provenance.json"


def commands(workdir: str, data_dir: str) -> dict[str, list[str]]:
    """Each benchmark's arguments, as the README states them (``--out`` is added per benchmark)."""
    return {
        "conv_kernels": ["benchmarks/conv_kernels.py", "--batch-size", "256"],
        "throughput": ["benchmarks/throughput.py", "--batch-sizes", "128", "256"],
        "ablation_sweep": ["benchmarks/ablation_sweep.py", "--workdir", workdir, "--data-dir", data_dir,
                           "--n-examples", "1024"],
        "decision_rule": ["benchmarks/decision_rule.py"],
        "prefix_sharing": ["benchmarks/prefix_sharing.py", "--data-dir", data_dir, "--n-examples", "512"],
    }


NEEDS_RUN = ("ablation_sweep",)
"""The benchmarks that read a trained run (``--workdir``): their record names the command that made it."""


def trained_run(workdir: str) -> dict:
    """What a benchmark's trained run is and how to make it again: its path, the command that trained it (the
    reproduce stage that declared it; or that none is recorded) and the committed results folder of its job."""
    run = Path(workdir).resolve()
    made = ledger.made_by(run) or {}
    out = {"run": results.portable_text(str(run)),
           "made_by": made.get("command") or (f"command {results.NOT_RECORDED}" if made else
                                              "not recorded (a run trained outside a reproduce job)")}
    for record in sorted((HERE.parent / "docs" / "results").glob(f"*/{PROVENANCE}")):
        if made and results.recorded_path(str(json.loads(record.read_text()).get("workdir"))) == Path(made["workdir"]):
            out["results"] = str(record.parent.relative_to(HERE.parent))
    return out


def machine() -> dict:
    """The machine as the benchmarks see it, asked in a process of its own: this one must not hold an
    accelerator while they run."""
    probe = "import json; from resnet_jax.reporting import results; print(json.dumps(results.machine()))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=HERE.parent, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def record(out: Path, chosen: dict[str, list[str]], *, command: str, needs: dict | None = None) -> int:
    """Run ``chosen`` in turn, each writing ``out/<name>.json``; the provenance record is rewritten after every
    benchmark, so an interrupted recording keeps the finished ones. Returns the first non-zero exit status."""
    code, where = ledger.code_version(), machine()  # read before any file here changes
    out.mkdir(parents=True, exist_ok=True)
    path = out / PROVENANCE
    record = json.loads(path.read_text()) if path.is_file() else {"benchmarks": {}}
    for name, args in chosen.items():
        (out / f"{name}.json").unlink(missing_ok=True)  # a failed rerun must not leave the old numbers
        record["benchmarks"].pop(name, None)
        files.write_json(path, record)
        argv = [*args, "--out", str(out / f"{name}.json")]
        print(f"== {name}: python {shlex.join(argv)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run([sys.executable, *argv], cwd=HERE.parent).returncode
        if rc != 0:
            print(f"{name} failed (exit status {rc}); its result is not recorded", file=sys.stderr)
            return rc
        record["benchmarks"][name] = {
            "command": results.portable_text(f"python {shlex.join(args)}"), "seconds": round(time.perf_counter() - start, 1),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "code": code, "machine": where, "recorded_by": results.portable_text(command),
            **({"needs": needs} if needs and name in NEEDS_RUN else {})}
        files.write_json(path, record)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir",
                        help="a trained CIFAR-10 ResNet34 run, needed by the ablation sweep (e.g. runs/reproduce/"
                             "cifar10-resnet34, made by `resnet-jax reproduce --preset cpu --only cifar-train "
                             "--workdir runs/reproduce`)")
    parser.add_argument("--data-dir", required=True, help="its CIFAR-10 data (ImageFolder folders or zips)")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "results" / "benchmarks")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    args = parser.parse_args(argv)
    every = commands(str(Path(args.workdir or ".").resolve()), str(Path(args.data_dir).resolve()))
    unknown = sorted(set(args.only or ()) - set(every))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; valid: {list(every)}")
    chosen = {k: v for k, v in every.items() if not args.only or k in args.only}
    if not args.workdir and set(chosen) & set(NEEDS_RUN):
        parser.error(f"{sorted(set(chosen) & set(NEEDS_RUN))} read a trained run: give --workdir, or leave them out "
                     f"with --only")
    return record(args.out.resolve(), chosen, command=f"python benchmarks/record.py {shlex.join(argv or sys.argv[1:])}",
                  needs=trained_run(args.workdir) if args.workdir else None)


if __name__ == "__main__":
    sys.exit(main())
