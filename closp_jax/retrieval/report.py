"""Human-readable views of an evaluation's metrics.json: report.md, a PNG chart, text tables.

`write_report(out_dir, metrics)` writes report.md (every table) and chart.png (nDCG@1000 per
source dataset and per class, horizontal bars drawn with Pillow). `summary_table` is the
short text table the binary prints; `compare_table` puts several evaluations side by side
with their differences to the first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from closp_jax import atomic

REPORT_FILE = "report.md"
CHART_FILE = "chart.png"
SUMMARY_METRICS = ("nDCG@10", "nDCG@100", "nDCG@1000", "mAP@100", "R@10", "R@100")


def _fmt(value, digits: int = 4) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return lines


def chart_metric(metrics: Mapping) -> str:
  """The metric the chart shows: nDCG@<depth> (nDCG@1000 by default)."""
  return f"nDCG@{metrics.get('depth', 1000)}"


def markdown(metrics: Mapping) -> str:
  """report.md text: overall, per source, per query type, zero-shot tables."""
  names = list(metrics["metric_names"])
  rankings = metrics["rankings"]
  out = [f"# Retrieval evaluation: {metrics.get('config', '?')}", ""]
  ck = metrics.get("checkpoint") or {}
  ds = metrics.get("dataset") or {}
  qs = metrics.get("queries") or {}
  if ck or ds or qs:
    out += [
      f"- checkpoint: {ck.get('step', '?')} ({ck.get('workdir', '')})",
      f"- corpus: {ds.get('name', '?')} {ds.get('split', '')}, "
      + ", ".join(f"{s} {n}" for s, n in (ds.get("docs") or {}).items()),
      f"- queries: {qs.get('count', '?')} ({qs.get('origin', '?')}), by type "
      + ", ".join(f"{t} {n}" for t, n in (qs.get("by_type") or {}).items()),
      f"- ranking depth: top {metrics.get('depth')} per query; values are fractions in [0, 1]",
      "",
    ]
  out += ["## Overall", ""]
  rows = [
    [name, str(r["num_queries"]), str(r["num_docs"])] + [_fmt((r["metrics"] or {}).get(m)) for m in names]
    for name, r in rankings.items()
  ]
  out += _md_table(["ranking", "queries", "docs"] + names, rows) + [""]
  out += [
    "## By source dataset",
    "",
    "Each source's samples ranked on their own, judged by the qrels restricted to them.",
    "",
  ]
  sources = rankings.get("text->all", {}).get("by_source") or {}
  rows = [
    [s, str(v["num_queries"]), str(v["num_docs"])] + [_fmt((v["metrics"] or {}).get(m)) for m in names]
    for s, v in sources.items()
  ]
  out += _md_table(["source", "queries", "docs"] + names, rows) + [""]
  out += ["## By query type", "", "Means over the queries of each type within each ranking.", ""]
  rows = []
  for name, r in rankings.items():
    for t, v in (r.get("by_type") or {}).items():
      rows.append([name, t, str(v["num_queries"])] + [_fmt(v["metrics"].get(m)) for m in names])
  out += _md_table(["ranking", "type", "queries"] + names, rows) + [""]
  zero = metrics.get("zero_shot") or {}
  if zero:
    ndcg = chart_metric(metrics)
    out += [
      "## Zero-shot multi-label classification (class names as texts)",
      "",
      "mAP: mean over the classes present of each class's average precision over every "
      f"sample; {ndcg}: the class name as a retrieval query.",
      "",
    ]
    header = ["class"] + [f"AP {n}" for n in zero] + [f"{ndcg} {n}" for n in zero]
    classes = list(next(iter(zero.values()))["AP"])
    rows = [
      [c] + [_fmt(z["AP"].get(c)) for z in zero.values()] + [_fmt(z[ndcg].get(c)) for z in zero.values()]
      for c in classes
    ]
    rows.append(["**mAP**"] + [f"**{_fmt(z['mAP'])}**" for z in zero.values()] + [""] * len(zero))
    out += _md_table(header, rows) + [""]
  out += ["## Files", "", "| ranking | run | qrels |", "|---|---|---|"]
  out += [f"| {name} | {r['files']['run']} | {r['files']['qrels']} |" for name, r in rankings.items() if r.get("files")]
  out += ["", f"![{chart_metric(metrics)} per source and per class]({CHART_FILE})", ""]
  return "\n".join(out)


def summary_table(metrics: Mapping, names: Sequence[str] = SUMMARY_METRICS) -> str:
  """A short fixed-width table: one row per ranking, then the zero-shot mAP."""
  names = [m for m in names if m in metrics["metric_names"]]
  lines = [f"{'ranking':<10} {'queries':>7} " + " ".join(f"{m:>9}" for m in names)]
  for name, r in metrics["rankings"].items():
    vals = r["metrics"] or {}
    lines.append(f"{name:<10} {r['num_queries']:>7} " + " ".join(f"{_fmt(vals.get(m)):>9}" for m in names))
  zero = metrics.get("zero_shot") or {}
  if zero:
    lines.append("zero-shot classification mAP: " + ", ".join(f"{n} {_fmt(z['mAP'])}" for n, z in zero.items()))
  return "\n".join(lines)


def _rows_for_compare(metrics: Mapping) -> dict[str, float | None]:
  rows: dict[str, float | None] = {}
  for name, r in metrics["rankings"].items():
    for m in metrics["metric_names"]:
      rows[f"{name} {m}"] = (r["metrics"] or {}).get(m)
  depth = chart_metric(metrics)
  for name, r in metrics["rankings"].items():
    for t, v in (r.get("by_type") or {}).items():
      rows[f"{name} {depth} [{t}]"] = v["metrics"].get(depth)
  for s, v in (metrics["rankings"].get("text->all", {}).get("by_source") or {}).items():
    rows[f"{depth} [{s}]"] = (v["metrics"] or {}).get(depth)
  for name, z in (metrics.get("zero_shot") or {}).items():
    rows[f"zero-shot mAP {name}"] = z["mAP"]
  return rows


def compare_table(entries: Sequence[tuple[str, Mapping]]) -> str:
  """Side-by-side metrics of several evaluations; then each one minus the first."""
  if not entries:
    raise ValueError("compare needs at least one evaluation folder")
  tables = [(label, _rows_for_compare(m)) for label, m in entries]
  keys: list[str] = []
  for _, rows in tables:
    keys += [k for k in rows if k not in keys]
  labels = [label for label, _ in tables]
  width = max(10, *(len(lb) for lb in labels))
  kw = max(len(k) for k in keys)
  base = labels[0]
  header = f"{'':<{kw}} " + " ".join(f"{lb:>{width}}" for lb in labels)
  header += "".join(f" {'Δ ' + lb[: width - 2]:>{width}}" for lb in labels[1:])
  lines = [f"differences (Δ) are each column minus {base!r}", header, "-" * len(header)]
  for k in keys:
    vals = [rows.get(k) for _, rows in tables]
    line = f"{k:<{kw}} " + " ".join(f"{_fmt(v):>{width}}" for v in vals)
    for v in vals[1:]:
      d = None if v is None or vals[0] is None else round(v - vals[0], 4) + 0.0
      line += f" {('-' if d is None else f'{d:+.4f}'):>{width}}"
    lines.append(line)
  return "\n".join(lines)


# --------------------------------------------------------------------------- chart


def chart_bars(metrics: Mapping) -> list[tuple[str, list[tuple[str, float | None]]]]:
  """The chart's panels: [(title, [(bar label, value)])]."""
  depth = chart_metric(metrics)
  panels = []
  sources = metrics["rankings"].get("text->all", {}).get("by_source") or {}
  panels.append(
    (
      f"{depth} per source dataset (each source ranked on its own)",
      [(s, (v["metrics"] or {}).get(depth)) for s, v in sources.items()],
    )
  )
  zero = (metrics.get("zero_shot") or {}).get("text->all")
  if zero:
    panels.append((f"{depth} per class (class name as query, both sensors)", list(zero[depth].items())))
  return panels


