#!/usr/bin/env bash
# Starts training on every worker at once, detached; jax.distributed auto-detects the pod.
set -euo pipefail
USAGE="Usage: scripts/tpu/launch.sh [options] EXPERIMENT [OVERRIDE...]
Runs 'python pretrain_jax.py --config-name EXPERIMENT OVERRIDE...' under nohup on every worker.
Each worker logs to REMOTE_DIR/logs/EXPERIMENT.log and records the PID for stop.sh."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#ARGS[@]} > 0)) || die "no experiment given; see --help"

experiment="${ARGS[0]}"
name="${experiment//\//_}"
log="$(quote "logs/$name.log")"
pid="$(quote "logs/$name.pid")"
train="PYTHONUNBUFFERED=1 nohup .venv/bin/python pretrain_jax.py --config-name $(quote "$experiment")"
if ((${#ARGS[@]} > 1)); then train+=" $(quote "${ARGS[@]:1}")"; fi

# A second run would fail to open the TPU that the first one holds; say why instead.
# shellcheck disable=SC2016  # $(...) expands on the worker
running='[ -e '"$pid"' ] && kill -0 "$(cat '"$pid"')" 2>/dev/null'
tpu_ssh "$REMOTE_CD && mkdir -p logs && if $running; then echo \"\$(hostname): $name is already running\" >&2; exit 1; fi && { $train > $log 2>&1 < /dev/null & echo \$! > $pid; }"
