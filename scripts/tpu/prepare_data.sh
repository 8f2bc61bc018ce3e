#!/usr/bin/env bash
# Puts a dataset under REMOTE_DIR/data on every worker: each host reads its shard locally.
set -euo pipefail
USAGE="Usage: scripts/tpu/prepare_data.sh [options] -- BUILDER.py [BUILDER_ARGS...]
       scripts/tpu/prepare_data.sh [options] --from-gcs gs://BUCKET/PREFIX/NAME
The first form runs a dataset builder on every worker, e.g.
  prepare_data.sh -- dataset/build_sudoku_dataset.py --source gs://BUCKET/raw/sudoku-extreme \\
      --output-dir data/sudoku-extreme-1k-aug-1000 --subsample-size 1000 --num-aug 1000
The second copies a built dataset directory to data/NAME on every worker."
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
((${#ARGS[@]} > 0)) || die "nothing to do; see --help"

if [[ "${ARGS[0]}" == --from-gcs ]]; then
  ((${#ARGS[@]} == 2)) || die "--from-gcs takes exactly one gs:// URL"
  src="${ARGS[1]%/}"
  [[ "$src" == gs://* ]] || die "--from-gcs needs a gs:// URL, got $src"
  tpu_ssh "$REMOTE_CD && mkdir -p data && gcloud storage rsync --recursive $(quote "$src") $(quote "data/${src##*/}")"
else
  tpu_ssh "$REMOTE_CD && .venv/bin/python $(quote "${ARGS[@]}")"
fi
