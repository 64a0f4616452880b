"""Label vocabulary of CrisisLandMark and the rule that turns labels into text.

Twelve classes: the nine Dynamic World land-cover classes plus three crisis
labels. BigEarthNet samples carry CORINE land-cover names (the 44 level-3 names
of BigEarthNet v1, or the 19-class nomenclature of BigEarthNet v2 / reBEN);
`CORINE_TO_CLASS` maps every one of them onto a class. Other sources carry the
class names themselves. The text of a sample is its mapped classes, lower-cased,
de-duplicated, in `CLASSES` order, joined by ". " (e.g. "trees. crops. water").
See docs/data.md for the table and the reasons behind each entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from closp_jax.errors import UserError

CLASSES: tuple[str, ...] = (
  "Trees",
  "Crops",
  "Shrub and Scrub",
  "Water",
  "Grass",
  "Built",
  "Flooded Vegetation",
  "Bare",
  "Snow and Ice",
  "Flooded Area",
  "Earthquake Damage",
  "Burned Area",
)
NUM_CLASSES = len(CLASSES)
TEXT_SEPARATOR = ". "

# CORINE level-3 names (BigEarthNet v1; all 44 CLC classes, BigEarthNet uses 43
# of them) followed by the 19-class nomenclature of BigEarthNet v2 (reBEN).
CORINE_TO_CLASS: dict[str, str] = {
  # 1.x Artificial surfaces
  "Continuous urban fabric": "Built",
  "Discontinuous urban fabric": "Built",
  "Industrial or commercial units": "Built",
  "Road and rail networks and associated land": "Built",
  "Port areas": "Built",
  "Airports": "Built",
  "Mineral extraction sites": "Bare",
  "Dump sites": "Bare",
  "Construction sites": "Bare",
  "Green urban areas": "Grass",
  "Sport and leisure facilities": "Grass",
  # 2.x Agricultural areas
  "Non-irrigated arable land": "Crops",
  "Permanently irrigated land": "Crops",
  "Rice fields": "Flooded Vegetation",
  "Vineyards": "Crops",
  "Fruit trees and berry plantations": "Crops",
  "Olive groves": "Crops",
  "Pastures": "Grass",
  "Annual crops associated with permanent crops": "Crops",
  "Complex cultivation patterns": "Crops",
  "Land principally occupied by agriculture, with significant areas of natural vegetation": "Crops",
  "Agro-forestry areas": "Trees",
  # 3.x Forest and semi-natural areas
  "Broad-leaved forest": "Trees",
  "Coniferous forest": "Trees",
  "Mixed forest": "Trees",
  "Natural grassland": "Grass",
  "Moors and heathland": "Shrub and Scrub",
  "Sclerophyllous vegetation": "Shrub and Scrub",
  "Transitional woodland/shrub": "Shrub and Scrub",
  "Beaches, dunes, sands": "Bare",
  "Bare rock": "Bare",
  "Sparsely vegetated areas": "Bare",
  "Burnt areas": "Burned Area",
  "Glaciers and perpetual snow": "Snow and Ice",
  # 4.x Wetlands
  "Inland marshes": "Flooded Vegetation",
  "Peatbogs": "Flooded Vegetation",
  "Salt marshes": "Flooded Vegetation",
  "Salines": "Bare",
  "Intertidal flats": "Bare",
  # 5.x Water bodies
  "Water courses": "Water",
  "Water bodies": "Water",
  "Coastal lagoons": "Water",
  "Estuaries": "Water",
  "Sea and ocean": "Water",
  # BigEarthNet 19-class nomenclature (names not already listed above)
  "Urban fabric": "Built",
  "Arable land": "Crops",
  "Permanent crops": "Crops",
  "Natural grassland and sparsely vegetated areas": "Grass",
  "Moors, heathland and sclerophyllous vegetation": "Shrub and Scrub",
  "Transitional woodland, shrub": "Shrub and Scrub",
  "Inland wetlands": "Flooded Vegetation",
  "Coastal wetlands": "Bare",
  "Inland waters": "Water",
  "Marine waters": "Water",
}

CORINE_LEVEL3_NAMES: tuple[str, ...] = tuple(list(CORINE_TO_CLASS)[:44])
CORINE_19_NAMES: tuple[str, ...] = (
  "Urban fabric",
  "Industrial or commercial units",
  "Arable land",
  "Permanent crops",
  "Pastures",
  "Complex cultivation patterns",
  "Land principally occupied by agriculture, with significant areas of natural vegetation",
  "Agro-forestry areas",
  "Broad-leaved forest",
  "Coniferous forest",
  "Mixed forest",
  "Natural grassland and sparsely vegetated areas",
  "Moors, heathland and sclerophyllous vegetation",
  "Transitional woodland, shrub",
  "Beaches, dunes, sands",
  "Inland wetlands",
  "Coastal wetlands",
  "Inland waters",
  "Marine waters",
)


def _norm(name: str) -> str:
  return " ".join(name.split()).lower()


_CLASS_INDEX = {_norm(c): i for i, c in enumerate(CLASSES)}
_LOOKUP: dict[str, str] = {_norm(k): v for k, v in CORINE_TO_CLASS.items()}
_LOOKUP.update({_norm(c): c for c in CLASSES})


class UnknownLabelError(UserError, ValueError):
  """A label is neither a known CORINE name nor one of the 12 class names."""


def _as_str(label, key: str) -> str:
  if isinstance(label, bytes):
    return label.decode("utf-8")
  if isinstance(label, np.str_):
    return str(label)
  if not isinstance(label, str):
    raise UnknownLabelError(f"sample {key!r}: label {label!r} has type {type(label).__name__}, expected a string")
  return label


def map_labels(labels: Sequence[str], key: str) -> list[str]:
  """Map a sample's labels to class names, de-duplicated, in CLASSES order.

  `labels` holds CORINE names and/or class names (case-insensitive; str or
  bytes). `key` names the sample in error messages.
  """
  if isinstance(labels, (str, bytes)):
    raise TypeError(f"sample {key!r}: labels must be a sequence of names, got the single string {labels!r}")
  labels = list(labels)
  if not labels:
    raise UnknownLabelError(f"sample {key!r} has no labels (expected at least one)")
  found = set()
  for label in labels:
    name = _as_str(label, key)
    cls = _LOOKUP.get(_norm(name))
    if cls is None:
      raise UnknownLabelError(
        f"sample {key!r}: unknown label {name!r} (expected a CORINE land-cover name or one of {', '.join(CLASSES)})"
      )
    found.add(cls)
  return [c for c in CLASSES if c in found]


def class_text(name: str) -> str:
  """Text form of a class name: "Snow and Ice" -> "snow and ice"."""
  if _norm(name) not in _CLASS_INDEX:
    raise UnknownLabelError(f"unknown class {name!r} (expected one of {', '.join(CLASSES)})")
  return _norm(name)


def classes_to_text(classes: Iterable[str]) -> str:
  """Join class names (already mapped) with the text rule."""
  return TEXT_SEPARATOR.join(class_text(c) for c in classes)


def labels_to_text(labels: Sequence[str], key: str) -> str:
  """Text of a sample: mapped classes, lower-cased, joined by ". "."""
  return classes_to_text(map_labels(labels, key))


def labels_to_multihot(labels: Sequence[str], key: str) -> np.ndarray:
  """float32 [NUM_CLASSES] indicator of the sample's mapped classes."""
  out = np.zeros(NUM_CLASSES, np.float32)
  for c in map_labels(labels, key):
    out[_CLASS_INDEX[_norm(c)]] = 1.0
  return out


def text_to_multihot(text: str) -> np.ndarray:
  """Inverse of the text rule: "trees. water" -> indicator of Trees, Water.

  Terms are split on "."; surrounding spaces and case are ignored. A term that
  is not a class raises UnknownLabelError naming it.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  terms = [t for t in (_norm(p) for p in text.split(".")) if t]
  if not terms:
    raise UnknownLabelError(f"query text {text!r} names no class")
  out = np.zeros(NUM_CLASSES, np.float32)
  for t in terms:
    idx = _CLASS_INDEX.get(t)
    if idx is None:
      raise UnknownLabelError(
        f"query text {text!r}: unknown class {t!r} (expected one of {', '.join(class_text(c) for c in CLASSES)})"
      )
    out[idx] = 1.0
  return out
