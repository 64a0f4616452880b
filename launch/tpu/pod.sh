#!/usr/bin/env bash
# The whole run: create the TPU, set the workers up, train on all of them, stream worker 0's
# log until training ends, delete the TPU (unless --keep). Takes the flags of the scripts it calls.
#
#   launch/tpu/pod.sh --name NAME --zone ZONE --accelerator_type v5litepod-256 \
#       --config configs/geoclosp.py:pod --workdir gs://BUCKET/run1 [--queued] [--keep] [--dry-run] \
#       [-- --config.k=v ...]
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
require name zone config
check_workdir
default_runtime_version >/dev/null
ours=("$@")
flags=("${ours[@]}")
# Split off the trainer flags (after --) so that only train.sh gets them.
for i in "${!ours[@]}"; do
  if [[ "${ours[$i]}" == "--" ]]; then flags=("${ours[@]:0:$i}"); break; fi
done
trainer=()
((${#extra_args[@]})) && trainer=(-- "${extra_args[@]}")

step() { echo "== $1" >&2; }
step "create ${name} (${accelerator_type}, ${zone})"
bash "${TPU_DIR}/create.sh" "${flags[@]}"
if ((!keep)); then
  cleanup() { step "delete ${name}"; bash "${TPU_DIR}/delete.sh" "${flags[@]}"; }
  trap cleanup EXIT
fi
step "set up the workers"
bash "${TPU_DIR}/setup.sh" "${flags[@]}"
step "train ${config} -> ${workdir}"
bash "${TPU_DIR}/train.sh" "${flags[@]}" "${trainer[@]}"
step "log of worker 0 (until training ends)"
bash "${TPU_DIR}/logs.sh" "${flags[@]}"
