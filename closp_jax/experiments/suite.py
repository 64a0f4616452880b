"""The paper's comparisons as one resumable suite: train, evaluate, test, report.

    python -m closp_jax.experiments paper --data crisis_landmark/sample --seeds 3 --out DIR
    python -m closp_jax.experiments paper --quick --out DIR          (one seed, fewer steps: minutes)
    python -m closp_jax.experiments paper --variant paper --data crisis_landmark/full --manual_dir M --out DIR

Runs (each for every seed, in DIR/runs/<run>/seed<k>/: `workdir/` the training run, `eval/` its
evaluation on the test corpus with metrics.json, run and qrels TREC files and queries.jsonl):

  closp      CLOSP trained on S2 and S1 together (text the only bridge)
  geoclosp   GeoCLOSP (location contrasted with the image embedding during training)
  rgb        the RGB-only baseline (S2 B4,B3,B2; S1 VV, VH, VV-VH)
  s2_only    CLOSP trained on S2 alone (the S1 loss weight 0), judged on S2
  s1_only    CLOSP trained on S1 alone, judged on S1
  untrained  the initial model (no training)

and closp's evaluation again with the sensors' scores fused (`eval_zscore/`). A finished run (its
eval/metrics.json present) is reused; an unfinished training resumes from its checkpoint.

The sensors can only help each other through what they share and train. With the text tower frozen
(as the CPU sample keeps it, and as the authors' final train.py keeps every tower), nothing but the
temperature is shared, and training S2 cannot change S1 retrieval. So the suite gives the runs a
shared bridge: on the sample a trainable linear text projection over the frozen MiniLM (cheap on a
CPU), with `--variant paper` the text tower itself trains (the authors' earlier train.py unfroze it).
Every run of a suite has the same bridge, so the comparisons stay fair.

Findings (results.json `findings`, one per comparison): per-query nDCG@1000 (recomputed from the run
and qrels files), paired over queries (each query's figure averaged over seeds), with the paired
bootstrap's 95% interval and the sign-flip randomization test's p-value (closp_jax.experiments.stats).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from closp_jax import atomic
from closp_jax.errors import UserError
from closp_jax.experiments import stats
from closp_jax.progress import Reporter

METRIC = "nDCG@1000"
RANKINGS = ("text->all", "text->s2", "text->s1")
VARIANTS = ("sample", "paper")
QUERY_TYPES = ("land_cover", "crisis", "location")
FUSED = "zscore"


class SuiteError(UserError, ValueError):
  """The suite cannot run as asked (variant, data, seeds, folder); the message says the fix."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of the suite: the recipe, what it changes, whether it trains, how it is evaluated."""

  name: str
  recipe: str
  variant: str
  overrides: tuple[tuple[str, Any], ...] = ()
  train: bool = True
  fusions: tuple[str, ...] = ("raw",)


