#!/usr/bin/env bash
# Create .venv/ in the repository root with the pinned CPU dependencies and this project
# installed in editable mode. Idempotent: rerunning only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
# compat mode puts the repository root on sys.path, so Hydra finds hydra_plugins/ from anywhere.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . --config-settings editable_mode=compat
