#!/usr/bin/env bash
# Starts the trainer on every worker at once (detached, so a dropped ssh does not stop it):
# `python -m closp_jax.main --config=CONFIG --workdir=<gcsfuse path of WORKDIR> --distributed_auto`
# via launch/tpu/remote_train.sh. Follow it with logs.sh.
#
#   launch/tpu/train.sh --name NAME --zone ZONE --workdir gs://B/P [--config configs/geoclosp.py:pod]
#       [--data_dir gs://B/tfds] [--slices N] [--project P] [--dry-run] [-- --config.k=v ...]
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
require name zone config
check_workdir
data="$(worker_path "$(resolved_data_dir)")"
trainer=(--config="$config" --workdir="$(worker_path "$workdir")")
((slices > 1)) && trainer+=(--config.mesh.slices="$slices")
ssh_all "cd ${REMOTE_REPO} && $(remote_line bash launch/tpu/remote_train.sh --data_dir "$data" \
  --log "../${REMOTE_LOG}" --pid_file "../${REMOTE_PID}" -- "${trainer[@]}" "${extra_args[@]}")"
