#!/usr/bin/env bash
# Starts training on every worker at once, detached; jax.distributed auto-detects the pod.
set -euo pipefail
USAGE="Usage: scripts/tpu/launch.sh [options] [--skip-preflight] EXPERIMENT [OVERRIDE...]
Runs 'python scripts/preflight.py' with the same config on every worker first (all workers at
once: it checks devices, data, checkpoint storage, disk and W&B credentials across the pod), and
only if it passes everywhere 'python pretrain_jax.py --config-name EXPERIMENT OVERRIDE...' under
nohup on every worker. Each worker logs to REMOTE_DIR/logs/EXPERIMENT.log and records the PID
for stop.sh. --skip-preflight starts training directly."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
preflight=1
if ((${#ARGS[@]} > 0)) && [[ "${ARGS[0]}" == --skip-preflight ]]; then
  preflight=0
  ARGS=("${ARGS[@]:1}")
fi
((${#ARGS[@]} > 0)) || die "no experiment given; see --help"

experiment="${ARGS[0]}"
name="${experiment//\//_}"
log="$(quote "logs/$name.log")"
pid="$(quote "logs/$name.pid")"
config="--config-name $(quote "$experiment")"
if ((${#ARGS[@]} > 1)); then config+=" $(quote "${ARGS[@]:1}")"; fi
train="PYTHONUNBUFFERED=1 nohup .venv/bin/python pretrain_jax.py $config"
check=":"
if ((preflight)); then
  check="{ .venv/bin/python scripts/preflight.py --expect-platform tpu $config || { echo \"\$(hostname): preflight failed; $name not started\" >&2; exit 1; }; }"
fi

# A second run would fail to open the TPU that the first one holds; say why instead.
# shellcheck disable=SC2016  # $(...) expands on the worker
running='[ -e '"$pid"' ] && kill -0 "$(cat '"$pid"')" 2>/dev/null'
tpu_ssh "$REMOTE_CD && mkdir -p logs && if $running; then echo \"\$(hostname): $name is already running\" >&2; exit 1; fi && $check && { $train > $log 2>&1 < /dev/null & echo \$! > $pid; }"
