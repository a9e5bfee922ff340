#!/usr/bin/env bash
# Run a resnet-jax command as N processes of one JAX job on this machine, the way a cluster would.
#
# Usage: scripts/launch_local.sh N COMMAND [ARGS...]
#   e.g. scripts/launch_local.sh 2 resnet-jax train --config cifar10-resnet34-smoke --workdir W --data-dir DIR
# Each process gets RESNET_JAX_COORDINATOR (localhost and a free port), RESNET_JAX_NUM_PROCESSES=N and
# RESNET_JAX_PROCESS_ID=0..N-1, and LOCAL_DEVICES CPU devices (default 1; XLA_FLAGS is set for that). Output
# lines are prefixed with [pI]. PIN_CORES=1 pins process I to core I (taskset), as one host per process would.
# If one process fails, the others are stopped; the exit status is that of the first process that failed (0 when
# all succeed).
set -uo pipefail
if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N COMMAND [ARGS...]   (N processes, N >= 1)" >&2
  exit 2
fi
n=$1; shift
python=${PYTHON:-python3}
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
local_devices=${LOCAL_DEVICES:-1}
pids=()
for ((i = 0; i < n; i++)); do
  pin=()
  if [ "${PIN_CORES:-0}" = 1 ]; then pin=(taskset -c "$i"); fi
  RESNET_JAX_COORDINATOR="127.0.0.1:$port" RESNET_JAX_NUM_PROCESSES=$n RESNET_JAX_PROCESS_ID=$i \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$local_devices" JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} \
    "${pin[@]}" "$@" > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
  pids+=($!)
done
status=0
alive=("${pids[@]}")
while [ ${#alive[@]} -gt 0 ]; do
  still=()
  for pid in "${alive[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then still+=("$pid"); continue; fi
    wait "$pid"
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=$rc
      echo "launch_local: process with pid $pid exited with status $rc; stopping the others" >&2
      for other in "${pids[@]}"; do kill -TERM "$other" 2>/dev/null; done
    fi
  done
  alive=("${still[@]}")
  [ ${#alive[@]} -gt 0 ] && sleep 0.5
done
wait  # the output prefixers
exit "$status"
