#!/usr/bin/env bash
# Sets every worker up from this checkout: copies the tracked files (with uncommitted edits),
# installs the package with jax[tpu], and mounts the gs:// buckets of --workdir / --data_dir
# with gcsfuse at /mnt/gcs/<bucket> (launch/tpu/remote_setup.sh, run on each worker).
#
#   launch/tpu/setup.sh --name NAME --zone ZONE --workdir gs://B/P [--data_dir gs://B/tfds]
#       [--jax_version V] [--slices N] [--project P] [--dry-run]
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_flags "$@"
require name zone
check_workdir
if [[ -z "$jax_version" ]]; then
  jax_version="$(python3 -c 'import jax; print(jax.__version__)' 2>/dev/null || true)"
fi
[[ -n "$jax_version" ]] || die "cannot read this machine's jax version; pass --jax_version"

archive="${TMPDIR:-/tmp}/closp-jax-${name}.tar.gz"
# Tracked files as they are in the working tree (so uncommitted edits travel too).
if ((dry_run)); then
  printf '+ git -C %q ls-files -z | tar -C %q --null -T - -czf %q\n' "$REPO_ROOT" "$REPO_ROOT" "$archive"
else
  echo "+ packing the tracked files of ${REPO_ROOT} into ${archive}"
  git -C "$REPO_ROOT" ls-files -z | tar -C "$REPO_ROOT" --null -T - -czf "$archive"
fi
gcloud_common
for node in $(nodes); do
  run gcloud compute tpus tpu-vm scp "$archive" "${node}:closp-jax.tar.gz" "${common[@]}" --worker=all
done
mounts=()
while read -r bucket; do mounts+=(--mount "$bucket"); done < <(buckets)
ssh_all "rm -rf ${REMOTE_REPO} && mkdir -p ${REMOTE_REPO} && tar -xzf closp-jax.tar.gz -C ${REMOTE_REPO} && $(remote_line bash "${REMOTE_REPO}/launch/tpu/remote_setup.sh" --jax_version "$jax_version" "${mounts[@]}")"
