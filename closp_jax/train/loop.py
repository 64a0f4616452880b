"""The training loop: data, steps, progress, validation, checkpoints, resume, final table.

    from closp_jax.retrieval.training_eval import TrainingEvaluator
    train_and_evaluate(config, workdir, evaluator_factory=TrainingEvaluator)

The loop does not import the retrieval code: what it evaluates (validation loss and nDCG, the
retrieval table of the untrained and the final model) comes from `evaluator_factory(cfg, builder,
mesh, tokenizer)`, which the binary passes (closp_jax/main.py). Without one, `eval.every_steps`
must be 0 and `eval.final` False.

Output: messages and progress on stderr and in WORKDIR/train.log (closp_jax/progress.py), the final
table on stdout, TensorBoard summaries in WORKDIR/tensorboard/{train,validation} (the same tags in
both runs, so TensorBoard overlays them; the config as text and hparams).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import jax
import numpy as np

from closp_jax import atomic
from closp_jax import checkpoint as ckpt_lib
from closp_jax import config as config_lib
from closp_jax.data import pipeline
from closp_jax.data.tokenize import load_tokenizer
from closp_jax.errors import UserError
from closp_jax.parallel import mesh as mesh_lib
from closp_jax.progress import Reporter
from closp_jax.train import setup
from closp_jax.train.optimizer import base_schedule
from closp_jax.train.preemption import RESUME_HINT, Preempted, StopRequest, stopped_message
from closp_jax.train.profile import StepProfiler
from closp_jax.train.step import make_train_step, phase_at, phase_name, text_table


class NonFiniteError(UserError, FloatingPointError):
  """A NaN/Inf loss term or gradient norm with train.nonfinite='stop'; names the step and the terms."""


def batch_digest(batch) -> str:
  """A short fingerprint of a host batch (text ids and a corner of every image), for data-order checks."""
  h = hashlib.sha1()
  for sensor in ("s2", "s1"):
    h.update(np.ascontiguousarray(batch[sensor]["text_id"]).tobytes())
    h.update(np.ascontiguousarray(batch[sensor]["image"][:, :2, :2, :]).tobytes())
  return h.hexdigest()[:16]


def _write_json(path: Path, obj) -> None:
  atomic.write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def _flat_config(config) -> dict:
  """The config's leaves as 'a.b.c' -> int/float/str/bool (TensorBoard hparams take no tuples)."""
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if hasattr(v, "items"):
        walk(v, key + ".")
      elif isinstance(v, (bool, int, float, str)):
        out[key] = v
      elif v is not None:
        out[key] = str(v)

  walk(config, "")
  return out


class Summaries:
  """TensorBoard from process 0: runs `train` and `validation` with the same tags, so the two loss
  curves overlay; the config as text and as hparams (no-op on other processes)."""

  def __init__(self, workdir: Path, config):
    self.writers = {}
    if jax.process_index() != 0:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

    for run in ("train", "validation"):
      self.writers[run] = SummaryWriter(str(workdir / "tensorboard" / run))
    train = self.writers["train"]
    train.add_text("config", "```\n" + config.to_json(indent=2, sort_keys=True) + "\n```", 0)
    train.add_hparams(_flat_config(config), {}, name="hparams")

  def scalars(self, run: str, step: int, values: dict) -> None:
    writer = self.writers.get(run)
    if writer is None:
      return
    for k, v in values.items():
      writer.add_scalar(k, float(v), step)
    writer.flush()

  def close(self):
    for writer in self.writers.values():
      writer.close()


def train_sizes(builder) -> dict[str, int]:
  return {s: pipeline.split_size(builder, "train", s) for s in ("s2", "s1")}


def train_and_evaluate(config, workdir, *, evaluator_factory=None, stream=None) -> dict:
  """Trains per `config` in `workdir` (resuming from its checkpoints); returns the final metrics.

  SIGTERM / SIGINT: during the step loop the current step finishes, is checkpointed (with the
  data-iterator state) and the run returns {"stopped": ..., "signal": NAME}; before or after the
  loop (nothing new to save) it returns at once with the same message. See
  closp_jax/train/preemption.py. `stream`: where messages and progress go (default stderr).
  """
  workdir = setup.check_workdir(workdir)
  run: dict = {}
  with Reporter(stream=stream, log_path=workdir / "train.log") as report, StopRequest() as stop:
    try:
      return _train(config, workdir, report, stop, run, evaluator_factory)
    except Preempted as err:
      ckpt = run.get("ckpt")
      if ckpt is not None:
        ckpt.close()
        directory, latest = ckpt.directory, ckpt.latest_complete_step()
      else:
        directory = workdir / "checkpoints"
        latest = max(ckpt_lib.list_steps(directory), default=None)
      report.say(stopped_message(err, latest, directory))
      return {"steps": latest or 0, "stopped": err.signal_name, "signal": err.signal_name, "phase": err.phase}