def run_specs(variant: str) -> list[RunSpec]:
  """The suite's runs for `variant` (see the module docstring)."""
  if variant not in VARIANTS:
    raise SuiteError(f"--variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  if variant == "sample":
    bridge = (("model.text.text_projection", True),)
    rgb = RunSpec("rgb", "closp", "rgb", bridge)
  else:
    # the text tower trains (the authors' earlier train.py unfroze the towers); its dropout stays on
    bridge = (("optim.frozen", ("s2_encoder", "s1_encoder")),)
    rgb = RunSpec(
      "rgb",
      "closp",
      "paper",
      bridge
      + (("data.rgb", True), ("model.s2_in_chans", 3), ("model.s1_in_chans", 3), ("init.s2", ""), ("init.s1", "")),
    )
  geo_bridge = bridge if variant == "sample" else (("optim.frozen", ("s2_encoder", "s1_encoder", "location_encoder")),)
  return [
    RunSpec("closp", "closp", variant, bridge, fusions=("raw", FUSED)),
    RunSpec("geoclosp", "geoclosp", variant, geo_bridge),
    rgb,
    RunSpec("s2_only", "closp", variant, bridge + (("loss.weights.s1_text", 0.0),)),
    RunSpec("s1_only", "closp", variant, bridge + (("loss.weights.s2_text", 0.0),)),
    RunSpec("untrained", "closp", variant, bridge, train=False),
  ]


def run_config(
  spec: RunSpec,
  seed: int,
  *,
  data: str,
  data_dir: str | None,
  manual_dir: str | None,
  steps: int | None,
  overrides: tuple[tuple[str, Any], ...] = (),
):
  """The locked training config of one run and seed (`overrides` after the run's own)."""
  from closp_jax.config import load_config, set_key  # pylint: disable=import-outside-toplevel

  cfg = load_config(f"{spec.recipe}:{spec.variant}")
  cfg.unlock()
  for dotted, value in spec.overrides + tuple(overrides):
    set_key(cfg, dotted, value)
  cfg.seed = int(seed)
  cfg.name = f"{cfg.name}:{spec.name}"
  cfg.data.name = data
  cfg.data.data_dir = data_dir or ""
  cfg.data.manual_dir = manual_dir or ""
  if steps:
    cfg.train.steps, cfg.train.epochs = int(steps), 0.0
  cfg.eval.every_steps = 0  # the suite evaluates on the test corpus itself
  cfg.eval.final = False
  cfg.checkpoint.every_steps = max(1, min(int(cfg.checkpoint.every_steps), 50))
  cfg.lock()
  return cfg


@dataclasses.dataclass
class Suite:
  out: Path
  variant: str = "sample"
  data: str = "crisis_landmark/sample"
  data_dir: str | None = None
  manual_dir: str | None = None
  seeds: int = 3
  steps: int | None = None
  runs: tuple[str, ...] | None = None
  overrides: tuple[tuple[str, Any], ...] = ()  # applied to every run after its own (e.g. batch size)
  report: Reporter | None = None

  def __post_init__(self):
    self.out = Path(self.out).expanduser().absolute()
    if self.seeds < 1:
      raise SuiteError(f"--seeds {self.seeds}: expected at least 1")
    specs = run_specs(self.variant)
    known = [s.name for s in specs]
    unknown = [r for r in (self.runs or ()) if r not in known]
    if unknown:
      raise SuiteError(f"--runs names unknown runs {unknown}; the runs are {', '.join(known)}")
    self.specs = [s for s in specs if not self.runs or s.name in self.runs]
    self.report = self.report or Reporter()
    self.signal = None

  # -- folders -----------------------------------------------------------------------------------
  def run_dir(self, spec: RunSpec, seed: int) -> Path:
    return self.out / "runs" / spec.name / f"seed{seed}"

  def eval_dir(self, spec: RunSpec, seed: int, fusion: str = "raw") -> Path:
    return self.run_dir(spec, seed) / ("eval" if fusion == "raw" else f"eval_{fusion}")

  def done(self, spec: RunSpec, seed: int) -> bool:
    return all((self.eval_dir(spec, seed, f) / "metrics.json").is_file() for f in spec.fusions)

  # -- work --------------------------------------------------------------------------------------
  def run(self) -> dict:
    """Trains and evaluates what is missing, then writes results.json and report.md."""
    t0 = time.perf_counter()
    todo = [(spec, seed) for seed in range(self.seeds) for spec in self.specs]
    task = self.report.task(len(todo), "suite", unit="run")
    for i, (spec, seed) in enumerate(todo):
      if self.done(spec, seed):
        self.report.say(f"{spec.name} seed {seed}: finished earlier, reused ({self.eval_dir(spec, seed)})")
      else:
        self.report.say(f"{spec.name} seed {seed}: {'training and ' if spec.train else ''}evaluating ...")
        stopped = self.run_one(spec, seed)
        if stopped:
          task.close()
          self.report.say(
            f"the suite stopped in {spec.name} seed {seed} ({stopped}); its checkpoint is saved: run the "
            "same command again to go on"
          )
          return {"stopped": stopped}
      task.update(i + 1)
    task.close()
    results = self.results(seconds=time.perf_counter() - t0)
    atomic.write_json(self.out / "results.json", results, indent=1, allow_nan=False)
    atomic.write_text(self.out / "report.md", report_markdown(results))
    _draw_charts(results, self.out / "chart.png")
    self.report.say(f"wrote {self.out / 'results.json'} and {self.out / 'report.md'}")
    return results

  def run_one(self, spec: RunSpec, seed: int) -> str | None:
    """Trains (resuming) and evaluates one run; returns why it stopped early, or None."""
    # pylint: disable=import-outside-toplevel
    from closp_jax.train import loop

    cfg = run_config(
      spec,
      seed,
      data=self.data,
      data_dir=self.data_dir,
      manual_dir=self.manual_dir,
      steps=self.steps,
      overrides=self.overrides,
    )
    workdir = self.run_dir(spec, seed) / "workdir"
    if spec.train:
      result = loop.train_and_evaluate(cfg, workdir)
      if result.get("stopped"):
        self.signal = result.get("signal")
        return str(result["stopped"])
    evaluate_run(
      cfg,
      workdir,
      {f: self.eval_dir(spec, seed, f) for f in spec.fusions},
      checkpoint="latest" if spec.train else "untrained",
    )
    return None

  # -- results -----------------------------------------------------------------------------------
  def per_query(self, spec: RunSpec, ranking: str, fusion: str = "raw") -> tuple[list[str], np.ndarray, dict]:
    """(query ids, [n_seeds, n_queries] METRIC, {qid: type}) of a run's finished seeds."""
    rows, ids, types = [], None, {}
    for seed in range(self.seeds):
      folder = self.eval_dir(spec, seed, fusion)
      if not (folder / "metrics.json").is_file():
        continue
      values, query_types = per_query_metric(folder, ranking)
      types.update(query_types)
      ids = sorted(values) if ids is None else ids
      rows.append([values.get(q, np.nan) for q in ids])
    return ids or [], np.asarray(rows, np.float64), types

  def results(self, seconds: float) -> dict:
    specs = {s.name: s for s in self.specs}
    table = {}
    for name, spec in specs.items():
      table[name] = {}
      for ranking in RANKINGS:
        _, values, _ = self.per_query(spec, ranking)
        if values.size:
          per_seed = np.nanmean(values, axis=1)
          table[name][ranking] = {
            "mean": float(np.mean(per_seed)),
            "std": float(np.std(per_seed)),
            "seeds": int(len(per_seed)),
            "queries": int(values.shape[1]),
          }
    findings = []
    for name, a, b, ranking, query_type, fa, fb in COMPARISONS:
      if a in specs and b in specs:
        f = self.finding(name, specs[a], specs[b], ranking, query_type, fa, fb)
        if f is not None:
          findings.append(f)
    by_type = {}
    if "closp" in specs and "geoclosp" in specs:
      for t in QUERY_TYPES:
        by_type[t] = {}
        for run in ("closp", "geoclosp"):
          ids, values, types = self.per_query(specs[run], "text->all")
          keep = [i for i, q in enumerate(ids) if types.get(q) == t]
          if keep and values.size:
            per_seed = np.nanmean(values[:, keep], axis=1)
            by_type[t][run] = {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed)), "queries": len(keep)}
    return {
      "suite": "paper",
      "variant": self.variant,
      "data": self.data,
      "seeds": self.seeds,
      "steps": self.steps,
      "metric": METRIC,
      "runs": [s.name for s in self.specs],
      "table": table,
      "by_query_type": by_type,
      "findings": findings,
      "seconds": round(seconds, 1),
    }

  def finding(
    self, name, a: RunSpec, b: RunSpec, ranking: str, query_type: str | None, fusion_a: str, fusion_b: str
  ) -> dict | None:
    ids_a, va, types = self.per_query(a, ranking, fusion_a)
    ids_b, vb, types_b = self.per_query(b, ranking, fusion_b)
    types.update(types_b)
    common = [q for q in ids_a if q in set(ids_b) and (query_type is None or types.get(q) == query_type)]
    if len(common) < 2 or not va.size or not vb.size:
      return None
    ia, ib = {q: i for i, q in enumerate(ids_a)}, {q: i for i, q in enumerate(ids_b)}
    xa = va[:, [ia[q] for q in common]]
    xb = vb[:, [ib[q] for q in common]]
    result = stats.paired_comparison(xa, xb, test="randomization", n_resamples=10_000, rng=0)
    label = lambda spec, fusion: spec.name + ("" if fusion == "raw" else f"+{fusion}")  # noqa: E731
    return {
      "name": name,
      "metric": f"{METRIC} {ranking}" + (f" ({query_type} queries)" if query_type else ""),
      "a": label(a, fusion_a),
      "b": label(b, fusion_b),
      "mean_a": float(np.mean(np.nanmean(xa, axis=0))),
      "mean_b": float(np.mean(np.nanmean(xb, axis=0))),
      "difference": result.difference,
      "ci95": list(result.ci),
      "p_value": result.p_value,
      "queries": len(common),
      "seeds": [int(xa.shape[0]), int(xb.shape[0])],
      "test": result.method,
    }


