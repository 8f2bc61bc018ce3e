#!/usr/bin/env bash
# Copies the working tree (uncommitted changes included) to REMOTE_DIR on every worker.
set -euo pipefail
USAGE="Usage: scripts/tpu/sync_code.sh [options]
Copies the repository, without .git, .venv, runs/, data/, outputs/ and wandb/, to REMOTE_DIR
on every worker. Files deleted locally are not deleted on the workers."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]}"

# One archive instead of scp --recurse: a single transfer per worker, and exclusions.
archive="${TMPDIR:-/tmp}/trm-jax-code.$$.tar.gz"
remote_archive=trm-jax-code.tar.gz
if ((!DRY_RUN)); then trap 'rm -f "$archive"' EXIT; fi
run tar -czf "$archive" -C "$REPO_ROOT" \
  --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./data --exclude=./outputs \
  --exclude=./wandb --exclude=.pytest_cache --exclude=__pycache__ .
tpu_scp "$archive" "$remote_archive"
dir="$(quote "$REMOTE_DIR")"
tpu_ssh "mkdir -p $dir && tar -xzf $remote_archive -C $dir && rm $remote_archive"
