#!/usr/bin/env bash
# Streams the training log of one worker (default 0, the one that prints progress) until the
# trainer there exits. With --worker=all, every worker's log, interleaved.
#
#   launch/tpu/logs.sh --name NAME --zone ZONE [--worker 0|N|all] [--project P] [--dry-run]
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
require name zone
[[ "$worker" == all || "$worker" =~ ^[0-9]+$ ]] || die "--worker must be a number or 'all', got '${worker}'"
gcloud_common
node="$(nodes | head -n 1)"
# shellcheck disable=SC2016  # $(cat ...) is expanded on the worker
follow='tail -n +1 -F --pid="$(cat '"${REMOTE_PID}"')" '"${REMOTE_LOG}"
run gcloud compute tpus tpu-vm ssh "$node" "${common[@]}" --worker="$worker" --command="$follow"