def _train(config, workdir: Path, report: Reporter, stop: StopRequest, run: dict, evaluator_factory) -> dict:
  main = jax.process_index() == 0
  say = report.say
  config_lib.validate(config)
  if evaluator_factory is None and (int(config.eval.every_steps) > 0 or config.eval.final):
    raise setup.RunConfigError(
      "this run evaluates (config.eval.every_steps > 0 or config.eval.final) but no evaluator was given: "
      "pass evaluator_factory=closp_jax.retrieval.training_eval.TrainingEvaluator, or set "
      "--config.eval.every_steps=0 --config.eval.final=False"
    )
  if main:  # the run's config, for tools that read the workdir later (closp-evaluate, closp-export)
    atomic.write_text(workdir / "config.json", config.to_json(indent=2, sort_keys=True))
  mesh = mesh_lib.make_mesh(config.mesh)
  setup.check_batch(config, mesh)
  say(
    f"closp-jax {config.name}: {jax.device_count()} {jax.devices()[0].platform} device(s), "
    f"{jax.process_count()} process(es), mesh {dict(mesh.shape)}"
  )

  builder = pipeline.get_builder(
    config.data.name, data_dir=config.data.data_dir or None, manual_dir=config.data.manual_dir or None
  )
  sizes = train_sizes(builder)
  setup.check_train_sizes(config, sizes, builder.info.full_name)
  cfg = setup.resolve_steps(config, sizes)
  total = int(cfg.train.steps)
  model, variables, shardings, optimizer, notes = setup.build_model_and_optimizer(cfg, mesh, total)
  for n in notes:
    say(f"  {n}")
  state, state_shardings = setup.create_state(variables, optimizer, shardings, mesh, int(cfg.seed))
  groups = sorted(state.params)
  tokenizer = load_tokenizer()
  texts = pipeline.dataset_texts(builder)
  evaluator = evaluator_factory(cfg, builder, mesh, tokenizer) if evaluator_factory is not None else None

  nproc = jax.process_count()
  train_it = pipeline.train_iterator(
    builder,
    batch_size=int(cfg.data.batch_size) // nproc,
    seed=int(cfg.seed),
    tokenizer=tokenizer,
    max_len=int(cfg.data.max_len),
    bucket=bool(cfg.data.bucket),
    augment=cfg.data.augment,
    worker_count=int(cfg.data.worker_count),
    **pipeline.input_kwargs(cfg),
  )

  ckpt = run["ckpt"] = ckpt_lib.Checkpointer(
    workdir / "checkpoints", keep=int(cfg.checkpoint.keep), async_save=bool(cfg.checkpoint.async_save)
  )
  warning = ckpt.check_space(sum(x.nbytes for x in jax.tree.leaves(state)))
  if warning:
    say(warning)
  restored, start = ckpt.restore_latest(ckpt_lib.abstract_like(state), train_it, say=say)
  if restored is not None:
    state = restored
    say(f"resumed from {ckpt.directory}/{start} (step {int(state.step)}), the newest complete checkpoint")
  start = int(state.step)

  untrained_path = workdir / "eval" / "untrained.json"
  untrained = None
  if cfg.eval.final:
    if untrained_path.is_file():
      untrained = json.loads(untrained_path.read_text())
    elif start == 0:
      say("evaluating the untrained model on the test corpus ...")
      untrained = evaluator.table(model, _vars(state))
      if main:
        _write_json(untrained_path, untrained)

  summaries = Summaries(workdir, cfg)
  samples_per_step = 2 * int(cfg.data.batch_size)
  sched = base_schedule(cfg.optim, total)
  table_cache: dict = {}
  compiled: dict = {}

  def step_fn_for(step: int):
    phase = phase_at(cfg, groups, step)
    if phase not in compiled:
      fn = make_train_step(cfg, phase, model=model, optimizer=optimizer, mesh=mesh)
      compiled[phase] = jax.jit(fn, donate_argnums=(0,), out_shardings=(state_shardings, mesh_lib.replicated(mesh)))
    if not phase.text_table:
      return compiled[phase], np.zeros((1, 1), np.float32)
    if "table" not in table_cache:  # the text tower is frozen: one embedding per dataset text, computed once
      table_cache["table"] = jax.device_put(
        text_table(model, _vars(state), tokenizer, texts, cfg), mesh_lib.replicated(mesh)
      )
    return compiled[phase], table_cache["table"]

  say(
    f"training {total} steps ({cfg.train.steps_per_epoch} per epoch), {cfg.data.batch_size} S2 + "
    f"{cfg.data.batch_size} S1 samples per step; checkpoints in {ckpt.directory}; log in {workdir / 'train.log'}"
  )
  progress = report.task(total, "step", unit="step", start=start, every=int(cfg.train.log_every_steps))
  pending = None  # (step, metrics) of the last dispatched step, checked one step late
  last_val = {}
  t_start = time.perf_counter()
  stop_after = int(cfg.train.stop_after)
  order_file = workdir / "data_order.txt" if cfg.train.record_data_order and main else None
  stopped = signal_name = None
  stop.phase = "train"

  def check(pending_step):
    _check_and_report(pending_step, cfg, report, progress, summaries, sched, samples_per_step)

  profiler = StepProfiler(workdir, str(cfg.profile.steps), start_step=start, total=total, say=say)

  try:
    for step in range(start, total):
      fn, table = step_fn_for(step)
      batch = next(train_it)
      if order_file is not None:
        with open(order_file, "a", encoding="utf-8") as f:
          f.write(f"{step + 1} {batch_digest(batch)}\n")
      gbatch = mesh_lib.global_batch(
        {
          s: {k: v for k, v in batch[s].items() if k in ("image", "input_ids", "attention_mask", "lonlat", "text_id")}
          for s in ("s2", "s1")
        },
        mesh,
      )
      name = phase_name(phase_at(cfg, groups, step), groups)
      if name not in profiler.analyses:
        profiler.analyse(name, fn, state, gbatch, table)  # compiles once; the call below reuses it
      with profiler.annotation(step):
        state, metrics = fn(state, gbatch, table)
      profiler.after(step, metrics)
      if pending is not None:
        check(pending)
      pending = (step + 1, metrics)
      if step == start:
        jax.block_until_ready(metrics)
        progress.restart_clock()  # rates from here on: the first step compiles
      do_eval = evaluator is not None and int(cfg.eval.every_steps) > 0 and (step + 1) % int(cfg.eval.every_steps) == 0
      do_ckpt = (step + 1) % int(cfg.checkpoint.every_steps) == 0 or step + 1 == total
      signalled = stop.agree()
      signal_name = signal_name or signalled
      if signalled or (stop_after and step + 1 == stop_after):
        stopped = signalled or f"train.stop_after={stop_after}"
        do_ckpt = True
      if do_eval or do_ckpt:
        check(pending)
        pending = None
        val = None
        if do_eval:
          val = evaluator.validation(model, _vars(state))
          last_val = val
          summaries.scalars("validation", step + 1, {k.replace("val_", "", 1): v for k, v in val.items()})
          say(f"validation at step {step + 1}: loss {val['val_loss']:.4f}, nDCG@100 {val['val_nDCG@100']:.4f}")
        ckpt.save(step + 1, state, train_it, metrics=val, force=step + 1 == total or stopped is not None)
      if stopped:
        break
    if pending is not None:
      check(pending)
  except NonFiniteError as err:
    ckpt.wait()
    latest = ckpt.latest_complete_step()
    raise NonFiniteError(
      f"{err} The latest checkpoint, step {latest}, holds the last good state."
      if latest is not None
      else f"{err} No checkpoint was written before it."
    ) from None
  finally:
    profiler.stop()
    try:
      ckpt.wait()
    finally:
      progress.close()
      summaries.close()
  late = stop.agree()  # a signal after the last step's check: its checkpoint is saved
  signal_name = signal_name or late
  stopped = stopped or late
  stop.phase = "final"  # a signal from here on has nothing new to save
  if stopped:
    ckpt.close()
    say(f"stopped ({stopped}) after step {int(state.step)}; checkpoint saved in {ckpt.directory}. {RESUME_HINT}")
    return {"steps": int(state.step), "stopped": stopped, "signal": signal_name}
  train_seconds = time.perf_counter() - t_start
  result = {"steps": total, "train_seconds": train_seconds, "validation": last_val}
  if cfg.eval.final:
    say("evaluating the trained model on the test corpus ...")
    final = evaluator.table(model, _vars(state))
    result["final"] = final
    result["untrained"] = untrained
    if main:
      _write_json(workdir / "eval" / f"final_{total}.json", final)
      text = "\nRetrieval on the test corpus (queries.jsonl + qrels):\n" + evaluator.format_table(final, untrained)
      print(text, flush=True)  # the result: stdout
      report._log(text)  # pylint: disable=protected-access
  ckpt.close()
  return result


def _vars(state) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def _check_and_report(
  pending, cfg, report: Reporter, progress, summaries: Summaries, sched, samples_per_step: int
) -> None:
  step, metrics = pending
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not m.pop("finite"):
    bad = [k for k, v in m.items() if not np.isfinite(v)]
    msg = f"non-finite values at step {step}: {', '.join(bad) or 'loss'} ({', '.join(f'{k}={m[k]}' for k in bad)})"
    if cfg.train.nonfinite == "skip":
      report.say(msg + "; step skipped (parameters unchanged)")
    else:
      raise NonFiniteError(
        msg + ". Lower the learning rate (config.optim.lr), check the data, or "
        "set --config.train.nonfinite=skip to skip such steps."
      )
  lr = float(sched(step - 1))
  summaries.scalars("train", step, {**m, "lr": lr})
  terms = {k.split("/", 1)[1]: v for k, v in sorted(m.items()) if k.startswith("loss/")}
  progress.update(
    step,
    loss=m["loss"],
    **terms,
    lr=lr,
    scale=m["logit_scale"],
    **{"samples/s": round(progress.rate() * samples_per_step, 1)},
  )
