"""Tests for closp_jax.data.labels: CORINE table, text rule, multi-hot."""

import numpy as np
import pytest

from closp_jax.data import labels as L

# BigEarthNet v1 label names (43) written out independently of the module.
BEN_V1_43 = """Continuous urban fabric|Discontinuous urban fabric|Industrial or commercial units|
Road and rail networks and associated land|Port areas|Airports|Mineral extraction sites|Dump sites|
Construction sites|Green urban areas|Sport and leisure facilities|Non-irrigated arable land|
Permanently irrigated land|Rice fields|Vineyards|Fruit trees and berry plantations|Olive groves|Pastures|
Annual crops associated with permanent crops|Complex cultivation patterns|
Land principally occupied by agriculture, with significant areas of natural vegetation|
Agro-forestry areas|Broad-leaved forest|Coniferous forest|Mixed forest|Natural grassland|
Moors and heathland|Sclerophyllous vegetation|Transitional woodland/shrub|Beaches, dunes, sands|
Bare rock|Sparsely vegetated areas|Burnt areas|Inland marshes|Peatbogs|Salt marshes|Salines|
Intertidal flats|Water courses|Water bodies|Coastal lagoons|Estuaries|Sea and ocean"""
BEN_V1_43 = [" ".join(n.split()) for n in BEN_V1_43.replace("\n", "").split("|")]

BEN_V2_19 = [
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
]


def test_classes_order_and_count():
  assert L.NUM_CLASSES == 12 == len(L.CLASSES)
  assert L.CLASSES[0] == "Trees" and L.CLASSES[3] == "Water"
  assert L.CLASSES[-3:] == ("Flooded Area", "Earthquake Damage", "Burned Area")


@pytest.mark.parametrize("name", BEN_V1_43 + BEN_V2_19 + ["Glaciers and perpetual snow"])
def test_table_covers_every_bigearthnet_name(name):
  assert len(BEN_V1_43) == 43 and len(BEN_V2_19) == 19
  assert L.CORINE_TO_CLASS[name] in L.CLASSES
  assert len(L.map_labels([name], "benv2s2_x")) == 1


@pytest.mark.parametrize(
  "corine,cls",
  [
    ("Rice fields", "Flooded Vegetation"),
    ("Burnt areas", "Burned Area"),
    ("Agro-forestry areas", "Trees"),
    ("Sea and ocean", "Water"),
    ("Mineral extraction sites", "Bare"),
    ("Urban fabric", "Built"),
    ("Pastures", "Grass"),
    ("Transitional woodland, shrub", "Shrub and Scrub"),
    ("Glaciers and perpetual snow", "Snow and Ice"),
  ],
)
def test_known_entries(corine, cls):
  assert L.CORINE_TO_CLASS[corine] == cls


def test_every_class_reachable_from_corine_except_crisis():
  reached = set(L.CORINE_TO_CLASS.values())
  assert set(L.CLASSES) - reached == {"Flooded Area", "Earthquake Damage"}


def test_text_rule_dedup_order_case():
  labels = ["Water bodies", "Mixed forest", "Non-irrigated arable land", "Coniferous forest"]
  assert L.labels_to_text(labels, "benv2s2_1") == "trees. crops. water"
  assert L.map_labels(labels, "k") == ["Trees", "Crops", "Water"]
  assert L.labels_to_text(["Burned Area"], "cabuar_1") == "burned area"
  assert L.labels_to_text(["flooded AREA", "Water", "Trees"], "sen2flood_1") == "trees. water. flooded area"
  assert L.labels_to_text([b"Snow and Ice"], "k") == "snow and ice"
  assert L.class_text("Snow and Ice") == "snow and ice"


def test_unknown_label_names_label_and_key():
  with pytest.raises(L.UnknownLabelError) as e:
    L.map_labels(["Mixed forest", "Lava fields"], "benv2s2_0000042")
  assert "Lava fields" in str(e.value) and "benv2s2_0000042" in str(e.value)
  assert isinstance(e.value, ValueError)


def test_empty_labels_names_key():
  with pytest.raises(L.UnknownLabelError, match="quakeset_0000007"):
    L.labels_to_text([], "quakeset_0000007")


def test_single_string_is_rejected():
  with pytest.raises(TypeError, match="k9"):
    L.map_labels("Water", "k9")


def test_multihot_and_inverse():
  mh = L.labels_to_multihot(["Rice fields", "Burnt areas", "Sea and ocean"], "k")
  assert mh.dtype == np.float32 and mh.shape == (12,)
  np.testing.assert_array_equal(np.flatnonzero(mh), [3, 6, 11])
  text = L.labels_to_text(["Rice fields", "Burnt areas", "Sea and ocean"], "k")
  assert text == "water. flooded vegetation. burned area"
  np.testing.assert_array_equal(L.text_to_multihot(text), mh)
  np.testing.assert_array_equal(
    L.text_to_multihot("  Flooded Area.water.  "), np.eye(12, dtype=np.float32)[[3, 9]].sum(0)
  )


def test_text_to_multihot_unknown_term():
  with pytest.raises(L.UnknownLabelError, match="lava"):
    L.text_to_multihot("trees. lava")
  with pytest.raises(L.UnknownLabelError):
    L.text_to_multihot(" . ")
