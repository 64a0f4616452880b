#!/usr/bin/env bash
# Runs N trainer processes on this machine, joined by a loopback coordinator: multi-host
# training without a pod. Each process gets its own CPU devices (or one GPU with --platform gpu).
#
#   launch/local_multiprocess.sh [options] N [-- trainer flags]
#
#   --devices_per_process D   CPU devices per process (default 4; XLA_FLAGS force_host_platform_device_count)
#   --platform cpu|gpu        cpu (default), or gpu: process i sees GPU i only
#   --port P                  coordinator port on 127.0.0.1 (default: a free port)
#   --logdir DIR              per-process logs process_<i>.log (default: a new folder under ${TMPDIR:-/tmp})
#   --script FILE             run `python FILE` instead of `python -m closp_jax.main`
#   --python PY               the interpreter (default: python3, or $PYTHON)
#   --dry-run                 print the commands, start nothing
#
# Example: launch/local_multiprocess.sh 2 -- --config=configs/geoclosp.py --workdir=/tmp/run \
#            --config.train.steps=20
# Process 0's output is streamed here; all logs stay in the log folder. If one process fails,
# the others are stopped and the exit status is the failed one's.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "local_multiprocess.sh: $*" >&2; exit 2; }

devices=4
platform=cpu
port=""
logdir=""
script=""
python_bin="${PYTHON:-python3}"
dry_run=0
nproc=""
trainer_args=()

while (($#)); do
  case "$1" in
    --devices_per_process) devices="${2:?--devices_per_process needs a value}"; shift 2 ;;
    --devices_per_process=*) devices="${1#*=}"; shift ;;
    --platform) platform="${2:?--platform needs a value}"; shift 2 ;;
    --platform=*) platform="${1#*=}"; shift ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --port=*) port="${1#*=}"; shift ;;
    --logdir) logdir="${2:?--logdir needs a value}"; shift 2 ;;
    --logdir=*) logdir="${1#*=}"; shift ;;
    --script) script="${2:?--script needs a value}"; shift 2 ;;
    --script=*) script="${1#*=}"; shift ;;
    --python) python_bin="${2:?--python needs a value}"; shift 2 ;;
    --python=*) python_bin="${1#*=}"; shift ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; trainer_args=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$nproc" ]] || die "unexpected argument $1; trainer flags go after --"; nproc="$1"; shift ;;
  esac
done

[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || die "N (the number of processes) must be a positive integer, got '${nproc}'"
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || die "--devices_per_process must be a positive integer, got '${devices}'"
[[ "$platform" == cpu || "$platform" == gpu ]] || die "--platform must be cpu or gpu, got '${platform}'"
if [[ -z "$port" ]]; then
  port="$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, got '${port}'"
if [[ -n "$script" ]]; then
  entry=("$script")
else
  entry=(-m closp_jax.main)
fi

# The command of process $1, as an array in the global `cmd`.
command_for() {
  local i="$1"
  cmd=(env)
  if [[ "$platform" == cpu ]]; then
    cmd+=(JAX_PLATFORMS=cpu "XLA_FLAGS=${XLA_FLAGS:+${XLA_FLAGS} }--xla_force_host_platform_device_count=${devices}")
  else
    cmd+=("CUDA_VISIBLE_DEVICES=${i}")
  fi
  cmd+=("$python_bin" "${entry[@]}" "--coordinator_address=127.0.0.1:${port}" "--num_processes=${nproc}"
        "--process_id=${i}" "${trainer_args[@]}")
}

if ((dry_run)); then
  for ((i = 0; i < nproc; i++)); do
    command_for "$i"
    printf '%q ' "${cmd[@]}"
    printf '> %q 2>&1 &\n' "${logdir:-LOGDIR}/process_${i}.log"
  done
  echo "wait  # process 0's log is streamed; a failed process stops the others"
  exit 0
fi

if [[ -z "$logdir" ]]; then
  logdir="$(mktemp -d "${TMPDIR:-/tmp}/closp_local_multiprocess.XXXXXX")"
fi
mkdir -p "$logdir"
echo "local_multiprocess.sh: ${nproc} process(es) x ${devices} ${platform} device(s), coordinator 127.0.0.1:${port}, logs in ${logdir}" >&2

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; fi
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < nproc; i++)); do
  command_for "$i"
  "${cmd[@]}" >"${logdir}/process_${i}.log" 2>&1 &
  pids+=("$!")
done
tail -n +1 -f --pid="${pids[0]}" "${logdir}/process_0.log" &
tail_pid=$!

status=0
remaining=$nproc
while ((remaining > 0)); do
  for i in "${!pids[@]}"; do
    pid="${pids[$i]}"
    [[ -z "$pid" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    pids[i]=""
    remaining=$((remaining - 1))
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "local_multiprocess.sh: process ${i} exited with status ${rc}; stopping the others. Its log: ${logdir}/process_${i}.log" >&2
      if ((i != 0)); then tail -n 30 "${logdir}/process_${i}.log" >&2 || true; fi
      stop_all
    fi
  done
  ((remaining > 0)) && sleep 1
done
wait "$tail_pid" 2>/dev/null || true
exit "$status"
