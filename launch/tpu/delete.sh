#!/usr/bin/env bash
# Deletes the Cloud TPU (the TPU VM, or with --queued the queued resource and its nodes).
#
#   launch/tpu/delete.sh --name NAME --zone ZONE [--queued] [--project P] [--dry-run]
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
require name zone
gcloud_common
if ((queued)); then
  run gcloud compute tpus queued-resources delete "$name" "${common[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$name" "${common[@]}" --quiet
fi
