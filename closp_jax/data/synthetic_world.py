"""Tables behind the synthetic CrisisLandMark replica: materials, label recipes, places, events.

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

import numpy as np

from closp_jax.data import preprocess

# Spectra below are in the release's stored band order (B1-B8, B8A, B9, B11, B12).
S2_BANDS = preprocess.S2_STORED_BANDS


@dataclasses.dataclass(frozen=True)
class Material:
  s2_peak: tuple[float, ...]
  s2_dormant: tuple[float, ...] | None
  sar_peak: tuple[float, float]          # (VV dB, VH dB) at 37 deg
  sar_dormant: tuple[float, float] | None
  slope_db_per_deg: float
  spread_db: float
  moisture: bool = False


#           B1    B2    B3    B4    B5    B6    B7    B8    B8A   B9    B11   B12
MATERIALS: dict[str, Material] = {
    "broadleaf": Material(
        (.020, .025, .050, .025, .080, .240, .310, .340, .350, .300, .170, .080),
        (.035, .045, .065, .075, .095, .120, .140, .160, .165, .155, .220, .150),
        (-7.5, -13.0), (-8.5, -15.0), -0.08, 1.0),
    "conifer": Material(
        (.015, .020, .035, .018, .055, .150, .190, .210, .220, .185, .100, .045),
        (.015, .020, .033, .020, .050, .125, .155, .170, .178, .150, .095, .045),
        (-7.0, -12.5), (-7.3, -13.0), -0.06, 0.8),
    "crop": Material(
        (.030, .040, .080, .040, .120, .300, .380, .410, .420, .360, .220, .110),
        (.060, .075, .105, .130, .155, .175, .190, .205, .210, .200, .300, .240),
        (-9.5, -15.5), (-11.5, -19.0), -0.15, 2.0, True),
    "grass": Material(
        (.030, .040, .075, .050, .110, .250, .300, .320, .330, .295, .240, .130),
        (.050, .065, .095, .110, .150, .190, .215, .230, .240, .225, .310, .220),
        (-10.5, -17.0), (-11.5, -18.5), -0.15, 2.0, True),
    "shrub": Material(
        (.035, .045, .070, .065, .100, .170, .200, .220, .228, .205, .240, .160),
        (.040, .050, .075, .080, .110, .160, .185, .200, .206, .190, .250, .180),
        (-9.0, -15.0), (-9.5, -15.8), -0.10, 1.5),
    "marsh": Material(
        (.030, .035, .060, .040, .075, .160, .190, .200, .205, .160, .090, .045),
        (.035, .040, .055, .050, .070, .100, .110, .115, .118, .095, .080, .045),
        (-5.5, -15.5), (-8.5, -17.0), -0.10, 2.0),
    "soil": Material(
        (.060, .080, .120, .160, .190, .210, .230, .250, .260, .240, .320, .270), None,
        (-12.0, -19.5), None, -0.20, 2.5, True),
    "sand": Material(
        (.120, .150, .220, .280, .310, .330, .340, .350, .360, .340, .420, .380), None,
        (-17.0, -24.0), None, -0.30, 2.0),
    "rock": Material(
        (.100, .120, .150, .180, .200, .210, .220, .230, .240, .220, .280, .250), None,
        (-9.0, -16.5), None, -0.15, 2.0),
    "water": Material(
        (.060, .055, .045, .025, .018, .012, .010, .009, .008, .006, .004, .003), None,
        (-19.0, -26.0), None, -0.35, 3.0),
    "floodwater": Material(
        (.075, .085, .110, .100, .090, .060, .048, .042, .036, .025, .012, .008), None,
        (-21.0, -27.0), None, -0.35, 2.0),
    "built": Material(
        (.100, .110, .125, .140, .155, .170, .180, .190, .200, .185, .250, .220), None,
        (-3.5, -10.5), None, -0.05, 2.5),
    "rubble": Material(
        (.140, .160, .190, .210, .230, .240, .250, .260, .270, .250, .300, .270), None,
        (-7.5, -14.0), None, -0.10, 2.0),  # SAR: derived per scene from "built" (renderer)
    "snow": Material(
        (.850, .880, .870, .840, .820, .800, .780, .760, .740, .600, .050, .040), None,
        (-14.0, -21.0), None, -0.15, 2.5),
    "burned": Material(
        (.030, .035, .045, .050, .060, .070, .080, .090, .095, .088, .160, .150), None,
        (-9.5, -16.5), None, -0.12, 1.5),
}
MATERIAL_NAMES: tuple[str, ...] = tuple(MATERIALS)
MATERIAL_INDEX = {m: i for i, m in enumerate(MATERIAL_NAMES)}
# A vegetated material whose phenology varies a lot from field to field.
FIELD_MATERIALS = ("crop",)

# Label -> material weights. CORINE level-3 names (what benv2 samples store) and
# the 12 class names (what the other sources store).
RECIPES: dict[str, dict[str, float]] = {
    "Continuous urban fabric": {"built": .85, "grass": .10, "broadleaf": .05},
    "Discontinuous urban fabric": {"built": .55, "grass": .25, "broadleaf": .20},
    "Industrial or commercial units": {"built": .85, "soil": .10, "grass": .05},
    "Road and rail networks and associated land": {"built": .60, "grass": .30, "soil": .10},
    "Port areas": {"built": .70, "water": .30},
    "Airports": {"built": .45, "grass": .55},
    "Mineral extraction sites": {"rock": .50, "soil": .30, "sand": .20},
    "Dump sites": {"soil": .60, "built": .30, "rock": .10},
    "Construction sites": {"soil": .60, "built": .40},
    "Green urban areas": {"grass": .60, "broadleaf": .30, "built": .10},
    "Sport and leisure facilities": {"grass": .80, "built": .20},
    "Non-irrigated arable land": {"crop": .75, "soil": .25},
    "Permanently irrigated land": {"crop": .90, "soil": .10},
    "Rice fields": {"marsh": .70, "crop": .30},
    "Vineyards": {"soil": .55, "crop": .45},
    "Fruit trees and berry plantations": {"broadleaf": .50, "grass": .30, "soil": .20},
    "Olive groves": {"broadleaf": .35, "soil": .45, "grass": .20},
    "Pastures": {"grass": 1.0},
    "Annual crops associated with permanent crops": {"crop": .60, "broadleaf": .20, "soil": .20},
    "Complex cultivation patterns": {"crop": .45, "grass": .30, "soil": .15, "broadleaf": .10},
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        {"crop": .40, "grass": .20, "broadleaf": .25, "shrub": .15},
    "Agro-forestry areas": {"broadleaf": .55, "grass": .35, "soil": .10},
    "Broad-leaved forest": {"broadleaf": 1.0},
    "Coniferous forest": {"conifer": 1.0},
    "Mixed forest": {"broadleaf": .50, "conifer": .50},
    "Natural grassland": {"grass": .85, "shrub": .10, "rock": .05},
    "Moors and heathland": {"shrub": .75, "grass": .25},
    "Sclerophyllous vegetation": {"shrub": .80, "soil": .20},
    "Transitional woodland/shrub": {"shrub": .55, "broadleaf": .25, "conifer": .20},
    "Beaches, dunes, sands": {"sand": 1.0},
    "Bare rock": {"rock": 1.0},
    "Sparsely vegetated areas": {"rock": .55, "grass": .30, "shrub": .15},
    "Burnt areas": {"burned": .85, "shrub": .15},
    "Glaciers and perpetual snow": {"snow": .90, "rock": .10},
    "Inland marshes": {"marsh": .85, "water": .15},
    "Peatbogs": {"marsh": .55, "grass": .30, "conifer": .15},
    "Salt marshes": {"marsh": .80, "water": .20},
    "Salines": {"sand": .50, "water": .50},
    "Intertidal flats": {"soil": .60, "water": .40},
    "Water courses": {"water": .90, "grass": .10},
    "Water bodies": {"water": 1.0},
    "Coastal lagoons": {"water": .90, "floodwater": .10},
    "Estuaries": {"floodwater": .60, "water": .40},
    "Sea and ocean": {"water": 1.0},
    # class names
    "Trees": {"broadleaf": .50, "conifer": .50},
    "Crops": {"crop": .80, "soil": .20},
    "Shrub and Scrub": {"shrub": .80, "soil": .10, "grass": .10},
    "Water": {"water": 1.0},
    "Grass": {"grass": .90, "shrub": .10},
    "Built": {"built": .70, "grass": .20, "broadleaf": .10},
    "Flooded Vegetation": {"marsh": .85, "water": .15},
    "Bare": {"soil": .50, "sand": .25, "rock": .25},
    "Snow and Ice": {"snow": .90, "rock": .10},
    "Flooded Area": {"floodwater": .80, "marsh": .20},
    "Earthquake Damage": {"rubble": .80, "built": .20},
    "Burned Area": {"burned": .90, "soil": .10},
}
# Small unlabelled features (below the labelling minimum mapping unit).
CLUTTER_RECIPES: tuple[dict[str, float], ...] = (
    {"built": 1.0}, {"water": 1.0}, {"soil": 1.0}, {"broadleaf": 1.0}, {"grass": 1.0})

# Relative frequency of CORINE level-3 labels in BigEarthNet-like European scenes.
CORINE_BASE_PRIOR: dict[str, float] = {
    "Mixed forest": .90, "Coniferous forest": .80, "Non-irrigated arable land": .80,
    "Transitional woodland/shrub": .70, "Broad-leaved forest": .60,
    "Land principally occupied by agriculture, with significant areas of natural vegetation": .55,
    "Complex cultivation patterns": .45, "Pastures": .45, "Water bodies": .30, "Sea and ocean": .30,
    "Discontinuous urban fabric": .25, "Agro-forestry areas": .12, "Peatbogs": .10,
    "Permanently irrigated land": .05, "Industrial or commercial units": .04, "Natural grassland": .05,
    "Olive groves": .05, "Sclerophyllous vegetation": .05, "Continuous urban fabric": .02,
    "Fruit trees and berry plantations": .03, "Vineyards": .02, "Moors and heathland": .02,
    "Rice fields": .005, "Water courses": .02, "Annual crops associated with permanent crops": .01,
    "Inland marshes": .02, "Mineral extraction sites": .02, "Sport and leisure facilities": .01,
    "Sparsely vegetated areas": .01, "Estuaries": .005, "Coastal lagoons": .004,
    "Road and rail networks and associated land": .01, "Beaches, dunes, sands": .01,
    "Green urban areas": .005, "Construction sites": .004, "Bare rock": .01, "Airports": .002,
    "Salt marshes": .004, "Burnt areas": .003, "Dump sites": .002, "Intertidal flats": .003,
    "Port areas": .001, "Salines": .001, "Glaciers and perpetual snow": 0.0,
}
_COASTAL = ("Sea and ocean", "Estuaries", "Coastal lagoons", "Salt marshes", "Intertidal flats",
            "Beaches, dunes, sands", "Port areas", "Salines")


@dataclasses.dataclass(frozen=True)
class Place:
  """A lon/lat box with a label prior: a BigEarthNet country or a crisis event."""
  name: str
  lon: tuple[float, float]
  lat: tuple[float, float]
  weight: float
  prior: dict[str, float]            # label -> relative weight
  date: dt.date | None = None        # event date (crisis sources)


def _country(name, lon, lat, weight, landlocked=False, **mult):
  prior = dict(CORINE_BASE_PRIOR)
  if landlocked:
    for k in _COASTAL:
      prior[k] = 0.0
  for key, factor in mult.items():
    label = _SHORT[key]
    prior[label] = (prior[label] or 0.01) * factor if factor else 0.0
  return Place(name, lon, lat, weight, prior)


_SHORT = {
    "conif": "Coniferous forest", "mixed": "Mixed forest", "broad": "Broad-leaved forest",
    "trans": "Transitional woodland/shrub", "peat": "Peatbogs", "lakes": "Water bodies",
    "sea": "Sea and ocean", "arable": "Non-irrigated arable land", "olive": "Olive groves",
    "scler": "Sclerophyllous vegetation", "agrofor": "Agro-forestry areas", "vine": "Vineyards",
    "burnt": "Burnt areas", "beach": "Beaches, dunes, sands", "rice": "Rice fields",
    "irrig": "Permanently irrigated land", "pasture": "Pastures", "rock": "Bare rock",
    "natgrass": "Natural grassland", "glacier": "Glaciers and perpetual snow",
    "moor": "Moors and heathland", "urban": "Discontinuous urban fabric",
    "industry": "Industrial or commercial units", "complex": "Complex cultivation patterns",
    "marsh": "Inland marshes", "rivers": "Water courses", "mineral": "Mineral extraction sites",
    "sparse": "Sparsely vegetated areas", "fruit": "Fruit trees and berry plantations",
}

BENV2_PLACES: tuple[Place, ...] = (
    _country("Finland", (21.5, 30.0), (60.2, 68.5), .25, conif=3, mixed=2, trans=2, peat=5,
             lakes=3, arable=.4, broad=.2, olive=0, scler=0, vine=0, rice=0, agrofor=0, burnt=0),
    _country("Portugal", (-9.4, -6.3), (37.0, 42.1), .15, scler=8, olive=6, agrofor=5, broad=1.5,
             vine=5, burnt=10, sea=1.5, beach=3, rice=8, irrig=3, peat=0, conif=.8),
    _country("Austria", (9.8, 16.9), (46.6, 48.9), .12, True, conif=2, pasture=1.5, rock=4,
             natgrass=3, glacier=2, olive=0, scler=0, rice=0, peat=.3),
    _country("Serbia", (19.0, 22.9), (42.3, 46.1), .12, True, arable=2.5, broad=2, complex=1.5,
             vine=1.5, rivers=2, olive=0, scler=0, peat=0, conif=.5),
    _country("Lithuania", (21.1, 26.5), (54.0, 56.3), .10, arable=2, mixed=1.5, pasture=1.2,
             sea=.7, marsh=2, olive=0, scler=0, vine=0, rice=0, agrofor=0),
    _country("Ireland", (-10.2, -6.1), (51.6, 55.2), .10, pasture=5, peat=6, moor=4, sea=2,
             arable=.3, olive=0, scler=0, vine=0, rice=0, agrofor=0),
    _country("Switzerland", (6.0, 10.4), (45.9, 47.7), .06, True, rock=6, natgrass=4, glacier=4,
             conif=1.5, pasture=2, lakes=2, olive=0, scler=0, rice=0, peat=.3, sparse=3),
    _country("Belgium", (2.6, 6.3), (49.6, 51.4), .05, arable=2, urban=3, industry=3, complex=2,
             pasture=1.5, sea=.3, conif=.5, olive=0, scler=0, peat=0, rice=0),
    _country("Kosovo", (20.1, 21.7), (42.0, 43.2), .03, True, broad=2.5, arable=1.5, complex=2,
             mineral=3, olive=0, scler=0, peat=0, rice=0),
    _country("Luxembourg", (5.8, 6.5), (49.5, 50.1), .02, True, broad=1.5, arable=1.5,
             pasture=1.5, olive=0, scler=0, peat=0, rice=0, fruit=.5),
)
# Glaciers are not among BigEarthNet's 43 labels; the small Alpine weights above
# (Austria, Switzerland) keep "snow and ice" in the replica's vocabulary.

BENV2_PERIOD = (dt.date(2017, 6, 1), dt.date(2018, 5, 31))


def _event(name, lon, lat, date, **prior):
  names = {"trees": "Trees", "crops": "Crops", "shrub": "Shrub and Scrub", "water": "Water",
           "grass": "Grass", "built": "Built", "floodveg": "Flooded Vegetation", "bare": "Bare",
           "snow": "Snow and Ice"}
  return Place(name, lon, lat, 1.0, {names[k]: v for k, v in prior.items()}, date)


CALIFORNIA_FIRES: tuple[Place, ...] = (
    _event("Camp Fire, California", (-121.8, -121.4), (39.6, 39.9), dt.date(2018, 11, 8),
           trees=3, shrub=3, grass=2, built=1.5, bare=1),
    _event("Mendocino Complex, California", (-123.1, -122.4), (39.1, 39.5), dt.date(2018, 7, 27),
           trees=3, shrub=4, grass=3, bare=1, water=.5),
    _event("Creek Fire, California", (-119.5, -119.0), (37.1, 37.6), dt.date(2020, 9, 4),
           trees=4, shrub=2, bare=2, grass=1, water=.5),
    _event("Dixie Fire, California", (-121.4, -120.5), (39.8, 40.5), dt.date(2021, 7, 13),
           trees=4, shrub=2, grass=2, bare=1, water=.5),
    _event("Thomas Fire, California", (-119.5, -119.0), (34.3, 34.6), dt.date(2017, 12, 4),
           shrub=5, grass=2, trees=1, built=1, bare=1),
    _event("Kincade Fire, California", (-122.9, -122.6), (38.6, 38.8), dt.date(2019, 10, 23),
           trees=3, shrub=3, grass=3, crops=1, built=1),
)
FLOODS_SEN12: tuple[Place, ...] = (
    _event("Cyclone Idai, Mozambique", (33.8, 35.3), (-20.3, -19.2), dt.date(2019, 3, 15),
           crops=3, grass=2, floodveg=2, water=2, trees=1.5, shrub=1, built=1),
    _event("Khuzestan floods, Iran", (48.0, 49.4), (31.0, 32.4), dt.date(2019, 4, 1),
           crops=3, bare=3, water=2, built=1.5, grass=.5),
    _event("Townsville floods, Australia", (145.8, 147.0), (-20.5, -19.0), dt.date(2019, 2, 4),
           grass=3, trees=2, shrub=2, water=1.5, built=1, crops=.5),
    _event("Shabelle floods, Somalia", (44.8, 46.0), (2.0, 3.5), dt.date(2019, 5, 5),
           shrub=3, bare=2, crops=2, grass=1.5, water=1),
    _event("Cuvelai floods, Namibia", (15.0, 16.5), (-18.0, -17.0), dt.date(2019, 4, 20),
           grass=3, shrub=2, bare=1.5, water=1, floodveg=1),
)
FLOODS_MMFLOOD: tuple[Place, ...] = (
    _event("Emilia-Romagna floods, Italy", (11.0, 12.3), (44.4, 44.9), dt.date(2019, 11, 17),
           crops=4, built=1.5, water=1.5, trees=1),
    _event("Ahr and Meuse floods, Germany/Belgium", (6.4, 7.2), (50.3, 50.8), dt.date(2021, 7, 15),
           trees=3, crops=2, built=2, grass=2, water=1),
    _event("Brahmaputra floods, Bangladesh", (89.5, 90.8), (24.0, 25.5), dt.date(2020, 7, 20),
           crops=4, floodveg=3, water=3, built=1.5, trees=1),
    _event("Ayeyarwady floods, Myanmar", (94.8, 95.8), (16.5, 18.0), dt.date(2015, 8, 5),
           crops=3, floodveg=3, water=2, trees=1.5),
    _event("Medicane Ianos floods, Greece", (21.8, 22.6), (39.3, 39.8), dt.date(2020, 9, 20),
           crops=4, shrub=1.5, built=1, bare=1),
    _event("Shire floods, Malawi", (34.8, 35.4), (-16.8, -15.8), dt.date(2019, 3, 10),
           crops=3, grass=2, shrub=2, water=1, floodveg=1),
    _event("Paraguay River floods, Paraguay", (-58.0, -57.2), (-25.6, -24.8), dt.date(2019, 5, 10),
           grass=3, floodveg=3, water=2, trees=2),
)
EARTHQUAKES: tuple[Place, ...] = (
    _event("Kahramanmaras earthquake, Turkey", (36.0, 38.4), (36.2, 38.2), dt.date(2023, 2, 6),
           built=4, crops=3, bare=2, grass=1.5, snow=.3),
    _event("Gorkha earthquake, Nepal", (84.6, 86.0), (27.6, 28.2), dt.date(2015, 4, 25),
           built=3, trees=3, crops=2.5, grass=1),
    _event("Amatrice earthquake, Italy", (13.1, 13.4), (42.55, 42.8), dt.date(2016, 8, 24),
           built=3, trees=3, grass=2.5, crops=1),
    _event("Puebla earthquake, Mexico", (-99.3, -98.3), (18.4, 19.4), dt.date(2017, 9, 19),
           built=4, crops=2.5, trees=1.5, grass=1),
    _event("Palu earthquake, Indonesia", (119.75, 120.0), (-1.05, -0.75), dt.date(2018, 9, 28),
           built=4, trees=3, water=1.5, crops=1),
    _event("Al Haouz earthquake, Morocco", (-8.6, -7.8), (30.9, 31.3), dt.date(2023, 9, 8),
           built=3, bare=4, shrub=2, crops=1),
    _event("Noto earthquake, Japan", (136.75, 137.3), (37.15, 37.5), dt.date(2024, 1, 1),
           built=3, trees=4, crops=1.5, water=1.5),
)


@dataclasses.dataclass(frozen=True)
class Source:
  """One CrisisLandMark source: sensor, shard file, share of its sensor, places."""
  name: str
  sensor: str                   # "s2" or "s1"
  file: str                     # shard name; "{part}" marks a split into parts
  share: float                  # fraction of its sensor's samples
  places: tuple[Place, ...]
  event_label: str | None       # crisis label (None for BigEarthNet)
  channels: tuple[str, ...]     # stored channel order
  event_rate: float = 0.75      # fraction of samples showing the event


S2_CH = S2_BANDS
# The release's layout: every S1 source stores (VV, VH) (preprocess.S1_RULE_SETS["release"]).
S1_CH = preprocess.S1_RULE_SETS["release"]
SOURCES: tuple[Source, ...] = (
    Source("benv2s2", "s2", "benv2s2_part{part}.h5", .80, BENV2_PLACES, None, S2_CH),
    Source("cabuar", "s2", "cabuar.h5", .10, CALIFORNIA_FIRES, "Burned Area", S2_CH),
    Source("sen2flood", "s2", "sen12flood.h5", .10, FLOODS_SEN12, "Flooded Area", S2_CH),
    Source("benv2s1", "s1", "benv2s1_part{part}.h5", .70, BENV2_PLACES, None, S1_CH["benv2s1"]),
    Source("mmflood", "s1", "mmflood.h5", .12, FLOODS_MMFLOOD, "Flooded Area", S1_CH["mmflood"]),
    Source("sen1flood", "s1", "sen12flood.h5", .08, FLOODS_SEN12, "Flooded Area",
           S1_CH["sen1flood"]),
    Source("quakeset", "s1", "quakeset.h5", .10, EARTHQUAKES, "Earthquake Damage",
           S1_CH["quakeset"]),
)
SOURCE_BY_NAME = {s.name: s for s in SOURCES}
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
