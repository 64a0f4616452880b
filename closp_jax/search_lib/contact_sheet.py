"""Contact sheets: one captioned tile per search result, drawn with Pillow.

Tiles (raw archive values in, 8-bit RGB out):
  S2  true colour: B4, B3, B2 (found by name in S2_BANDS, or S2_STORED_BANDS for 12-band images),
      reflectance 0 - 0.3 (0 - 3,000 as stored) stretched linearly to 0 - 255.
  S1  false colour: red = VV dB over [-25, 0], green = VH dB over [-30, -5], blue = VV - VH dB
      over [0, 15]; dB = 10 log10(max(x, 1e-6)) of the linear backscatter.
Each tile is captioned with its rank, score and sensor/source on one line and its labels on the next.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from closp_jax import atomic
from closp_jax.data.preprocess import S1_BANDS, S2_BANDS, S2_STORED_BANDS

S2_RGB = ("B4", "B3", "B2")
S1_VV, S1_VH = S1_BANDS.index("VV"), S1_BANDS.index("VH")
S2_MAX = 3000.0
S1_RANGES_DB = ((-25.0, 0.0), (-30.0, -5.0), (0.0, 15.0))
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def _stretch(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
  return np.clip((np.nan_to_num(x, nan=lo) - lo) / (hi - lo), 0.0, 1.0)


def s2_true_colour(image: np.ndarray) -> np.ndarray:
  """[H, W, 13 or 12] raw S2 (S2_BANDS or S2_STORED_BANDS order) -> uint8 [H, W, 3] (B4, B3, B2)."""
  if image.ndim != 3 or image.shape[-1] not in (len(S2_BANDS), len(S2_STORED_BANDS)):
    raise ValueError(
      f"S2 tile: expected [H, W, {len(S2_BANDS)}] (or {len(S2_STORED_BANDS)}) bands, got shape {image.shape}"
    )
  names = S2_BANDS if image.shape[-1] == len(S2_BANDS) else S2_STORED_BANDS
  rgb = image[..., [names.index(b) for b in S2_RGB]].astype(np.float32)
  return (_stretch(rgb, 0.0, S2_MAX) * 255.0 + 0.5).astype(np.uint8)


def s1_false_colour(image: np.ndarray) -> np.ndarray:
  """[H, W, 2] raw S1 (VV, VH linear) -> uint8 [H, W, 3]: VV dB, VH dB, VV - VH dB."""
  if image.ndim != 3 or image.shape[-1] != 2:
    raise ValueError(f"S1 tile: expected [H, W, 2] (VV, VH), got shape {image.shape}")
  db = 10.0 * np.log10(np.maximum(np.nan_to_num(image.astype(np.float32), nan=1e-6), 1e-6))
  chans = (db[..., S1_VV], db[..., S1_VH], db[..., S1_VV] - db[..., S1_VH])
  rgb = np.stack([_stretch(c, lo, hi) for c, (lo, hi) in zip(chans, S1_RANGES_DB)], axis=-1)
  return (rgb * 255.0 + 0.5).astype(np.uint8)


def tile_rgb(image: np.ndarray, sensor: str) -> np.ndarray:
  if sensor == "s2":
    return s2_true_colour(image)
  if sensor == "s1":
    return s1_false_colour(image)
  raise ValueError(f"sensor must be 's2' or 's1', got {sensor!r}")


def _font(size: int):
  from PIL import ImageFont  # pylint: disable=import-outside-toplevel

  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: the fixed bitmap font
    return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
  if draw.textlength(text, font=font) <= width:
    return text
  while text and draw.textlength(text + "...", font=font) > width:
    text = text[:-1]
  return text + "..."


def contact_sheet(
  results: Sequence[dict],
  images: Sequence[np.ndarray],
  *,
  columns: int = 5,
  tile: int = 180,
  margin: int = 6,
  caption: int = 34,
):
  """(PIL.Image, boxes): the sheet and each result's image box (left, top, right, bottom), in rank order."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

  if len(results) != len(images):
    raise ValueError(f"{len(results)} results but {len(images)} images")
  if not results:
    raise ValueError("no results to draw")
  cols = max(1, min(columns, len(results)))
  rows = math.ceil(len(results) / cols)
  cell_w, cell_h = tile + margin, tile + caption + margin
  sheet = Image.new("RGB", (cols * cell_w + margin, rows * cell_h + margin), BACKGROUND)
  draw = ImageDraw.Draw(sheet)
  font = _font(12)
  boxes = []
  for i, (r, image) in enumerate(zip(results, images)):
    left = margin + (i % cols) * cell_w
    top = margin + (i // cols) * cell_h
    pic = Image.fromarray(tile_rgb(np.asarray(image), r["sensor"])).resize((tile, tile), Image.BILINEAR)
    sheet.paste(pic, (left, top))
    boxes.append((left, top, left + tile, top + tile))
    line1 = f"#{r['rank']}  {r['score']:.3f}  {r['sensor'].upper()} {r.get('source', '')}"
    line2 = ", ".join(r.get("labels") or []) or "(no labels)"
    draw.text((left, top + tile + 2), _fit(draw, line1, font, tile), fill=TEXT, font=font)
    draw.text((left, top + tile + 17), _fit(draw, line2.lower(), font, tile), fill=TEXT, font=font)
  return sheet, boxes


def save_png(image, path) -> None:
  """Writes the PNG through a temporary file and a rename."""
  atomic.write_with(path, lambda tmp: image.save(tmp, format="PNG"))
