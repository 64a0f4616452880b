"""Tables behind the synthetic CrisisLandMark replica: materials, label recipes, places, events,
and the world's geographic rules (snowlines, event footprints, local priors).

Pure data plus small lookups; the renderer lives in synthetic_render.py and the
archive writer in synthetic.py. Values are textbook-level approximations chosen
to be physically plausible, not measurements (see docs/data.md).

Materials carry
- Sentinel-2 L2A surface reflectance (fraction, x10000 when written) for the 12
  stored bands in the release's order (B1..B8, B8A, B9, B11, B12), once at peak season and
  once dormant (leaf-off, dry, harvested); non-vegetation materials have one spectrum;
- Sentinel-1 C-band backscatter sigma0 in dB (VV, VH) at 37 degrees incidence,
  peak and dormant, its incidence-angle slope (dB per degree), the spread of
  per-scene values (dB) and whether soil moisture moves it.
Each label (CORINE level-3 name or class name) is a recipe: material weights.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np

from closp_jax.data import preprocess

# Spectra below are in the release's stored band order (B1-B8, B8A, B9, B11, B12).
S2_BANDS = preprocess.S2_STORED_BANDS


@dataclasses.dataclass(frozen=True)
class Material:
  s2_peak: tuple[float, ...]
  s2_dormant: tuple[float, ...] | None
  sar_peak: tuple[float, float]  # (VV dB, VH dB) at 37 deg
  sar_dormant: tuple[float, float] | None
  slope_db_per_deg: float
  spread_db: float
  moisture: bool = False


#           B1    B2    B3    B4    B5    B6    B7    B8    B8A   B9    B11   B12
MATERIALS: dict[str, Material] = {
  "broadleaf": Material(
    (0.020, 0.025, 0.050, 0.025, 0.080, 0.240, 0.310, 0.340, 0.350, 0.300, 0.170, 0.080),
    (0.035, 0.045, 0.065, 0.075, 0.095, 0.120, 0.140, 0.160, 0.165, 0.155, 0.220, 0.150),
    (-7.5, -13.0),
    (-8.5, -15.0),
    -0.08,
    1.0,
  ),
  "conifer": Material(
    (0.015, 0.020, 0.035, 0.018, 0.055, 0.150, 0.190, 0.210, 0.220, 0.185, 0.100, 0.045),
    (0.015, 0.020, 0.033, 0.020, 0.050, 0.125, 0.155, 0.170, 0.178, 0.150, 0.095, 0.045),
    (-7.0, -12.5),
    (-7.3, -13.0),
    -0.06,
    0.8,
  ),
  "crop": Material(
    (0.030, 0.040, 0.080, 0.040, 0.120, 0.300, 0.380, 0.410, 0.420, 0.360, 0.220, 0.110),
    (0.060, 0.075, 0.105, 0.130, 0.155, 0.175, 0.190, 0.205, 0.210, 0.200, 0.300, 0.240),
    (-9.5, -15.5),
    (-11.5, -19.0),
    -0.15,
    2.0,
    True,
  ),
  "grass": Material(
    (0.030, 0.040, 0.075, 0.050, 0.110, 0.250, 0.300, 0.320, 0.330, 0.295, 0.240, 0.130),
    (0.050, 0.065, 0.095, 0.110, 0.150, 0.190, 0.215, 0.230, 0.240, 0.225, 0.310, 0.220),
    (-10.5, -17.0),
    (-11.5, -18.5),
    -0.15,
    2.0,
    True,
  ),
  "shrub": Material(
    (0.035, 0.045, 0.070, 0.065, 0.100, 0.170, 0.200, 0.220, 0.228, 0.205, 0.240, 0.160),
    (0.040, 0.050, 0.075, 0.080, 0.110, 0.160, 0.185, 0.200, 0.206, 0.190, 0.250, 0.180),
    (-9.0, -15.0),
    (-9.5, -15.8),
    -0.10,
    1.5,
  ),
  "marsh": Material(
    (0.030, 0.035, 0.060, 0.040, 0.075, 0.160, 0.190, 0.200, 0.205, 0.160, 0.090, 0.045),
    (0.035, 0.040, 0.055, 0.050, 0.070, 0.100, 0.110, 0.115, 0.118, 0.095, 0.080, 0.045),
    (-5.5, -15.5),
    (-8.5, -17.0),
    -0.10,
    2.0,
  ),
  "soil": Material(
    (0.060, 0.080, 0.120, 0.160, 0.190, 0.210, 0.230, 0.250, 0.260, 0.240, 0.320, 0.270),
    None,
    (-12.0, -19.5),
    None,
    -0.20,
    2.5,
    True,
  ),
  "sand": Material(
    (0.120, 0.150, 0.220, 0.280, 0.310, 0.330, 0.340, 0.350, 0.360, 0.340, 0.420, 0.380),
    None,
    (-17.0, -24.0),
    None,
    -0.30,
    2.0,
  ),
  "rock": Material(
    (0.100, 0.120, 0.150, 0.180, 0.200, 0.210, 0.220, 0.230, 0.240, 0.220, 0.280, 0.250),
    None,
    (-9.0, -16.5),
    None,
    -0.15,
    2.0,
  ),
  "water": Material(
    (0.060, 0.055, 0.045, 0.025, 0.018, 0.012, 0.010, 0.009, 0.008, 0.006, 0.004, 0.003),
    None,
    (-19.0, -26.0),
    None,
    -0.35,
    3.0,
  ),
  "floodwater": Material(
    (0.075, 0.085, 0.110, 0.100, 0.090, 0.060, 0.048, 0.042, 0.036, 0.025, 0.012, 0.008),
    None,
    (-21.0, -27.0),
    None,
    -0.35,
    2.0,
  ),
  "built": Material(
    (0.100, 0.110, 0.125, 0.140, 0.155, 0.170, 0.180, 0.190, 0.200, 0.185, 0.250, 0.220),
    None,
    (-3.5, -10.5),
    None,
    -0.05,
    2.5,
  ),
  "rubble": Material(
    (0.140, 0.160, 0.190, 0.210, 0.230, 0.240, 0.250, 0.260, 0.270, 0.250, 0.300, 0.270),
    None,
    (-7.5, -14.0),
    None,
    -0.10,
    2.0,
  ),  # SAR: derived per scene from "built" (renderer)
  "snow": Material(
    (0.850, 0.880, 0.870, 0.840, 0.820, 0.800, 0.780, 0.760, 0.740, 0.600, 0.050, 0.040),
    None,
    (-14.0, -21.0),
    None,
    -0.15,
    2.5,
  ),
  "burned": Material(
    (0.030, 0.035, 0.045, 0.050, 0.060, 0.070, 0.080, 0.090, 0.095, 0.088, 0.160, 0.150),
    None,
    (-9.5, -16.5),
    None,
    -0.12,
    1.5,
  ),
}
MATERIAL_NAMES: tuple[str, ...] = tuple(MATERIALS)
MATERIAL_INDEX = {m: i for i, m in enumerate(MATERIAL_NAMES)}
# A vegetated material whose phenology varies a lot from field to field.
FIELD_MATERIALS = ("crop",)

# Label -> material weights. CORINE level-3 names (what benv2 samples store) and
# the 12 class names (what the other sources store).
RECIPES: dict[str, dict[str, float]] = {
  "Continuous urban fabric": {"built": 0.85, "grass": 0.10, "broadleaf": 0.05},
  "Discontinuous urban fabric": {"built": 0.55, "grass": 0.25, "broadleaf": 0.20},
  "Industrial or commercial units": {"built": 0.85, "soil": 0.10, "grass": 0.05},
  "Road and rail networks and associated land": {"built": 0.60, "grass": 0.30, "soil": 0.10},
  "Port areas": {"built": 0.70, "water": 0.30},
  "Airports": {"built": 0.45, "grass": 0.55},
  "Mineral extraction sites": {"rock": 0.50, "soil": 0.30, "sand": 0.20},
  "Dump sites": {"soil": 0.60, "built": 0.30, "rock": 0.10},
  "Construction sites": {"soil": 0.60, "built": 0.40},
  "Green urban areas": {"grass": 0.60, "broadleaf": 0.30, "built": 0.10},
  "Sport and leisure facilities": {"grass": 0.80, "built": 0.20},
  "Non-irrigated arable land": {"crop": 0.75, "soil": 0.25},
  "Permanently irrigated land": {"crop": 0.90, "soil": 0.10},
  "Rice fields": {"marsh": 0.70, "crop": 0.30},
  "Vineyards": {"soil": 0.55, "crop": 0.45},
  "Fruit trees and berry plantations": {"broadleaf": 0.50, "grass": 0.30, "soil": 0.20},
  "Olive groves": {"broadleaf": 0.35, "soil": 0.45, "grass": 0.20},
  "Pastures": {"grass": 1.0},
  "Annual crops associated with permanent crops": {"crop": 0.60, "broadleaf": 0.20, "soil": 0.20},
  "Complex cultivation patterns": {"crop": 0.45, "grass": 0.30, "soil": 0.15, "broadleaf": 0.10},
  "Land principally occupied by agriculture, with significant areas of natural vegetation": {
    "crop": 0.40,
    "grass": 0.20,
    "broadleaf": 0.25,
    "shrub": 0.15,
  },
  "Agro-forestry areas": {"broadleaf": 0.55, "grass": 0.35, "soil": 0.10},
  "Broad-leaved forest": {"broadleaf": 1.0},
  "Coniferous forest": {"conifer": 1.0},
  "Mixed forest": {"broadleaf": 0.50, "conifer": 0.50},
  "Natural grassland": {"grass": 0.85, "shrub": 0.10, "rock": 0.05},
  "Moors and heathland": {"shrub": 0.75, "grass": 0.25},
  "Sclerophyllous vegetation": {"shrub": 0.80, "soil": 0.20},
  "Transitional woodland/shrub": {"shrub": 0.55, "broadleaf": 0.25, "conifer": 0.20},
  "Beaches, dunes, sands": {"sand": 1.0},
  "Bare rock": {"rock": 1.0},
  "Sparsely vegetated areas": {"rock": 0.55, "grass": 0.30, "shrub": 0.15},
  "Burnt areas": {"burned": 0.85, "shrub": 0.15},
  "Glaciers and perpetual snow": {"snow": 0.90, "rock": 0.10},
  "Inland marshes": {"marsh": 0.85, "water": 0.15},
  "Peatbogs": {"marsh": 0.55, "grass": 0.30, "conifer": 0.15},
  "Salt marshes": {"marsh": 0.80, "water": 0.20},
  "Salines": {"sand": 0.50, "water": 0.50},
  "Intertidal flats": {"soil": 0.60, "water": 0.40},
  "Water courses": {"water": 0.90, "grass": 0.10},
  "Water bodies": {"water": 1.0},
  "Coastal lagoons": {"water": 0.90, "floodwater": 0.10},
  "Estuaries": {"floodwater": 0.60, "water": 0.40},
  "Sea and ocean": {"water": 1.0},
  # class names
  "Trees": {"broadleaf": 0.50, "conifer": 0.50},
  "Crops": {"crop": 0.80, "soil": 0.20},
  "Shrub and Scrub": {"shrub": 0.80, "soil": 0.10, "grass": 0.10},
  "Water": {"water": 1.0},
  "Grass": {"grass": 0.90, "shrub": 0.10},
  "Built": {"built": 0.70, "grass": 0.20, "broadleaf": 0.10},
  "Flooded Vegetation": {"marsh": 0.85, "water": 0.15},
  "Bare": {"soil": 0.50, "sand": 0.25, "rock": 0.25},
  "Snow and Ice": {"snow": 0.90, "rock": 0.10},
  "Flooded Area": {"floodwater": 0.80, "marsh": 0.20},
  "Earthquake Damage": {"rubble": 0.80, "built": 0.20},
  "Burned Area": {"burned": 0.90, "soil": 0.10},
}
# Small unlabelled features (below the labelling minimum mapping unit).
CLUTTER_RECIPES: tuple[dict[str, float], ...] = (
  {"built": 1.0},
  {"water": 1.0},
  {"soil": 1.0},
  {"broadleaf": 1.0},
  {"grass": 1.0},
)

# ------------------------------------------------------------------------------ geography
# The world's rules (docs/data.md, "Geography"): every sample is drawn at a place (a lon/lat box
# with an elevation range); what it can show follows from where and when it is.
# * Land cover: a BigEarthNet country is a few zones, each with its own CORINE prior. Widespread
#   classes (forest, arable land, pastures, water bodies, towns) are common everywhere; the rare
#   ones live only in the zones whose setting makes them: glaciers, bare rock and alpine grassland
#   in the high Alps, rice fields, salt marshes, salines and tidal flats in the Tagus and Sado
#   estuaries, fell heath and sparse vegetation in Lapland, dunes and a lagoon on the Curonian
#   coast, open-pit mines in Kosovo, montado and olive groves in the Alentejo, ...
# * Snow and ice by latitude and altitude: the permanent snowline falls with latitude
#   (`snowline_m`), and in the local winter a seasonal snowline lies below it outside the tropics
#   (`seasonal_snowline_m`). Glaciers ("Glaciers and perpetual snow") occur only above the
#   permanent snowline; a crisis scene above the seasonal snowline on its date carries "Snow and
#   Ice"; a BigEarthNet scene is never under seasonal snow (BigEarthNet left such patches out: its
#   date is drawn again).
# * Crises where they happen: earthquakes on plate boundaries, floods on river plains and deltas,
#   burned areas in a Mediterranean climate's fire season. Each event has a footprint (the fault
#   rupture, the river, the fire's run) and a reach; a scene shows the crisis only when it is
#   dated after the event AND lies within the reach of the footprint.

# Relative frequency of the widespread CORINE level-3 labels in BigEarthNet-like scenes. Every
# other label (RARE_CORINE) has no base weight: only the zones that name it have it.
CORINE_BASE_PRIOR: dict[str, float] = {
  "Mixed forest": 0.90,
  "Coniferous forest": 0.80,
  "Non-irrigated arable land": 0.80,
  "Transitional woodland/shrub": 0.45,
  "Broad-leaved forest": 0.60,
  "Land principally occupied by agriculture, with significant areas of natural vegetation": 0.55,
  "Complex cultivation patterns": 0.45,
  "Pastures": 0.45,
  "Water bodies": 0.30,
  "Discontinuous urban fabric": 0.25,
  "Industrial or commercial units": 0.04,
  "Continuous urban fabric": 0.02,
  "Water courses": 0.02,
  "Road and rail networks and associated land": 0.01,
  "Sport and leisure facilities": 0.01,
  "Green urban areas": 0.005,
}
RARE_CORINE: tuple[str, ...] = (
  "Agro-forestry areas",
  "Peatbogs",
  "Permanently irrigated land",
  "Natural grassland",
  "Olive groves",
  "Sclerophyllous vegetation",
  "Fruit trees and berry plantations",
  "Vineyards",
  "Moors and heathland",
  "Rice fields",
  "Annual crops associated with permanent crops",
  "Inland marshes",
  "Mineral extraction sites",
  "Sparsely vegetated areas",
  "Estuaries",
  "Coastal lagoons",
  "Beaches, dunes, sands",
  "Construction sites",
  "Bare rock",
  "Airports",
  "Salt marshes",
  "Burnt areas",
  "Dump sites",
  "Intertidal flats",
  "Port areas",
  "Salines",
  "Sea and ocean",
  "Glaciers and perpetual snow",
)
GLACIER = "Glaciers and perpetual snow"


@dataclasses.dataclass(frozen=True)
class Footprint:
  """Where an event strikes: a lon/lat polyline (a river, a fault rupture, a fire's run) and how
  far from it the crisis reaches (flood plain half-width, damage distance, fire half-width)."""

  kind: str  # "river", "fault" or "fire"
  line: tuple[tuple[float, float], ...]  # (lon, lat) vertices
  reach_km: float


@dataclasses.dataclass(frozen=True)
class Place:
  """A lon/lat box with an elevation range and a label prior: a zone of a BigEarthNet country, or
  a crisis event (with its date and footprint)."""

  name: str
  lon: tuple[float, float]
  lat: tuple[float, float]
  weight: float
  prior: dict[str, float]  # label -> relative weight
  date: dt.date | None = None  # event date (crisis sources)
  elevation: tuple[float, float] = (0.0, 300.0)  # metres above sea level, drawn uniformly
  footprint: Footprint | None = None
  region: str = ""  # the country of a zone


def snowline_m(lat: float) -> float:
  """Permanent snowline (m) at latitude `lat`: 5,600 cos(lat)^1.7, about 5,500 m in the tropics,
  3,000 m in the Alps, 1,100 m in Lapland (textbook equilibrium-line altitudes, smoothed)."""
  return 5600.0 * math.cos(math.radians(abs(lat))) ** 1.7


def seasonal_snowline_m(lat: float, day: dt.date) -> float:
  """Snowline (m) on `day`: the permanent one lowered in the local winter by up to
  3,000 m x clip((|lat| - 20) / 25, 0, 1) (no seasonal snow in the tropics; the whole range
  poleward of 45 degrees), following cos(2 pi (day of year - coldest day) / 365) where positive
  (coldest day: 15 January north, 15 July south)."""
  coldest = 15 if lat >= 0 else 196
  winter = max(0.0, math.cos(2 * math.pi * (day.timetuple().tm_yday - coldest) / 365.0))
  amplitude = 3000.0 * min(max((abs(lat) - 20.0) / 25.0, 0.0), 1.0)
  return snowline_m(lat) - amplitude * winter


def distance_km(lon: float, lat: float, line: tuple[tuple[float, float], ...]) -> float:
  """Distance (km) from (lon, lat) to a polyline, on a local equirectangular plane (fine over the
  tens of kilometres that matter here)."""
  kx = 111.32 * math.cos(math.radians(lat))
  p = np.array([lon * kx, lat * 110.57])
  pts = np.array([(x * kx, y * 110.57) for x, y in line])
  if len(pts) == 1:
    return float(np.hypot(*(p - pts[0])))
  best = np.inf
  for a, b in zip(pts[:-1], pts[1:]):
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0))
    best = min(best, float(np.hypot(*(p - (a + t * ab)))))
  return best


def local_prior(place: Place, lat: float, elevation: float) -> dict[str, float]:
  """The place's prior at one spot: glaciers only above the permanent snowline, and there they
  dominate (x 4); bare rock and sparse vegetation gain (x 2) as the ground nears it (within 600 m)."""
  line = snowline_m(lat)
  out = dict(place.prior)
  if out.get(GLACIER, 0) > 0:
    out[GLACIER] = out[GLACIER] * 4.0 if elevation >= line else 0.0
  if elevation >= line - 600.0:
    for label in ("Bare rock", "Sparsely vegetated areas"):
      if out.get(label, 0) > 0:
        out[label] *= 2.0
  return out


_SHORT = {
  "conif": "Coniferous forest",
  "mixed": "Mixed forest",
  "broad": "Broad-leaved forest",
  "trans": "Transitional woodland/shrub",
  "peat": "Peatbogs",
  "lakes": "Water bodies",
  "sea": "Sea and ocean",
  "arable": "Non-irrigated arable land",
  "olive": "Olive groves",
  "scler": "Sclerophyllous vegetation",
  "agrofor": "Agro-forestry areas",
  "vine": "Vineyards",
  "burnt": "Burnt areas",
  "beach": "Beaches, dunes, sands",
  "rice": "Rice fields",
  "irrig": "Permanently irrigated land",
  "pasture": "Pastures",
  "rock": "Bare rock",
  "natgrass": "Natural grassland",
  "glacier": GLACIER,
  "moor": "Moors and heathland",
  "urban": "Discontinuous urban fabric",
  "dense": "Continuous urban fabric",
  "industry": "Industrial or commercial units",
  "complex": "Complex cultivation patterns",
  "agrinat": "Land principally occupied by agriculture, with significant areas of natural vegetation",
  "marsh": "Inland marshes",
  "rivers": "Water courses",
  "mineral": "Mineral extraction sites",
  "sparse": "Sparsely vegetated areas",
  "fruit": "Fruit trees and berry plantations",
  "saltmarsh": "Salt marshes",
  "salines": "Salines",
  "tidal": "Intertidal flats",
  "estuary": "Estuaries",
  "lagoon": "Coastal lagoons",
  "port": "Port areas",
  "dump": "Dump sites",
  "construction": "Construction sites",
  "airport": "Airports",
  "annual": "Annual crops associated with permanent crops",
}


def _zone(region, name, lon, lat, weight, elevation, **weights):
  """A zone of a BigEarthNet country: the base prior, with `weights` setting labels by short name
  (a rare label gets the weight itself; a widespread one is multiplied by it)."""
  prior = dict(CORINE_BASE_PRIOR)
  prior.update({k: 0.0 for k in RARE_CORINE})
  for key, w in weights.items():
    label = _SHORT[key]
    prior[label] = CORINE_BASE_PRIOR[label] * w if label in CORINE_BASE_PRIOR else w
  return Place(f"{name}, {region}", lon, lat, weight, prior, elevation=elevation, region=region)


# (weights of zones are shares of all BigEarthNet samples)
BENV2_PLACES: tuple[Place, ...] = (
  _zone(
    "Finland",
    "Southwest coast",
    (21.5, 24.8),
    (60.2, 61.8),
    0.06,
    (0, 150),
    arable=3,
    sea=0.4,
    urban=2,
    industry=2,
    complex=2,
    mixed=1.2,
    conif=1.2,
    port=0.01,
  ),
  _zone(
    "Finland",
    "Lakeland",
    (25.5, 29.8),
    (61.2, 63.8),
    0.10,
    (80, 250),
    conif=3,
    mixed=2,
    lakes=4,
    peat=0.1,
    trans=2,
    arable=0.4,
    pasture=0.3,
  ),
  _zone(
    "Finland",
    "Lapland",
    (24.0, 29.5),
    (66.0, 68.8),
    0.08,
    (150, 700),
    conif=3,
    mixed=0.5,
    peat=1.2,
    moor=0.8,
    sparse=0.5,
    trans=1.5,
    lakes=1.5,
    arable=0,
    complex=0,
    agrinat=0.2,
    urban=0.2,
    pasture=0.1,
  ),
  _zone(
    "Portugal",
    "North and Centre",
    (-8.8, -7.0),
    (40.2, 42.0),
    0.07,
    (100, 1200),
    broad=2,
    conif=1.5,
    trans=3,
    burnt=0.25,
    vine=0.35,
    complex=2,
    pasture=0.7,
    natgrass=0.1,
    mixed=0.5,
  ),
  _zone(
    "Portugal",
    "Alentejo",
    (-8.6, -7.0),
    (37.6, 39.5),
    0.05,
    (50, 400),
    agrofor=0.9,
    olive=0.6,
    scler=0.5,
    arable=1.2,
    irrig=0.15,
    annual=0.05,
    lakes=0.5,
    conif=0.3,
    mixed=0.2,
    broad=0.5,
  ),
  _zone(
    "Portugal",
    "Tagus and Sado estuaries",
    (-9.2, -8.5),
    (38.4, 39.2),
    0.025,
    (0, 40),
    rice=0.6,
    saltmarsh=0.5,
    salines=0.4,
    tidal=0.4,
    estuary=0.6,
    beach=0.2,
    sea=0.3,
    urban=3,
    irrig=0.3,
    port=0.05,
    conif=0.3,
    mixed=0.1,
    broad=0.3,
    airport=0.02,
  ),
  _zone(
    "Austria",
    "Tyrolean Alps",
    (10.2, 13.0),
    (46.8, 47.4),
    0.04,
    (900, 3300),
    conif=3,
    rock=0.5,
    natgrass=0.5,
    glacier=0.3,
    sparse=0.3,
    pasture=1.5,
    mixed=0.5,
    arable=0,
    complex=0.3,
  ),
  _zone(
    "Austria",
    "Danube lowlands",
    (14.5, 16.9),
    (47.8, 48.8),
    0.07,
    (150, 400),
    arable=2.5,
    vine=0.3,
    complex=1.5,
    broad=1.5,
    urban=2,
    rivers=5,
    conif=0.5,
  ),
  _zone(
    "Serbia",
    "Vojvodina plain",
    (19.2, 21.5),
    (44.9, 45.9),
    0.055,
    (70, 120),
    arable=4,
    complex=1.2,
    rivers=6,
    marsh=0.03,
    urban=1.2,
    conif=0.1,
    mixed=0.3,
    trans=0.5,
  ),
  _zone(
    "Serbia",
    "Sumadija hills",
    (20.0, 22.5),
    (43.2, 44.6),
    0.055,
    (200, 1000),
    broad=3,
    complex=2,
    fruit=0.4,
    pasture=1.2,
    conif=0.3,
    mixed=0.5,
  ),
  _zone(
    "Lithuania",
    "Lowlands",
    (22.5, 26.0),
    (54.3, 55.9),
    0.08,
    (30, 200),
    arable=2.5,
    mixed=1.5,
    pasture=1.2,
    marsh=0.05,
    peat=0.03,
    lakes=2,
  ),
  _zone(
    "Lithuania",
    "Curonian coast",
    (20.95, 21.3),
    (55.3, 55.9),
    0.02,
    (0, 60),
    beach=0.8,
    lagoon=0.8,
    sea=0.4,
    conif=2,
    mixed=0.5,
    arable=0.3,
    agrinat=0.5,
  ),
  _zone(
    "Ireland",
    "Midlands and west",
    (-9.9, -6.3),
    (52.0, 54.5),
    0.115,
    (20, 700),
    pasture=5,
    peat=0.7,
    moor=0.5,
    sea=0.15,
    lakes=1.2,
    tidal=0.03,
    beach=0.02,
    arable=0.3,
    conif=0.7,
    mixed=0.3,
    broad=0.3,
    trans=0.8,
  ),
  _zone(
    "Switzerland",
    "Valais and Bernese Alps",
    (7.0, 8.6),
    (45.9, 46.7),
    0.055,
    (1200, 4200),
    rock=0.8,
    glacier=0.6,
    natgrass=0.6,
    sparse=0.5,
    conif=2,
    pasture=1.2,
    lakes=0.5,
    arable=0,
    complex=0,
    mixed=0.3,
    urban=0.3,
  ),
  _zone(
    "Switzerland",
    "Plateau",
    (6.8, 9.5),
    (46.9, 47.6),
    0.03,
    (400, 800),
    arable=1.2,
    pasture=3,
    lakes=3,
    urban=2,
    mixed=1.5,
    conif=1.2,
  ),
  _zone(
    "Belgium",
    "Flanders and Wallonia",
    (3.0, 5.8),
    (50.2, 51.3),
    0.05,
    (0, 300),
    arable=2,
    urban=3,
    industry=4,
    complex=2,
    pasture=1.5,
    mineral=0.06,
    dump=0.04,
    construction=0.04,
    conif=0.5,
    dense=3,
    port=0.02,
    airport=0.02,
  ),
  _zone(
    "Kosovo",
    "Kosovo basin and hills",
    (20.3, 21.6),
    (42.2, 43.1),
    0.03,
    (400, 2000),
    broad=2.5,
    arable=1.5,
    complex=2,
    mineral=0.5,
    natgrass=0.2,
    pasture=0.8,
    dump=0.05,
  ),
  _zone(
    "Luxembourg",
    "Luxembourg",
    (5.85, 6.45),
    (49.5, 50.1),
    0.02,
    (200, 550),
    broad=1.5,
    arable=1.5,
    pasture=1.5,
    fruit=0.03,
    urban=1.2,
  ),
)

BENV2_PERIOD = (dt.date(2017, 6, 1), dt.date(2018, 5, 31))


def _event(name, lon, lat, date, elevation, footprint, **prior):
  names = {
    "trees": "Trees",
    "crops": "Crops",
    "shrub": "Shrub and Scrub",
    "water": "Water",
    "grass": "Grass",
    "built": "Built",
    "floodveg": "Flooded Vegetation",
    "bare": "Bare",
    "snow": "Snow and Ice",
  }
  return Place(
    name, lon, lat, 1.0, {names[k]: v for k, v in prior.items()}, date, elevation=elevation, footprint=footprint
  )


def _river(*line, reach_km=6.0):
  return Footprint("river", tuple(line), reach_km)


def _fault(*line, reach_km=15.0):
  return Footprint("fault", tuple(line), reach_km)


def _fire(*line, reach_km=6.0):
  return Footprint("fire", tuple(line), reach_km)


# Fire-prone: Mediterranean climate (dry summer); every fire below is dated in its dry season
# (FIRE_SEASON_MONTHS).
FIRE_SEASON_MONTHS = (6, 7, 8, 9, 10, 11, 12)
CALIFORNIA_FIRES: tuple[Place, ...] = (
  _event(
    "Camp Fire, California",
    (-121.8, -121.4),
    (39.6, 39.9),
    dt.date(2018, 11, 8),
    (200, 1500),
    _fire((-121.45, 39.82), (-121.62, 39.76), (-121.72, 39.70)),
    trees=3,
    shrub=3,
    grass=2,
    built=1.5,
    bare=1,
  ),
  _event(
    "Mendocino Complex, California",
    (-123.1, -122.4),
    (39.1, 39.5),
    dt.date(2018, 7, 27),
    (300, 2000),
    _fire((-123.0, 39.2), (-122.8, 39.35), (-122.55, 39.42), reach_km=8.0),
    trees=3,
    shrub=4,
    grass=3,
    bare=1,
    water=0.5,
  ),
  _event(
    "Creek Fire, California",
    (-119.5, -119.0),
    (37.1, 37.6),
    dt.date(2020, 9, 4),
    (600, 3200),
    _fire((-119.25, 37.2), (-119.3, 37.35), (-119.15, 37.5), reach_km=7.0),
    trees=4,
    shrub=2,
    bare=2,
    grass=1,
    water=0.5,
  ),
  _event(
    "Dixie Fire, California",
    (-121.4, -120.5),
    (39.8, 40.5),
    dt.date(2021, 7, 13),
    (500, 2300),
    _fire((-121.3, 39.9), (-121.0, 40.1), (-120.7, 40.3), reach_km=9.0),
    trees=4,
    shrub=2,
    grass=2,
    bare=1,
    water=0.5,
  ),
  _event(
    "Thomas Fire, California",
    (-119.5, -119.0),
    (34.3, 34.6),
    dt.date(2017, 12, 4),
    (0, 1800),
    _fire((-119.1, 34.38), (-119.3, 34.45), (-119.45, 34.5)),
    shrub=5,
    grass=2,
    trees=1,
    built=1,
    bare=1,
  ),
  _event(
    "Kincade Fire, California",
    (-122.9, -122.6),
    (38.6, 38.8),
    dt.date(2019, 10, 23),
    (50, 1200),
    _fire((-122.75, 38.78), (-122.82, 38.68), reach_km=5.0),
    trees=3,
    shrub=3,
    grass=3,
    crops=1,
    built=1,
  ),
)
# Floods on river plains and deltas: the footprint follows the river; the plain floods within reach.
FLOODS_SEN12: tuple[Place, ...] = (
  _event(
    "Cyclone Idai, Mozambique",
    (33.8, 35.3),
    (-20.3, -19.2),
    dt.date(2019, 3, 15),
    (0, 60),
    _river((33.9, -19.5), (34.5, -19.7), (35.2, -19.9), reach_km=10.0),
    crops=3,
    grass=2,
    floodveg=2,
    water=2,
    trees=1.5,
    shrub=1,
    built=1,
  ),
  _event(
    "Khuzestan floods, Iran",
    (48.0, 49.4),
    (31.0, 32.4),
    dt.date(2019, 4, 1),
    (0, 150),
    _river((48.6, 32.3), (48.7, 31.7), (48.9, 31.1), reach_km=8.0),
    crops=3,
    bare=3,
    water=2,
    built=1.5,
    grass=0.5,
  ),
  _event(
    "Townsville floods, Australia",
    (145.8, 147.0),
    (-20.5, -19.0),
    dt.date(2019, 2, 4),
    (0, 200),
    _river((146.2, -20.4), (146.6, -19.6), (146.8, -19.2), reach_km=7.0),
    grass=3,
    trees=2,
    shrub=2,
    water=1.5,
    built=1,
    crops=0.5,
  ),
  _event(
    "Shabelle floods, Somalia",
    (44.8, 46.0),
    (2.0, 3.5),
    dt.date(2019, 5, 5),
    (0, 150),
    _river((45.6, 3.4), (45.3, 2.8), (44.9, 2.1), reach_km=8.0),
    shrub=3,
    bare=2,
    crops=2,
    grass=1.5,
    water=1,
  ),
  _event(
    "Cuvelai floods, Namibia",
    (15.0, 16.5),
    (-18.0, -17.0),
    dt.date(2019, 4, 20),
    (1050, 1150),
    _river((15.3, -17.1), (15.7, -17.5), (16.1, -17.9), reach_km=10.0),
    grass=3,
    shrub=2,
    bare=1.5,
    water=1,
    floodveg=1,
  ),
)
FLOODS_MMFLOOD: tuple[Place, ...] = (
  _event(
    "Emilia-Romagna floods, Italy",
    (11.0, 12.3),
    (44.4, 44.9),
    dt.date(2019, 11, 17),
    (0, 60),
    _river((11.1, 44.8), (11.6, 44.7), (12.2, 44.6)),
    crops=4,
    built=1.5,
    water=1.5,
    trees=1,
  ),
  _event(
    "Ahr and Meuse floods, Germany/Belgium",
    (6.4, 7.2),
    (50.3, 50.8),
    dt.date(2021, 7, 15),
    (100, 350),
    _river((6.5, 50.45), (6.8, 50.52), (7.15, 50.55), reach_km=3.0),
    trees=3,
    crops=2,
    built=2,
    grass=2,
    water=1,
  ),
  _event(
    "Brahmaputra floods, Bangladesh",
    (89.5, 90.8),
    (24.0, 25.5),
    dt.date(2020, 7, 20),
    (5, 30),
    _river((89.7, 25.4), (89.75, 24.8), (89.8, 24.1), reach_km=12.0),
    crops=4,
    floodveg=3,
    water=3,
    built=1.5,
    trees=1,
  ),
  _event(
    "Ayeyarwady floods, Myanmar",
    (94.8, 95.8),
    (16.5, 18.0),
    dt.date(2015, 8, 5),
    (0, 20),
    _river((95.3, 17.9), (95.2, 17.2), (95.1, 16.6), reach_km=12.0),
    crops=3,
    floodveg=3,
    water=2,
    trees=1.5,
  ),
  _event(
    "Medicane Ianos floods, Greece",
    (21.8, 22.6),
    (39.3, 39.8),
    dt.date(2020, 9, 20),
    (50, 300),
    _river((21.9, 39.6), (22.2, 39.55), (22.5, 39.65)),
    crops=4,
    shrub=1.5,
    built=1,
    bare=1,
  ),
  _event(
    "Shire floods, Malawi",
    (34.8, 35.4),
    (-16.8, -15.8),
    dt.date(2019, 3, 10),
    (40, 200),
    _river((34.9, -15.9), (35.1, -16.3), (35.25, -16.7)),
    crops=3,
    grass=2,
    shrub=2,
    water=1,
    floodveg=1,
  ),
  _event(
    "Paraguay River floods, Paraguay",
    (-58.0, -57.2),
    (-25.6, -24.8),
    dt.date(2019, 5, 10),
    (50, 120),
    _river((-57.5, -24.9), (-57.6, -25.2), (-57.7, -25.5), reach_km=10.0),
    grass=3,
    floodveg=3,
    water=2,
    trees=2,
  ),
)
# Earthquakes on plate boundaries: the footprint is the surface rupture (or the epicentral area).
EARTHQUAKES: tuple[Place, ...] = (
  _event(
    "Kahramanmaras earthquake, Turkey",
    (36.0, 38.4),
    (36.2, 38.2),
    dt.date(2023, 2, 6),
    (300, 2500),
    _fault((36.1, 36.3), (36.7, 37.2), (37.5, 37.7), (38.3, 38.1), reach_km=25.0),
    built=4,
    crops=3,
    bare=2,
    grass=1.5,
  ),
  _event(
    "Gorkha earthquake, Nepal",
    (84.6, 86.0),
    (27.6, 28.2),
    dt.date(2015, 4, 25),
    (500, 5500),
    _fault((84.7, 28.15), (85.3, 27.9), (85.9, 27.7), reach_km=20.0),
    built=3,
    trees=3,
    crops=2.5,
    grass=1,
    bare=0.5,
  ),
  _event(
    "Amatrice earthquake, Italy",
    (13.1, 13.4),
    (42.55, 42.8),
    dt.date(2016, 8, 24),
    (500, 2400),
    _fault((13.2, 42.6), (13.3, 42.75), reach_km=10.0),
    built=3,
    trees=3,
    grass=2.5,
    crops=1,
  ),
  _event(
    "Puebla earthquake, Mexico",
    (-99.3, -98.3),
    (18.4, 19.4),
    dt.date(2017, 9, 19),
    (1000, 2600),
    _fault((-98.7, 18.5), reach_km=40.0),
    built=4,
    crops=2.5,
    trees=1.5,
    grass=1,
  ),
  _event(
    "Palu earthquake, Indonesia",
    (119.75, 120.0),
    (-1.05, -0.75),
    dt.date(2018, 9, 28),
    (0, 500),
    _fault((119.85, -0.76), (119.87, -1.04), reach_km=6.0),
    built=4,
    trees=3,
    water=1.5,
    crops=1,
  ),
  _event(
    "Al Haouz earthquake, Morocco",
    (-8.6, -7.8),
    (30.9, 31.3),
    dt.date(2023, 9, 8),
    (800, 3500),
    _fault((-8.4, 31.0), (-8.1, 31.1), reach_km=25.0),
    built=3,
    bare=4,
    shrub=2,
    crops=1,
  ),
  _event(
    "Noto earthquake, Japan",
    (136.75, 137.3),
    (37.15, 37.5),
    dt.date(2024, 1, 1),
    (0, 500),
    _fault((136.8, 37.3), (137.05, 37.45), (137.25, 37.5), reach_km=12.0),
    built=3,
    trees=4,
    crops=1.5,
    water=1.5,
  ),
)


@dataclasses.dataclass(frozen=True)
class Source:
  """One CrisisLandMark source: sensor, shard file, share of its sensor, places."""

  name: str
  sensor: str  # "s2" or "s1"
  file: str  # shard name; "{part}" marks a split into parts
  share: float  # fraction of its sensor's samples
  places: tuple[Place, ...]
  event_label: str | None  # crisis label (None for BigEarthNet)
  channels: tuple[str, ...]  # stored channel order
  after_rate: float = 0.85  # crisis sources: share of scenes dated after the event
  near_rate: float = 0.8  # ... and of scenes drawn within the reach of its footprint


S2_CH = S2_BANDS
# The release's layout: every S1 source stores (VV, VH) (preprocess.S1_RULE_SETS["release"]).
S1_CH = preprocess.S1_RULE_SETS["release"]
SOURCES: tuple[Source, ...] = (
  Source("benv2s2", "s2", "benv2s2_part{part}.h5", 0.80, BENV2_PLACES, None, S2_CH),
  Source("cabuar", "s2", "cabuar.h5", 0.10, CALIFORNIA_FIRES, "Burned Area", S2_CH),
  Source("sen2flood", "s2", "sen12flood.h5", 0.10, FLOODS_SEN12, "Flooded Area", S2_CH),
  Source("benv2s1", "s1", "benv2s1_part{part}.h5", 0.70, BENV2_PLACES, None, S1_CH["benv2s1"]),
  Source("mmflood", "s1", "mmflood.h5", 0.12, FLOODS_MMFLOOD, "Flooded Area", S1_CH["mmflood"]),
  Source("sen1flood", "s1", "sen12flood.h5", 0.08, FLOODS_SEN12, "Flooded Area", S1_CH["sen1flood"]),
  Source("quakeset", "s1", "quakeset.h5", 0.10, EARTHQUAKES, "Earthquake Damage", S1_CH["quakeset"]),
)
SOURCE_BY_NAME = {s.name: s for s in SOURCES}
# Share of a patch that a crisis covers when the scene lies on the footprint (halved at the reach).
EVENT_SHARE = {"Flooded Area": (0.10, 0.60), "Burned Area": (0.15, 0.70), "Earthquake Damage": (0.05, 0.30)}
BENV2_PARTS = 4


def recipe_matrix(recipes: list[dict[str, float]]) -> np.ndarray:
  """float64 [len(recipes), n_materials] material weights (rows sum to 1)."""
  out = np.zeros((len(recipes), len(MATERIAL_NAMES)))
  for i, recipe in enumerate(recipes):
    for m, w in recipe.items():
      out[i, MATERIAL_INDEX[m]] = w
  return out / out.sum(1, keepdims=True)


def material_arrays() -> dict[str, np.ndarray]:
  """Material tables as arrays: s2 peak/dormant [M,12], sar peak/dormant [M,2], slope, spread, moist."""
  mats = [MATERIALS[m] for m in MATERIAL_NAMES]
  return {
    "s2_peak": np.array([m.s2_peak for m in mats]),
    "s2_dormant": np.array([m.s2_dormant or m.s2_peak for m in mats]),
    "sar_peak": np.array([m.sar_peak for m in mats]),
    "sar_dormant": np.array([m.sar_dormant or m.sar_peak for m in mats]),
    "slope": np.array([m.slope_db_per_deg for m in mats]),
    "spread": np.array([m.spread_db for m in mats]),
    "moisture": np.array([m.moisture for m in mats], dtype=bool),
    "field": np.array([n in FIELD_MATERIALS for n in MATERIAL_NAMES], dtype=bool),
  }
