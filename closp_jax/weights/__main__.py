r"""Pretrained weights by name: list them, or fetch one into the Hugging Face cache.

  python -m closp_jax.weights list
  python -m closp_jax.weights fetch NAME [--to DIR]

`list` prints the registry (closp_jax/weights/registry.py): source, revision, sha256, licence, what
is not pinned, and whether the file is already on this machine. `fetch` downloads NAME once into
the Hugging Face cache (HF_HOME / HF_HUB_CACHE; HF_ENDPOINT for a mirror), checks its sha256 and,
with --to, copies it into DIR; a name whose revision is not pinned says which commit it followed.
Exit status 1 with a one-line `error: ...` for a fault the user fixes. See docs/weights.md.
"""

from __future__ import annotations

from absl import app, flags

from closp_jax import errors
from closp_jax.weights import hub, registry

_TO = flags.DEFINE_string("to", None, "fetch: also copy the file into this folder.")


def run_list() -> int:
  cache = hub.hub_cache_dir()
  print(f"hub cache: {cache}")
  for row, entry in zip(registry.table_rows(), registry.REGISTRY.values()):
    here = "cached" if hub.cached_file(entry, cache) is not None else "not cached"
    print(f"\n{row['name']}  [{here}]  {row['kind']}  {row['licence']}")
    print(f"  what      {row['what']}")
    print(f"  source    {row['source']}  {row['file']}")
    print(f"  revision  {row['revision']}")
    print(f"  sha256    {row['sha256']}")
    if row["gaps"]:
      print(f"  gaps      {row['gaps']}")
  return 0


def run_fetch(name: str, to: str | None) -> int:
  fetched, copy = hub.fetch(name, to=to)
  entry = registry.lookup(name)
  print(f"{name}: {entry.source}")
  for note in fetched.notes:
    print(f"  note: {note}")
  if entry.repo:
    print(f"  commit   {fetched.commit}{'' if entry.revision else ' (not pinned in the registry)'}")
  print(f"  file     {fetched.path}{' (downloaded)' if fetched.downloaded else ' (already here)'}")
  print(f"  checked  {fetched.checked}")
  if copy is not None:
    print(f"  copied   {copy}")
  return 0


def main(argv) -> int:
  if len(argv) == 2 and argv[1] == "list":
    return run_list()
  if len(argv) == 3 and argv[1] == "fetch":
    return run_fetch(argv[2], _TO.value)
  raise app.UsageError("expected `list` or `fetch NAME [--to DIR]`")


if __name__ == "__main__":
  errors.run_main(main)
