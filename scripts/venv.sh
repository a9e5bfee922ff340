#!/usr/bin/env bash
# Run a command inside resnet-jax's virtualenv, creating it first if needed.
#
# The environment lives outside the checkout, keyed on the dependency spec (pyproject.toml,
# the extras and the Python version), so a second clone or a CI rerun reuses it in seconds.
# Usage: scripts/venv.sh COMMAND [ARGS...]     e.g. scripts/venv.sh python -m pytest -q
# Env:   RESNET_JAX_EXTRAS (default "test,torch,docs"), RESNET_JAX_VENV (override the location),
#        PYTHON (interpreter to build the venv from, default python3).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
extras=${RESNET_JAX_EXTRAS:-test,torch,docs}
key=$( { cat "$repo/pyproject.toml"; echo "$extras"; "$python" --version; } | sha256sum | cut -c1-16)
venv=${RESNET_JAX_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/resnet-jax/venv-$key}

if [ ! -f "$venv/.complete" ]; then
  echo "setting up $venv: resnet-jax with its dependencies (jax, flax, optax, orbax-checkpoint, tensorflow-datasets," \
       "numpy, chex, matplotlib) and the extras [$extras]; this happens once per dependency spec" >&2
  started=$SECONDS
  new_venv() { rm -rf "$venv" && "$python" -m venv "$venv"; }
  new_venv
  # uv installs the same resolution as pip in a fraction of its time (CUDA-built torch alone unpacks to gigabytes);
  # it does not read pip's configuration, so pip's indexes, find-links and constraints are passed to it. It compiles
  # the bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile jax and
  # torch again on import. Where uv cannot be had or fails, pip does it all.
  mapfile -t sources < <("$venv/bin/python" "$repo/scripts/pip_config_for_uv.py")
  if "$venv/bin/python" -m pip install -q uv >/dev/null 2>&1 &&
     "$venv/bin/uv" pip install -q --compile-bytecode --python "$venv/bin/python" --index-strategy unsafe-best-match \
       ${sources[@]+"${sources[@]}"} -e "$repo[$extras]" >&2; then
    installer=uv
  else
    echo "uv could not install the environment; pip installs it" >&2
    new_venv  # without uv's partial install
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q -e "$repo[$extras]" >&2
    installer=pip
  fi
  touch "$venv/.complete"
  versions=$("$venv/bin/python" -m pip list --format=freeze 2>/dev/null |
             grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|torch|torchvision|pytest|sphinx)==' | tr '\n' ' ' || true)
  echo "virtualenv ready in $((SECONDS - started)) s (installed by $installer): $("$venv/bin/python" -m pip list --format=freeze 2>/dev/null |
       wc -l) packages, among them ${versions% }" >&2
fi
# The cached venv may point at another clone: re-point the editable install at this one.
here=$(cd / && "$venv/bin/python" -c 'import pathlib, resnet_jax; print(pathlib.Path(resnet_jax.__file__).resolve().parents[1])' 2>/dev/null || true)
if [ "$here" != "$repo" ]; then
  "$venv/bin/python" -m pip install -q --no-deps -e "$repo" >&2
fi
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
exec "$@"
