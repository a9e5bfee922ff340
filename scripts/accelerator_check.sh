#!/usr/bin/env bash
# One-command accelerator check: on a machine with a GPU (or TPU), measure what the development machines
# cannot, within about 9 minutes, and write one JSON summary plus a log per step.
#
#   DATA_ROOT=/path/to/data OUT=/path/to/out scripts/accelerator_check.sh
#
# Needs only jax (with the accelerator's backend), flax, optax, orbax-checkpoint, chex, numpy, torch and
# torchvision, the repository (put on PYTHONPATH here: no install step) and the offline data: DATA_ROOT holds
# cifar10/ and acdc_lv_myo/ laid out as in ../shared/data (default: ../shared/data, else ./data). No network,
# no tensorflow-datasets. Every step has a time limit; a step that fails or runs out is recorded, not fatal.
#
# Steps: the training/eval throughput benchmark (JAX and torchvision, fp32/bf16/torch.compile on CUDA), the
# ablation-sweep benchmark (40 masks on all 10,000 CIFAR-10 test images), the full CIFAR-10 preset trained
# and its three protocols swept, and the PSPNet sweep of the full segmentation preset (its model trained one
# epoch only: the sweep's speed does not depend on how well it was trained).
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${DATA_ROOT:-}
if [ -z "$data" ]; then
  for candidate in "$repo/../shared/data" "$repo/data"; do
    [ -d "$candidate/cifar10" ] && data=$candidate && break
  done
fi
if [ -z "$data" ] || [ ! -d "$data/cifar10" ]; then
  echo "no data: set DATA_ROOT to a folder with cifar10/ and acdc_lv_myo/ (as in ../shared/data)" >&2
  exit 2
fi
out=${OUT:-$repo/accelerator-check}
mkdir -p "$out"
: > "$out/steps.jsonl"
export PYTHONPATH="$repo:$repo/benchmarks:${PYTHONPATH:-}"
export RESNET_JAX_CACHE="$out/cache" RESNET_JAX_COMPILE_CACHE="$out/compiled"
python=${PYTHON:-python}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, record rc and wall time
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s%N)
  echo "[$(date +%T)] $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  printf '{"step": "%s", "rc": %d, "milliseconds": %d, "limit_s": %d}\n' "$name" "$rc" \
    $(( ($(date +%s%N) - start) / 1000000 )) "$limit" >> "$out/steps.jsonl"
  echo "[$(date +%T)] $name: exit $rc"
}

# CHECK_SCALE=smoke runs the same steps on smoke presets and small sizes: the plumbing, on any CPU.
if [ "${CHECK_SCALE:-full}" = smoke ]; then
  cifar=cifar10-resnet34-smoke acdc=acdc-pspnet34-smoke batches=32 images=256 sweep_batch=128 eval_batch=64
else
  cifar=cifar10-resnet34 acdc=acdc-pspnet34 batches=256 images=10000 sweep_batch=1000 eval_batch=1000
fi

cd "$repo"
step throughput 60 "$python" benchmarks/throughput.py --batch-sizes "$batches" --impls xla --repeats 20 \
  --out "$out/throughput.json"
step sweep 90 "$python" benchmarks/ablation_sweep.py --n-examples "$images" --batch-size "$sweep_batch" \
  --data-dir "$data/cifar10" --out "$out/sweep.json"
step cifar-train 210 "$python" -m resnet_jax.cli train --config "$cifar" --workdir "$out/runs/cifar10" \
  --data-dir "$data/cifar10"
step cifar-ablate 60 "$python" -m resnet_jax.cli ablate --workdir "$out/runs/cifar10" --protocol all \
  --batch-size "$eval_batch"
if [ -d "$data/acdc_lv_myo" ]; then
  step acdc-train 60 "$python" -m resnet_jax.cli train --config "$acdc" --workdir "$out/runs/acdc" \
    --data-dir "$data/acdc_lv_myo" --set train.epochs=1
  step acdc-ablate 60 "$python" -m resnet_jax.cli ablate --workdir "$out/runs/acdc" --protocol all --batch-size 64
fi
"$python" benchmarks/accelerator_summary.py "$out"