# (name, a, b, ranking, query type or None, fusion of a, fusion of b)
COMPARISONS = (
  ("unified_vs_s1_only_on_s1", "closp", "s1_only", "text->s1", None, "raw", "raw"),
  ("unified_vs_s2_only_on_s2", "closp", "s2_only", "text->s2", None, "raw", "raw"),
  ("geoclosp_vs_closp_on_location", "geoclosp", "closp", "text->all", "location", "raw", "raw"),
  ("geoclosp_vs_closp_on_crisis", "geoclosp", "closp", "text->all", "crisis", "raw", "raw"),
  ("closp_vs_geoclosp_on_general", "closp", "geoclosp", "text->all", "land_cover", "raw", "raw"),
  ("multispectral_vs_rgb_on_all", "closp", "rgb", "text->all", None, "raw", "raw"),
  ("trained_vs_untrained_on_all", "closp", "untrained", "text->all", None, "raw", "raw"),
  ("fused_vs_raw_on_all", "closp", "closp", "text->all", None, FUSED, "raw"),
)


def per_query_metric(eval_dir: Path, ranking: str) -> tuple[dict[str, float], dict[str, str]]:
  """({qid: METRIC} recomputed from the folder's run and qrels TREC files, {qid: query type})."""
  from closp_jax.data import queries as queries_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.retrieval import evaluator, trec  # pylint: disable=import-outside-toplevel
  from closp_jax.retrieval.metrics import evaluate_run  # pylint: disable=import-outside-toplevel

  eval_dir = Path(eval_dir)
  run = trec.read_run(eval_dir / evaluator.RUN_FILES[ranking])
  qrels = queries_lib.read_qrels(eval_dir / evaluator.QRELS_FILES[ranking])
  _, per_query = evaluate_run(run, qrels, (METRIC,))
  types = {}
  queries = eval_dir / evaluator.QUERIES_FILE
  if queries.is_file():
    for line in queries.read_text().splitlines():
      if line.strip():
        q = json.loads(line)
        types[str(q["query_id"])] = q.get("type", "")
  return {q: v[METRIC] for q, v in per_query.items()}, types


