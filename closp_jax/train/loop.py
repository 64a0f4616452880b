"""The training loop: data, steps, progress, validation, checkpoints, resume, final table."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from closp_jax import atomic
from closp_jax import checkpoint as ckpt_lib
from closp_jax import config as config_lib
from closp_jax.data import pipeline
from closp_jax.data.tokenize import load_tokenizer
from closp_jax.parallel import mesh as mesh_lib
from closp_jax.retrieval import embed as embed_lib
from closp_jax.train import evaluation, setup
from closp_jax.train.optimizer import base_schedule, trainable_groups
from closp_jax.train.preemption import RESUME_HINT, Preempted, StopRequest, stopped_message
from closp_jax.train.progress import Progress
from closp_jax.train.step import make_train_step, uses_text_table


class NonFiniteError(FloatingPointError):
  """A NaN/Inf loss term or gradient norm with train.nonfinite='stop'; names the step and the terms."""


def batch_digest(batch) -> str:
  """A short fingerprint of a host batch (text ids and a corner of every image), for data-order checks."""
  h = hashlib.sha1()
  for sensor in ("s2", "s1"):
    h.update(np.ascontiguousarray(batch[sensor]["text_id"]).tobytes())
    h.update(np.ascontiguousarray(batch[sensor]["image"][:, :2, :2, :]).tobytes())
  return h.hexdigest()[:16]


def _write_json(path: Path, obj) -> None:
  _write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def _write_text(path: Path, text: str) -> None:
  atomic.write_text(path, text)


class _Summaries:
  """TensorBoard scalars from process 0 (no-op elsewhere)."""

  def __init__(self, workdir: Path):
    self.writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self.writer = SummaryWriter(str(workdir / "tensorboard"))

  def scalars(self, step: int, values: dict) -> None:
    if self.writer is None:
      return
    for k, v in values.items():
      self.writer.add_scalar(k, float(v), step)

  def close(self):
    if self.writer is not None:
      self.writer.close()


def train_sizes(builder) -> dict[str, int]:
  return {s: pipeline.split_size(builder, "train", s) for s in ("s2", "s1")}


def train_and_evaluate(config, workdir, *, stream=None) -> dict:
  """Trains per `config` in `workdir` (resuming from its checkpoints); returns the final metrics.

  SIGTERM / SIGINT: during the step loop the current step finishes, is checkpointed (with the
  data-iterator state) and the run returns {"stopped": ...}; before or after the loop (nothing
  new to save) it returns at once with the same message. See closp_jax/train/preemption.py.
  """
  stream = stream or sys.stdout
  main = jax.process_index() == 0
  say = (lambda s: print(s, file=stream, flush=True)) if main else (lambda s: None)
  run: dict = {}
  with StopRequest() as stop:
    try:
      return _train(config, workdir, stream, say, stop, run)
    except Preempted as err:
      ckpt = run.get("ckpt")
      if ckpt is not None:
        ckpt.close()
        directory, latest = ckpt.directory, ckpt.latest_complete_step()
      else:
        directory = Path(workdir).expanduser().absolute() / "checkpoints"
        latest = max(ckpt_lib.list_steps(directory), default=None)
      say(stopped_message(err, latest, directory))
      return {"steps": latest or 0, "stopped": err.signal_name, "phase": err.phase}


def _train(config, workdir, stream, say, stop: StopRequest, run: dict) -> dict:
  main = jax.process_index() == 0
  config_lib.validate(config)
  workdir = setup.check_workdir(workdir)
  if main:  # the run's config, for tools that read the workdir later (closp_jax.export)
    _write_text(workdir / "config.json", config.to_json(indent=2, sort_keys=True))
  mesh = mesh_lib.make_mesh(config.mesh)
  setup.check_batch(config, mesh)
  say(f"closp-jax {config.name}: {jax.device_count()} {jax.devices()[0].platform} device(s), "
      f"{jax.process_count()} process(es), mesh {dict(mesh.shape)}")

  builder = pipeline.get_builder(config.data.name, data_dir=config.data.data_dir or None,
                                 manual_dir=config.data.manual_dir or None)
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

  nproc = jax.process_count()
  train_it = pipeline.train_iterator(
      builder, batch_size=int(cfg.data.batch_size) // nproc, seed=int(cfg.seed), tokenizer=tokenizer,
      max_len=int(cfg.data.max_len), bucket=bool(cfg.data.bucket), augment=cfg.data.augment,
      worker_count=int(cfg.data.worker_count), **pipeline.input_kwargs(cfg))

  ckpt = run["ckpt"] = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=int(cfg.checkpoint.keep),
                                             async_save=bool(cfg.checkpoint.async_save))
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
      untrained = evaluation.retrieval_table(model, _vars(state), builder, mesh, cfg, tokenizer)
      if main:
        _write_json(untrained_path, untrained)

  summaries = _Summaries(workdir)
  samples_per_step = 2 * int(cfg.data.batch_size)
  progress = Progress(total, start, samples_per_step, enabled=main, stream=stream,
                      every=int(cfg.train.log_every_steps))
  sched = base_schedule(cfg.optim, total)
  text_emb_cache: dict = {}

  def text_table(params_for_text):
    """Normalised embeddings of every distinct dataset text (cached while the text path is frozen)."""
    if "table" not in text_emb_cache:
      emb = embed_lib.embed_texts(model, params_for_text, tokenizer, texts, max_len=int(cfg.data.max_len))
      text_emb_cache["table"] = jax.device_put(emb, mesh_lib.replicated(mesh))
    return text_emb_cache["table"]

  compiled: dict = {}

  def step_fn_for(step: int):
    trainable = trainable_groups(cfg.optim, groups, step)
    use_table = uses_text_table(cfg, trainable)
    key = (trainable, use_table)
    if key not in compiled:
      fn = make_train_step(model, cfg, optimizer, trainable=trainable, use_text_table=use_table, mesh=mesh)
      compiled[key] = jax.jit(fn, donate_argnums=(0,), out_shardings=(state_shardings, mesh_lib.replicated(mesh)))
    return compiled[key], use_table

  say(f"training {total} steps ({cfg.train.steps_per_epoch} per epoch), {cfg.data.batch_size} S2 + "
      f"{cfg.data.batch_size} S1 samples per step; checkpoints in {ckpt.directory}")
  pending = None  # (step, metrics) of the last dispatched step, checked one step late
  last_val = {}
  t_start = time.perf_counter()
  stop_after = int(cfg.train.stop_after)
  order_file = workdir / "data_order.txt" if cfg.train.record_data_order and main else None
  stopped = None
  stop.phase = "train"
  try:
    for step in range(start, total):
      fn, use_table = step_fn_for(step)
      table = text_table(_vars(state)) if use_table else np.zeros((1, 1), np.float32)
      batch = next(train_it)
      if order_file is not None:
        with open(order_file, "a", encoding="utf-8") as f:
          f.write(f"{step + 1} {batch_digest(batch)}\n")
      gbatch = mesh_lib.global_batch(
          {s: {k: v for k, v in batch[s].items() if k in ("image", "input_ids", "attention_mask", "lonlat", "text_id")}
           for s in ("s2", "s1")}, mesh)
      state, metrics = fn(state, gbatch, table)
      if pending is not None:
        _check_and_report(pending, cfg, progress, summaries, sched)
      pending = (step + 1, metrics)
      if step == start:
        jax.block_until_ready(metrics)
        progress.start_timer(step + 1)
      do_eval = int(cfg.eval.every_steps) > 0 and (step + 1) % int(cfg.eval.every_steps) == 0
      do_ckpt = (step + 1) % int(cfg.checkpoint.every_steps) == 0 or step + 1 == total
      signalled = stop.agree()
      if signalled or (stop_after and step + 1 == stop_after):
        stopped = signalled or f"train.stop_after={stop_after}"
        do_ckpt = True
      if do_eval or do_ckpt:
        _check_and_report(pending, cfg, progress, summaries, sched)
        pending = None
        val = None
        if do_eval:
          val = evaluation.validation_metrics(model, _vars(state), builder, mesh, cfg,
                                              np.asarray(_all_text_emb(model, state, tokenizer, texts, cfg)))
          last_val = val
          summaries.scalars(step + 1, val)
          progress.message(f"validation at step {step + 1}: loss {val['val_loss']:.4f}, "
                           f"nDCG@100 {val['val_nDCG@100']:.4f}")
        ckpt.save(step + 1, state, train_it, metrics=val, force=step + 1 == total or stopped is not None)
      if stopped:
        break
    if pending is not None:
      _check_and_report(pending, cfg, progress, summaries, sched)
  except NonFiniteError as err:
    ckpt.wait()
    latest = ckpt.latest_complete_step()
    raise NonFiniteError(
        f"{err} The latest checkpoint, step {latest}, holds the last good state." if latest is not None
        else f"{err} No checkpoint was written before it.") from None
  finally:
    try:
      ckpt.wait()
    finally:
      summaries.close()
  stopped = stopped or stop.agree()  # a signal after the last step's check: its checkpoint is saved
  stop.phase = "final"  # a signal from here on has nothing new to save
  if stopped:
    ckpt.close()
    say(f"stopped ({stopped}) after step {int(state.step)}; checkpoint saved in {ckpt.directory}. {RESUME_HINT}")
    return {"steps": int(state.step), "stopped": stopped}
  train_seconds = time.perf_counter() - t_start
  result = {"steps": total, "train_seconds": train_seconds, "validation": last_val}
  if cfg.eval.final:
    say("evaluating the trained model on the test corpus ...")
    final = evaluation.retrieval_table(model, _vars(state), builder, mesh, cfg, tokenizer)
    result["final"] = final
    result["untrained"] = untrained
    if main:
      _write_json(workdir / "eval" / f"final_{total}.json", final)
    say("\nRetrieval on the test corpus (queries.jsonl + qrels):")
    say(evaluation.format_table(final, untrained))
  ckpt.close()
  return result


def _vars(state) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def _all_text_emb(model, state, tokenizer, texts, cfg):
  return embed_lib.embed_texts(model, _vars(state), tokenizer, texts, max_len=int(cfg.data.max_len))


def _check_and_report(pending, cfg, progress: Progress, summaries: _Summaries, sched) -> None:
  step, metrics = pending
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not m.pop("finite"):
    bad = [k for k, v in m.items() if not np.isfinite(v)]
    msg = (f"non-finite values at step {step}: {', '.join(bad) or 'loss'} "
           f"({', '.join(f'{k}={m[k]}' for k in bad)})")
    if cfg.train.nonfinite == "skip":
      progress.message(msg + "; step skipped (parameters unchanged)")
    else:
      raise NonFiniteError(msg + ". Lower the learning rate (config.optim.lr), check the data, or "
                           "set --config.train.nonfinite=skip to skip such steps.")
  lr = float(sched(step - 1))
  summaries.scalars(step, {**m, "lr": lr})
  progress.update(step, m, lr)
