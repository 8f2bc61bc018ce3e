#!/usr/bin/env bash
# Shows the end of the training log on every worker (or one, with --worker N).
set -euo pipefail
USAGE="Usage: scripts/tpu/tail_logs.sh [options] [--follow] [EXPERIMENT]
Without EXPERIMENT, shows each worker's most recently written log."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"

tail_cmd="tail -n 50"
# shellcheck disable=SC2016  # $(...) expands on the worker
log='"$(ls -t logs/*.log | head -n 1)"'
for arg in ${ARGS[@]+"${ARGS[@]}"}; do
  case "$arg" in
    -f | --follow) tail_cmd="tail -n 50 -F" ;;
    -*) die "unknown option $arg" ;;
    *) log="$(quote "logs/${arg//\//_}.log")" ;;
  esac
done
# shellcheck disable=SC2016  # $(hostname) expands on the worker
tpu_ssh "$REMOTE_CD && echo \"== \$(hostname)\" && $tail_cmd $log"