def evaluate_run(cfg, workdir: Path, outputs: dict[str, Path], *, checkpoint: str = "latest") -> None:
  """Embeds the test corpus once with the run's model and writes one evaluation per fusion."""
  # pylint: disable=import-outside-toplevel
  from closp_jax import checkpoint as ckpt_lib
  from closp_jax.data import pipeline
  from closp_jax.data.tokenize import load_tokenizer
  from closp_jax.models import embed as embed_lib
  from closp_jax.parallel import mesh as mesh_lib
  from closp_jax.retrieval import evaluator

  t0 = time.perf_counter()
  mesh = mesh_lib.make_mesh(cfg.mesh)
  builder = pipeline.get_builder(
    cfg.data.name, data_dir=cfg.data.data_dir or None, manual_dir=cfg.data.manual_dir or None
  )
  model, variables, label = ckpt_lib.restore_variables(workdir, cfg, checkpoint, mesh=mesh)
  corpus = evaluator.Corpus.from_embedded(
    embed_lib.embed_corpus(
      model,
      variables,
      builder,
      mesh,
      "test",
      eval_batch_size=int(cfg.data.eval_batch_size),
      inputs=pipeline.input_kwargs(cfg),
    )
  )
  t_embed = time.perf_counter()
  tokenizer = load_tokenizer()
  max_len = int(cfg.data.max_len)
  encode = lambda texts: embed_lib.embed_texts(model, variables, tokenizer, texts, max_len=max_len)  # noqa: E731
  for fusion, out_dir in outputs.items():
    evaluator.evaluate_and_write(
      corpus,
      builder,
      encode,
      name=cfg.name,
      checkpoint={"which": checkpoint, "step": label, "workdir": str(workdir)},
      max_corpus=0,
      out_dir=Path(out_dir),
      tag=f"{cfg.name.replace(':', '-')}-{label}-{fusion}",
      queries_path=None,
      qrels_path=None,
      k=evaluator.DEPTH,
      metrics=evaluator.DEFAULT_METRICS,
      t0=t0,
      t_embed=t_embed,
      write=True,
      say=lambda s: None,
      fusion=fusion,
    )


