#!/usr/bin/env bash
# Runs ON a TPU worker (train.sh calls it on all workers at once): starts the trainer detached,
# with JAX's TPU cluster detection (--distributed_auto), its output in --log, its pid in --pid_file.
#
#   bash launch/tpu/remote_train.sh --data_dir PATH --log FILE --pid_file FILE [--dry-run] -- TRAINER FLAGS
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

data_dir="" log="" pid_file="" dry_run=0
trainer=()
while (($#)); do
  case "$1" in
    --data_dir) data_dir="${2:?--data_dir needs a value}"; shift 2 ;;
    --log) log="${2:?--log needs a value}"; shift 2 ;;
    --pid_file) pid_file="${2:?--pid_file needs a value}"; shift 2 ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    --) shift; trainer=("$@"); break ;;
    *) echo "remote_train.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
for v in data_dir log pid_file; do
  [[ -n "${!v}" ]] || { echo "remote_train.sh: --${v} is required" >&2; exit 2; }
done

cmd=(env "CLOSP_DATA_DIR=${data_dir}" python3 -m closp_jax.main --distributed_auto=true "${trainer[@]}")
printf '+'; printf ' %q' nohup "${cmd[@]}"; printf ' > %q 2>&1 < /dev/null &\n' "$log"
if ((dry_run)); then exit 0; fi
if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  echo "remote_train.sh: a trainer is still running here (pid $(cat "$pid_file")); stop it first" >&2
  exit 1
fi
nohup "${cmd[@]}" >"$log" 2>&1 </dev/null &
echo "$!" >"$pid_file"
echo "$(hostname): trainer started (pid $!), log $(pwd)/${log}"
