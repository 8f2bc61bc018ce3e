# shellcheck shell=bash
# Sourced by the scripts in scripts/tpu/: common flags, quoting, and the gcloud calls.
# Written for bash 3.2 as well (macOS): no ${var@Q}, no empty "${array[@]}" under set -u.

# shellcheck disable=SC2034  # REPO_ROOT, REMOTE_CD: used by the scripts that source this file
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
# The checkout on every worker, relative to the login directory unless absolute.
REMOTE_DIR="${REMOTE_DIR:-trm-jax}"
WORKER=all
DRY_RUN=0
ARGS=()

COMMON_USAGE="Common options:
  --tpu NAME       TPU VM name (default: \$TPU_NAME)
  --zone ZONE      (default: \$ZONE, else gcloud's configured zone)
  --project ID     (default: \$PROJECT, else gcloud's configured project)
  --worker W       all (default) or one worker index
  --dry-run        print the commands instead of running them
Environment: REMOTE_DIR (default trm-jax, relative to the home directory on each worker)"

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# Consumes the common options; everything else lands in ARGS, in order.
parse_flags() {
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --tpu | --zone | --project | --worker)
        (($# >= 2)) || die "$1 needs a value"
        case "$1" in
          --tpu) TPU_NAME="$2" ;;
          --zone) ZONE="$2" ;;
          --project) PROJECT="$2" ;;
          --worker) WORKER="$2" ;;
        esac
        shift
        ;;
      -h | --help)
        printf '%s\n\n%s\n' "$USAGE" "$COMMON_USAGE"
        exit 0
        ;;
      --)
        shift
        ARGS+=("$@")
        break
        ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
  [[ -n "$TPU_NAME" ]] || die "no TPU name: pass --tpu NAME or set TPU_NAME"
  TPU_FLAGS=(--worker="$WORKER")
  if [[ -n "$ZONE" ]]; then TPU_FLAGS+=(--zone="$ZONE"); fi
  if [[ -n "$PROJECT" ]]; then TPU_FLAGS+=(--project="$PROJECT"); fi
  # shellcheck disable=SC2034
  REMOTE_CD="cd $(quote "$REMOTE_DIR")"
}

# Each argument shell-quoted (single quotes only where needed), space-separated: safe to
# paste into a shell or a --command, and readable in --dry-run output.
quote() {
  local arg out="" q="'"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=" $arg"
    else
      out+=" '${arg//$q/$q\\$q$q}'"
    fi
  done
  printf '%s' "${out# }"
}

run() {
  if ((DRY_RUN)); then
    quote "$@"
    echo
  else
    "$@"
  fi
}

# Runs a shell command line on the selected workers (in the home directory).
tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${TPU_FLAGS[@]}" --command="$1"
}

# Copies a local file to a path (relative to the home directory) on the selected workers.
tpu_scp() {
  run gcloud compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" "${TPU_FLAGS[@]}"
}
