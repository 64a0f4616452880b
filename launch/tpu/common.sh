# shellcheck shell=bash disable=SC2034
# (SC2034: the variables set here are read by the scripts that source this file.)
# Shared by the launch/tpu/*.sh scripts (sourced, not run): flag parsing, defaults, and the
# `run` helper that prints every command and, unless --dry-run, runs it.
#
# Flags (each script uses the ones it needs):
#   --name NAME                TPU VM (or queued resource) name                       [required]
#   --zone ZONE                e.g. us-west4-a (v5e), us-east5-b (v6e)               [required]
#   --project PROJECT          default: gcloud's configured project
#   --accelerator_type TYPE    default v5litepod-256 (v6e: v6e-256)
#   --runtime_version VERSION  default from the type: v5litepod -> v2-alpha-tpuv5-lite, v6e -> v2-alpha-tpuv6e
#   --queued                   create/delete a queued resource instead of a TPU VM directly
#   --spot                     spot capacity
#   --slices N                 multi-slice queued resource of N slices (nodes NAME-0 .. NAME-<N-1>)
#   --config SPEC              trainer config, default configs/geoclosp.py:pod
#   --workdir gs://BUCKET/PATH checkpoints, summaries, evaluations (mounted on every worker)
#   --data_dir gs://B/P|PATH   prepared TFDS data (default: gs://<workdir bucket>/tensorflow_datasets)
#   --jax_version V            jax[tpu] version installed on the workers (default: this machine's jax)
#   --worker N|all             logs.sh: the worker whose log to show (default 0)
#   --keep                     pod.sh: do not delete the TPU at the end
#   --dry-run                  print the commands, run nothing
#   -- FLAGS...                extra trainer flags (--config.a.b=v ...)

set -euo pipefail

TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${TPU_DIR}/../.." && pwd)"
# On the workers, relative to the home folder (where `tpu-vm ssh --command` starts).
REMOTE_REPO=closp-jax
REMOTE_LOG=closp-jax-train.log
REMOTE_PID=closp-jax-train.pid
MOUNT_ROOT=/mnt/gcs

name="" zone="" project="" accelerator_type="v5litepod-256" runtime_version="" queued=0 spot=0
slices=1 config="configs/geoclosp.py:pod" workdir="" data_dir="" jax_version="" worker=0 keep=0
dry_run=0
extra_args=()

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# The leading comment block of a file (after the shebang), without shellcheck directives.
header() { awk 'NR == 1 { next } /^#/ { if ($0 !~ /shellcheck/) { sub(/^# ?/, ""); print }; next } { exit }' "$1"; }

usage() {
  header "$0"
  echo
  header "${TPU_DIR}/common.sh" | sed -n '/^Flags/,$p'
}

set_value() {
  [[ -n "$2" ]] || die "$1 needs a value"
  case "$1" in
    --name) name="$2" ;;
    --zone) zone="$2" ;;
    --project) project="$2" ;;
    --accelerator_type) accelerator_type="$2" ;;
    --runtime_version) runtime_version="$2" ;;
    --config) config="$2" ;;
    --workdir) workdir="$2" ;;
    --data_dir) data_dir="$2" ;;
    --jax_version) jax_version="$2" ;;
    --worker) worker="$2" ;;
    --slices) slices="$2" ;;
    *) die "unknown flag '$1' (see --help)" ;;
  esac
}

parse_flags() {
  while (($#)); do
    case "$1" in
      --) shift; extra_args=("$@"); return ;;
      --queued) queued=1; shift ;;
      --spot) spot=1; shift ;;
      --keep) keep=1; shift ;;
      --dry-run|--dry_run) dry_run=1; shift ;;
      -h|--help) usage; exit 0 ;;
      --*=*) set_value "${1%%=*}" "${1#*=}"; shift ;;
      --*) [[ $# -ge 2 ]] || die "$1 needs a value"; set_value "$1" "$2"; shift 2 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
}

require() {
  local v
  for v in "$@"; do
    [[ -n "${!v}" ]] || die "--${v} is required (see --help)"
  done
}

check_workdir() {
  require workdir
  [[ "$workdir" == gs://?*/* || "$workdir" == gs://?* ]] || die "--workdir must be a gs:// path (every worker writes there), got '${workdir}'"
  [[ "$slices" =~ ^[1-9][0-9]*$ ]] || die "--slices must be a positive integer, got '${slices}'"
}

default_runtime_version() {
  if [[ -n "$runtime_version" ]]; then echo "$runtime_version"; return; fi
  case "$accelerator_type" in
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v4-*) echo "tpu-ubuntu2204-base" ;;
    *) die "no default runtime version for --accelerator_type=${accelerator_type}; pass --runtime_version" ;;
  esac
}

# gs://bucket/path -> /mnt/gcs/bucket/path (the gcsfuse mount on the workers); other paths unchanged.
worker_path() {
  local p="$1"
  if [[ "$p" == gs://* ]]; then echo "${MOUNT_ROOT}/${p#gs://}"; else echo "$p"; fi
}

bucket_of() { local p="${1#gs://}"; echo "gs://${p%%/*}"; }

resolved_data_dir() {
  if [[ -n "$data_dir" ]]; then echo "$data_dir"; else echo "$(bucket_of "$workdir")/tensorflow_datasets"; fi
}

# The gs:// buckets to mount on every worker (workdir's and data_dir's, once each).
buckets() {
  local d
  d="$(resolved_data_dir)"
  bucket_of "$workdir"
  if [[ "$d" == gs://* && "$(bucket_of "$d")" != "$(bucket_of "$workdir")" ]]; then bucket_of "$d"; fi
}

gcloud_common() {
  common=("--zone=${zone}")
  [[ -z "$project" ]] || common+=("--project=${project}")
}

# TPU VM node names: NAME, or NAME-0 .. NAME-<slices-1> for a multi-slice queued resource.
nodes() {
  if ((slices > 1)); then
    local i
    for ((i = 0; i < slices; i++)); do echo "${name}-${i}"; done
  else
    echo "$name"
  fi
}

# Prints a command (shell-quoted) and runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if ((dry_run)); then return 0; fi
  "$@"
}

# ssh to every worker of every node with one remote command line.
ssh_all() {
  local remote="$1" node
  gcloud_common
  for node in $(nodes); do
    run gcloud compute tpus tpu-vm ssh "$node" "${common[@]}" --worker=all --command="$remote"
  done
}

# A command line for the workers, each word quoted for their shell.
remote_line() {
  local out="" word
  for word in "$@"; do
    out+=" $(printf '%q' "$word")"
  done
  echo "${out# }"
}
