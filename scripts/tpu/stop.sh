#!/usr/bin/env bash
# Stops the runs that launch.sh started on every worker: SIGTERM, then SIGKILL after 30 s.
set -euo pipefail
USAGE="Usage: scripts/tpu/stop.sh [options]
Stops every process recorded in REMOTE_DIR/logs/*.pid on the workers."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]}"

# By recorded PID, never by name: other users' Python processes may share the worker.
# shellcheck disable=SC2016  # expands on the worker
stop_each='for f in logs/*.pid; do [ -e "$f" ] || continue; p=$(cat "$f"); if kill "$p" 2>/dev/null; then for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 1; done; kill -9 "$p" 2>/dev/null || true; echo "$(hostname): stopped ${f%.pid}"; fi; rm -f "$f"; done'
tpu_ssh "$REMOTE_CD && $stop_each"
