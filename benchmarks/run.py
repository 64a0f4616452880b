r"""closp-jax side by side with its references: train steps, MFU, input pipeline, retrieval, embedding, loss memory.

  python benchmarks/run.py [--quick] [--json OUT.json] [--rows train_step_sample,loss_memory]

Prints a table and (with --json) writes {"ROW": {"closp_jax": x, "reference": y, "unit": u,
"ratio": r, "detail": {...}}}; ratio > 1 means closp-jax is better (faster, or less memory).
Figures are medians of alternated repeats after warm-up (benchmarks/common.py). Rows:

  train_step_rn50     samples/s, CLOSP-RN (ResNet-50 x2 + MiniLM, 120 px, 64 S2 + 64 S1, fp32, AdamW,
                      every tower trained) vs the PyTorch reference (timm + transformers)
  train_step_rn50_bucketed   the same with the trainer's data.bucket=True (label texts padded to 16
                      tokens instead of 64); the reference keeps the original's 64. Full runs only.
  train_step_sample   samples/s, the :sample config's towers (resnet_tiny, frozen text through cached
                      embeddings on both sides, learnable temperature)
  mfu_cpu             FLOP/s of the closp-jax ResNet-50 step (XLA's count) vs a float32 matmul
                      measured in the same rounds; ratio = utilisation
  input_pipeline      samples/s, grain train iterator vs the original's per-sample HDF5 reads
  input_pipeline_vs_step   grain train iterator vs the :sample train step's consumption
  retrieval_top1000   queries/s, exact top-1000 of 1,000 queries over 647,000 x 384, vs faiss IndexFlatIP
  eval_embed          samples/s, the evaluation binary's embed_corpus vs the original-style pass
  loss_memory         per-device temporary bytes of loss + gradient, dense vs shard_map ring loss,
                      global batch 32,768 over 64 fake devices (compiled, never run)

--quick (under 10 minutes on 2 busy cores) keeps every row but shrinks them: ResNet-50 step at 16 + 16,
fewer repeats, a 1,000 + 1,000 synthetic archive, the :sample towers for eval_embed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402  pylint: disable=wrong-import-position

ALL_ROWS = (
  "train_step_sample",
  "train_step_rn50",
  "train_step_rn50_bucketed",
  "mfu_cpu",
  "input_pipeline",
  "input_pipeline_vs_step",
  "retrieval_top1000",
  "eval_embed",
  "loss_memory",
)
PAPER_ALL_TRAINED = {"optim.frozen": (), "optim.freeze_steps": 0}


@dataclasses.dataclass(frozen=True)
class Sizes:
  rn50_batch: int = 64
  rn50_repeats: int = 5
  sample_batch: int = 64
  sample_repeats: int = 7
  warmup: int = 1
  bucketed_row: bool = True
  archive: tuple[int, int] | None = None  # None: crisis_landmark/sample (4,000 + 4,000)
  pipeline_batches: int = 20  # timed batches per grain round (plus the prefetch drained)
  pipeline_repeats: int = 5
  queries: int = 1000
  docs: int = 647000
  dim: int = 384
  k: int = 1000
  retrieval_repeats: int = 3
  eval_variant: str = "paper"
  eval_batch: int = 256
  eval_items: int = 512  # per sensor
  eval_repeats: int = 3
  loss_batch: int = 32768
  loss_devices: int = 64


FULL = Sizes()
QUICK = Sizes(
  rn50_batch=16,
  rn50_repeats=3,
  sample_repeats=5,
  bucketed_row=False,
  archive=(1000, 1000),
  pipeline_batches=8,
  pipeline_repeats=3,
  retrieval_repeats=2,
  eval_variant="sample",
  eval_batch=128,
  eval_items=256,
  eval_repeats=3,
)


def say(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


class Bench:
  """Runs the requested rows in order, sharing what later rows need (step rates, the archive)."""

  def __init__(self, sizes: Sizes, rows: list[str], data_dir: str | None, json_path: str | None):
    self.sizes, self.rows, self.data_dir, self.json_path = sizes, rows, data_dir, json_path
    self.results: dict[str, dict] = {}
    self.step_rates: dict[str, float] = {}
    self._builder = None
    self._tmp = tempfile.TemporaryDirectory(prefix="closp_bench_")
    self._release = None

  # -- bookkeeping --
  def record(self, name: str, row: dict) -> None:
    self.results[name] = row
    say(
      f"  {name}: closp-jax {row['closp_jax']:.4g} vs reference {row['reference']:.4g} {row['unit']} "
      f"-> ratio {row['ratio']:.2f}"
    )
    if self.json_path:
      common.write_json(self.json_path, self.results)

  def wants(self, *names: str) -> bool:
    return any(n in self.rows for n in names)

  # -- train steps --
  def train_step(
    self,
    name: str,
    variant: str,
    batch: int,
    repeats: int,
    overrides: dict,
    text_len: int | None = None,
    with_matmul: bool = False,
  ) -> None:
    import torch  # pylint: disable=import-outside-toplevel

    from benchmarks import jax_step, torch_reference  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(os.cpu_count() or 1)
    say(f"{name}: building the closp-jax step ({variant}, {batch} + {batch}) ...")
    js = jax_step.ClospStep.build(variant, batch_size=batch, overrides=overrides, text_len=text_len)
    say(f"  compiled in {js.compile_seconds:.0f} s, {js.flops / 1e9:.1f} GFLOP per step")
    table = jax_step.text_table(int(js.cfg.model.embed_dim)) if js.use_text_table else None
    ref_batch = js.host_batch
    if text_len is not None:  # the reference pads as the original does (max_length 64)
      ref_batch = jax_step.synthetic_batch(js.cfg, batch)
    ts = torch_reference.TorchStep(js.cfg, ref_batch, text_table=table, lr_table=jax_step.lr_table(js.cfg))
    if ts.num_params() != js.trainable_params:
      raise RuntimeError(
        f"{name}: the reference trains {ts.num_params():,} parameters, closp-jax "
        f"{js.trainable_params:,}: the two models differ"
      )
    contenders = {"closp_jax": js.run, "reference": ts.run}
    matmul = []
    if with_matmul:
      contenders["matmul"] = lambda: matmul.append(common.matmul_gflops())
    say(f"  timing {repeats} alternated rounds after {self.sizes.warmup} warm-up ...")
    times = common.alternate(contenders, repeats=repeats, warmup=self.sizes.warmup)
    losses = {"closp_jax_loss": js.metrics()["loss"], "reference_loss": float(ts.last_loss)}
    detail = {
      "batch_per_sensor": batch,
      "trainable_params": js.trainable_params,
      "closp_jax_gflop_per_step": round(js.flops / 1e9, 2),
      "compile_s": round(js.compile_seconds, 1),
      "text_len": text_len or int(js.cfg.data.max_len),
      "torch_threads": torch.get_num_threads(),
      **losses,
    }
    row = common.timed_row(times, "closp_jax", "reference", js.samples_per_step, "samples/s", detail)
    self.record(name, row)
    self.step_rates[name] = row["closp_jax"]
    if with_matmul and self.wants("mfu_cpu"):
      peak = common.median(matmul[self.sizes.warmup :])
      achieved = js.flops / common.median(times["closp_jax"]) / 1e9
      ref_achieved = js.flops / common.median(times["reference"]) / 1e9
      self.record(
        "mfu_cpu",
        common.make_row(
          achieved,
          peak,
          "GFLOP/s",
          common.HIGHER,
          {
            "step": name,
            "flop_count": "XLA cost_analysis of the closp-jax step",
            "matmul": "float32 2048^3, best of 3 per round, median over rounds",
            "reference_gflops_same_count": round(ref_achieved, 2),
            "matmul_repeats": [round(m, 1) for m in matmul],
          },
        ),
      )
    del js, ts
    gc.collect()

  # -- data --
  def builder(self):
    if self._builder is None:
      from benchmarks import input_pipeline  # pylint: disable=import-outside-toplevel
      from closp_jax.data import pipeline  # pylint: disable=import-outside-toplevel

      config = input_pipeline.bench_config(*self.sizes.archive) if self.sizes.archive else None
      say("preparing the synthetic archive (built once per data dir) ...")
      self._builder = pipeline.get_builder("crisis_landmark/sample", data_dir=self.data_dir, config=config)
    return self._builder

  def release(self) -> Path:
    if self._release is None:
      from benchmarks import input_pipeline  # pylint: disable=import-outside-toplevel

      say("writing the release-layout HDF5 archive for the original-style reader ...")
      self._release = input_pipeline.synthetic_release(self.builder(), Path(self._tmp.name))
    return self._release

  def input_pipeline(self) -> None:
    from benchmarks import input_pipeline  # pylint: disable=import-outside-toplevel

    s, batch = self.sizes, 64
    builder, release = self.builder(), self.release()
    threads = 2
    it = input_pipeline.make_grain_iterator(builder, batch, threads=threads)
    drain = input_pipeline.grain_prefetch(threads)
    per_round = 2 * batch * s.pipeline_batches
    keys = input_pipeline.original_keys(release, per_round * (s.pipeline_repeats + s.warmup) + per_round)
    chunks = iter([keys[i : i + per_round] for i in range(0, len(keys), per_round)])
    say(f"input_pipeline: {s.pipeline_repeats} rounds of {per_round} samples ...")
    times = common.alternate(
      {
        # Batches already prefetched while the other contender ran are pulled first, untimed in
        # the work count (their time is in the round, so the rate is if anything low).
        "closp_jax": lambda: input_pipeline.take_batches(it, drain + s.pipeline_batches, batch),
        "reference": lambda: input_pipeline.read_original_keys(release, next(chunks)),
      },
      repeats=s.pipeline_repeats,
      warmup=s.warmup,
    )
    detail = {
      "dataset": builder.info.full_name,
      "batch_per_sensor": batch,
      "read_threads": threads,
      "grain": "train_iterator: ArrayRecord read, decode, normalise, flips/rotations, tokens, batch",
      "reference_reader": "h5py open of crisislandmark.h5 per sample, quirks, lon/lat; one process",
    }
    row = common.timed_row(times, "closp_jax", "reference", per_round, "samples/s", detail)
    if "input_pipeline" in self.rows:
      self.record("input_pipeline", row)
    if "input_pipeline_vs_step" in self.rows:
      step = self.step_rates.get("train_step_sample")
      if step is None:
        say("  input_pipeline_vs_step needs the train_step_sample row; skipped")
      else:
        self.record(
          "input_pipeline_vs_step",
          common.make_row(
            row["closp_jax"],
            step,
            "samples/s",
            common.HIGHER,
            {
              "reference_is": "closp-jax train_step_sample consumption (samples/s)",
              "rn50_step_consumption": self.step_rates.get("train_step_rn50"),
            },
          ),
        )

  # -- retrieval --
  def retrieval(self) -> None:
    from benchmarks import retrieval  # pylint: disable=import-outside-toplevel

    s = self.sizes
    say(f"retrieval_top1000: {s.queries} queries x {s.docs:,} x {s.dim}, k={s.k} ...")
    corpus = retrieval.unit_vectors(s.docs, s.dim, 0)
    queries = retrieval.unit_vectors(s.queries, s.dim, 1)
    index = retrieval.FaissFlat(corpus)
    out = {}
    times = common.alternate(
      {
        "closp_jax": lambda: out.__setitem__("jax", retrieval.jax_search(queries, corpus, s.k)),
        "reference": lambda: out.__setitem__("faiss", index.search(queries, s.k)),
      },
      repeats=s.retrieval_repeats,
      warmup=s.warmup,
    )
    agreement = retrieval.check_same(out["jax"], out["faiss"])
    detail = {
      "queries": s.queries,
      "docs": s.docs,
      "dim": s.dim,
      "k": s.k,
      "reference_impl": "faiss IndexFlatIP",
      **agreement,
    }
    self.record("retrieval_top1000", common.timed_row(times, "closp_jax", "reference", s.queries, "queries/s", detail))
    corpus = index = out = None  # release the corpus before the next row
    gc.collect()

  # -- evaluation embedding --
  def eval_embed(self) -> None:
    import torch  # pylint: disable=import-outside-toplevel

    from benchmarks import eval_embed  # pylint: disable=import-outside-toplevel

    s = self.sizes
    builder, release = self.builder(), self.release()
    say(f"eval_embed: {s.eval_variant} towers, {s.eval_items} test samples per sensor, batch {s.eval_batch} ...")
    jx = eval_embed.ClospEmbed(builder, s.eval_variant, eval_batch_size=s.eval_batch, max_items=s.eval_items)
    ref = eval_embed.TorchEmbed(release, jx.cfg, eval_batch_size=s.eval_batch, max_items=s.eval_items)
    times = common.alternate({"closp_jax": jx.run, "reference": ref.run}, repeats=s.eval_repeats, warmup=s.warmup)
    if jx.count != ref.count:
      raise RuntimeError(f"eval_embed: closp-jax embedded {jx.count} samples, the reference {ref.count}")
    chans = int(jx.cfg.model.s2_in_chans)
    model_times = common.alternate(
      {"closp_jax": jx.model_only("s2"), "reference": ref.model_only("s2", chans)},
      repeats=s.eval_repeats,
      warmup=s.warmup,
    )
    detail = {
      "towers": s.eval_variant,
      "samples": jx.count,
      "eval_batch": s.eval_batch,
      "torch_threads": torch.get_num_threads(),
      "model_only_s2_samples_per_s": {
        k: round(common.median(common.rates(v, s.eval_batch)), 1) for k, v in model_times.items()
      },
    }
    self.record("eval_embed", common.timed_row(times, "closp_jax", "reference", jx.count, "samples/s", detail))

  # -- loss memory --
  def loss_memory(self) -> None:
    s = self.sizes
    say(f"loss_memory: global batch {s.loss_batch} over {s.loss_devices} fake devices (compile only) ...")
    cmd = [
      sys.executable,
      str(REPO / "benchmarks" / "loss_memory.py"),
      "--json",
      "--global_batch",
      str(s.loss_batch),
      "--num_devices",
      str(s.loss_devices),
      "--dim",
      "384",
    ]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"benchmarks/loss_memory.py failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    vg, fwd = result["value_and_grad"], result["loss"]
    self.record(
      "loss_memory",
      common.make_row(
        vg["shard_map"],
        vg["dense"],
        "bytes",
        common.LOWER,
        {
          "closp_jax_is": "shard_map ring loss (loss.chunked=True)",
          "reference_is": "dense loss, same jit",
          "measure": "XLA temp_size_in_bytes per device of value_and_grad",
          "loss_only": fwd,
          "global_batch": s.loss_batch,
          "devices": s.loss_devices,
        },
      ),
    )

  # -- all --
  def run(self) -> dict:
    s = self.sizes
    if self.wants("train_step_sample", "input_pipeline_vs_step"):
      self.train_step("train_step_sample", "sample", s.sample_batch, s.sample_repeats, {})
    if self.wants("train_step_rn50", "mfu_cpu"):
      self.train_step("train_step_rn50", "paper", s.rn50_batch, s.rn50_repeats, PAPER_ALL_TRAINED, with_matmul=True)
    if self.wants("train_step_rn50_bucketed") and s.bucketed_row:
      self.train_step(
        "train_step_rn50_bucketed",
        "paper",
        s.rn50_batch,
        s.rn50_repeats,
        {**PAPER_ALL_TRAINED, "data.bucket": True},
        text_len=16,
      )
    if self.wants("input_pipeline", "input_pipeline_vs_step"):
      self.input_pipeline()
    if self.wants("retrieval_top1000"):
      self.retrieval()
    if self.wants("eval_embed"):
      self.eval_embed()
    if self.wants("loss_memory"):
      self.loss_memory()
    self._tmp.cleanup()
    return {k: self.results[k] for k in ALL_ROWS if k in self.results}


def parse_rows(spec: str | None) -> list[str]:
  if not spec:
    return list(ALL_ROWS)
  rows = [r.strip() for r in spec.split(",") if r.strip()]
  unknown = [r for r in rows if r not in ALL_ROWS]
  if unknown:
    raise SystemExit(f"--rows: unknown row(s) {', '.join(unknown)}; valid rows: {', '.join(ALL_ROWS)}")
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (< 10 min here)")
  parser.add_argument("--json", default=None, help="write the rows to this JSON file (rewritten after each row)")
  parser.add_argument("--rows", default=None, help=f"comma-separated subset of: {', '.join(ALL_ROWS)}")
  parser.add_argument(
    "--data_dir",
    default=None,
    help="TFDS data dir for the synthetic archive (default $CLOSP_DATA_DIR or ~/tensorflow_datasets)",
  )
  args = parser.parse_args(argv)
  rows = parse_rows(args.rows)
  sizes = QUICK if args.quick else FULL
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  start = time.perf_counter()
  machine = common.machine_summary()
  say("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
  results = Bench(sizes, rows, args.data_dir, args.json).run()
  if args.json:
    common.write_json(args.json, results)
  print(
    f"closp-jax benchmarks ({'quick' if args.quick else 'full'}), "
    f"{machine['cpus']} x {machine['cpu']}, load average {machine['load_avg_1m']} at start, "
    f"{common.load_average()} at end, {time.perf_counter() - start:.0f} s"
  )
  print(common.format_table(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