# ---- report -------------------------------------------------------------------------------------


def _fmt(entry: dict | None) -> str:
  if not entry:
    return "n/a"
  return f"{entry['mean']:.4f} ± {entry['std']:.4f}" if entry.get("seeds", 1) > 1 else f"{entry['mean']:.4f}"


def _p(p: float) -> str:
  return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def report_markdown(results: dict) -> str:
  table, findings = results["table"], results["findings"]
  lines = [
    f"# The paper's comparisons on {results['data']} ({results['variant']}, {results['seeds']} seed(s))",
    "",
    f"Metric: {results['metric']} over the test corpus; a ± b is the mean over seeds and its standard "
    "deviation. Per-query figures are recomputed from each run's TREC files (runs/<run>/seed<k>/eval/).",
    "",
  ]
  lines += [
    "## Retrieval (the paper's Table 6 shape)",
    "",
    "| run | text->all | text->s2 | text->s1 |",
    "| --- | --- | --- | --- |",
  ]
  for run in ("closp", "geoclosp", "rgb", "untrained", "s2_only", "s1_only"):
    if run in table:
      lines.append(f"| {run} | " + " | ".join(_fmt(table[run].get(r)) for r in RANKINGS) + " |")
  lines += [
    "",
    "## Unified vs single-sensor training (Table 7 shape)",
    "",
    "| judged on | unified | single sensor |",
    "| --- | --- | --- |",
  ]
  if "closp" in table:
    for sensor, single in (("text->s1", "s1_only"), ("text->s2", "s2_only")):
      if single in table:
        lines.append(f"| {sensor} | {_fmt(table['closp'].get(sensor))} | {_fmt(table[single].get(sensor))} |")
  if results["by_query_type"]:
    lines += [
      "",
      "## CLOSP vs GeoCLOSP per query type (text->all)",
      "",
      "| query type | queries | CLOSP | GeoCLOSP |",
      "| --- | --- | --- | --- |",
    ]
    for t, entry in results["by_query_type"].items():
      if entry:
        n = next(iter(entry.values()))["queries"]
        lines.append(f"| {t} | {n} | {_fmt(entry.get('closp'))} | {_fmt(entry.get('geoclosp'))} |")
  lines += [
    "",
    "## Findings (paired over queries: bootstrap 95% interval, sign-flip p-value)",
    "",
    "| finding | metric | a | b | mean a | mean b | difference | 95% CI | p | queries |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for f in findings:
    lo, hi = f["ci95"]
    lines.append(
      f"| {f['name']} | {f['metric']} | {f['a']} | {f['b']} | {f['mean_a']:.4f} | {f['mean_b']:.4f} | "
      f"{f['difference']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {_p(f['p_value'])} | {f['queries']} |"
    )
  lines += [
    "",
    "![text->all per run, and CLOSP vs GeoCLOSP per query type](chart.png)",
    "",
    f"Suite time: {results['seconds']:.0f} s.",
    "",
  ]
  return "\n".join(lines)


def _draw_charts(results: dict, path: Path) -> None:
  from closp_jax.retrieval.report import draw_chart  # pylint: disable=import-outside-toplevel

  panels = [
    (
      f"{METRIC} text->all per run",
      [(run, (entry.get("text->all") or {}).get("mean")) for run, entry in results["table"].items()],
    )
  ]
  if results["by_query_type"]:
    bars = []
    for t, entry in results["by_query_type"].items():
      for run in ("closp", "geoclosp"):
        bars.append((f"{t} {run}", (entry.get(run) or {}).get("mean")))
    panels.append((f"{METRIC} text->all per query type", bars))
  draw_chart(panels, path)


def projected_note(results: dict) -> str:
  """A one-line summary of the findings (for logs)."""
  parts = []
  for f in results["findings"]:
    parts.append(f"{f['name']}: {f['difference']:+.4f} (p={_p(f['p_value'])})")
  return "; ".join(parts) if parts else "no finding (no finished pair of runs)"