def draw_chart(panels, path, *, width: int = 760) -> None:
  """Horizontal bar chart (values in [0, 1]) written to `path` as PNG (temporary name, then rename)."""
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=import-outside-toplevel

  font = ImageFont.load_default()
  bar_h, gap, title_h, left, right = 18, 6, 30, 190, 70
  height = 16 + sum(title_h + len(bars) * (bar_h + gap) + 24 for _, bars in panels)
  image = Image.new("RGB", (width, max(height, 60)), "white")
  draw = ImageDraw.Draw(image)
  span = width - left - right
  y = 12
  for title, bars in panels:
    draw.text((10, y), title, fill="black", font=font)
    y += title_h
    top = y
    bottom = y + len(bars) * (bar_h + gap) - gap
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
      x = left + round(tick * span)
      draw.line([x, top - 4, x, bottom], fill=(210, 210, 210) if tick else "black")
      draw.text((x - 8, bottom + gap), f"{tick:g}", fill="gray", font=font)
    for label, value in bars:
      draw.text((10, y + 3), str(label), fill="black", font=font)
      if value is None:
        draw.text((left + 4, y + 3), "n/a", fill="gray", font=font)
      else:
        v = min(max(float(value), 0.0), 1.0)
        draw.rectangle([left, y, left + max(1, round(v * span)), y + bar_h], fill=(60, 110, 180))
        draw.text((left + round(v * span) + 6, y + 3), f"{value:.3f}", fill="black", font=font)
      y += bar_h + gap
    y += 24
  atomic.write_with(path, lambda tmp: image.save(tmp, format="PNG"))


def write_report(out_dir, metrics: Mapping) -> None:
  """report.md and chart.png into out_dir (each written to a temporary name, then renamed)."""
  out_dir = Path(out_dir)
  text = markdown(metrics)
  atomic.write_text(out_dir / REPORT_FILE, text)
  draw_chart(chart_bars(metrics), out_dir / CHART_FILE)
