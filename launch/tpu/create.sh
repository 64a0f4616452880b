#!/usr/bin/env bash
# Creates the Cloud TPU: a TPU VM slice (gcloud compute tpus tpu-vm create), or with --queued a
# queued resource, waiting until it is ACTIVE.
#
#   launch/tpu/create.sh --name NAME --zone ZONE [--accelerator_type v5litepod-256]
#       [--runtime_version V] [--queued [--slices N]] [--spot] [--project P] [--dry-run]
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
require name zone
[[ "$slices" =~ ^[1-9][0-9]*$ ]] || die "--slices must be a positive integer, got '${slices}'"
((slices == 1 || queued)) || die "--slices > 1 needs --queued (multi-slice TPUs are queued resources)"
version="$(default_runtime_version)"
gcloud_common
capacity=()
((spot)) && capacity=(--spot)

if ((!queued)); then
  run gcloud compute tpus tpu-vm create "$name" "${common[@]}" --accelerator-type="$accelerator_type" \
    --version="$version" "${capacity[@]}"
  exit 0
fi

placement=(--node-id="$name")
((slices > 1)) && placement=(--node-count="$slices" --node-prefix="$name")
run gcloud compute tpus queued-resources create "$name" "${common[@]}" --accelerator-type="$accelerator_type" \
  --runtime-version="$version" "${placement[@]}" "${capacity[@]}"

# Wait for the queued resource: WAITING_FOR_RESOURCES -> PROVISIONING -> ACTIVE.
describe=(gcloud compute tpus queued-resources describe "$name" "${common[@]}" --format='value(state.state)')
if ((dry_run)); then
  run "${describe[@]}"
  echo "# (repeated every 60 s until the state is ACTIVE)"
  exit 0
fi
while true; do
  state="$("${describe[@]}")"
  echo "$(date +%H:%M:%S) queued resource ${name}: ${state}" >&2
  case "$state" in
    ACTIVE) break ;;
    FAILED|SUSPENDED|SUSPENDING) die "queued resource ${name} is ${state}; see: gcloud compute tpus queued-resources describe ${name} --zone=${zone}" ;;
  esac
  sleep 60
done
