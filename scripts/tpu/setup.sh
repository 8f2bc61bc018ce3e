#!/usr/bin/env bash
# Installs the Python environment (REMOTE_DIR/.venv, jax[tpu]) on every worker.
set -euo pipefail
USAGE="Usage: scripts/tpu/setup.sh [options]
Creates REMOTE_DIR/.venv on every worker from requirements-tpu.txt. Run sync_code.sh first.
Environment: PYTHON_VERSION (default 3.11)"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]}"

# TPU VM images ship an older system Python than the project needs; uv installs a managed
# interpreter without touching the system packages.
# shellcheck disable=SC2016  # $HOME and $PATH expand on the worker
install_uv='export PATH="$HOME/.local/bin:$PATH" && { command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; }'
tpu_ssh "$install_uv && $REMOTE_CD && uv venv --allow-existing --python $(quote "${PYTHON_VERSION:-3.11}") .venv && uv pip install --python .venv/bin/python -r requirements-tpu.txt -e ."
