r"""GPU train steps in bf16: closp-jax vs the PyTorch reference, with MFU against the chip's peak.

  python benchmarks/gpu.py            # on the GPU machine; writes $OUT/gpu.json when OUT is set
  python benchmarks/gpu.py --tiny     # the same code path on CPU with tiny towers (a test)

Rows (same shape as benchmarks/run.py's JSON, plus "mfu"), written to benchmarks/results/gpu-DATE.json
($OUT/gpu-DATE.json where OUT is set, or --out FILE):
  gpu_train_step_rn50     samples/s, CLOSP-RN towers (ResNet-50 x2 at 120 px + MiniLM), 64 S2 + 64 S1,
                          every tower trained, AdamW; closp-jax with model.dtype=bfloat16 (float32
                          parameters and optimizer), PyTorch with torch.autocast(bfloat16), channels_last
  gpu_train_step_vit_l    the same with CLOSP-VL towers (ViT-L/16 x2 at 224 px + MiniLM)
                          each row's "mfu": achieved FLOP/s of the closp-jax step (XLA's FLOP count) over
                          the chip's dense bf16 peak (--peak_tflops, 989 for H100/H200 SXM); the detail
                          also gives it against the 8192^3 bf16 matmul measured in this run, and
                          PyTorch's figures for the same FLOP count
  matmul_bf16             TFLOP/s of an 8192^3 bf16 matmul, jax vs torch

Each framework runs in its own worker process (no CUDA library clash, separate memory pools);
this process alternates them round by round after warm-up and takes medians
(benchmarks/common.py). Nothing here imports closp_jax.data (no grain/tfds/pyproj/hdf5plugin
needed); the text tower of the reference is transformers' BertModel when transformers is
installed, else the same network in plain torch (benchmarks/torch_reference.NativeBert).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402  pylint: disable=wrong-import-position

DENSE_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "B200": 2250.0}
ALL_TRAINED = {"optim.frozen": (), "optim.freeze_steps": 0, "model.dtype": "bfloat16"}
MODELS = {  # name: (config variant, overrides)
  "rn50": ("paper", {}),
  "vit_l": ("vit_l", {}),
}
TINY_MODELS = {
  "rn50": (
    "paper",
    {
      "model.s2_encoder": "resnet_tiny",
      "model.s1_encoder": "resnet_tiny",
      "model.s2_head_classes": 0,
      "model.s1_head_classes": 0,
    },
  ),
  "vit_l": (
    "vit_l",
    {"model.s2_encoder": "vit_tiny", "model.s1_encoder": "vit_tiny", "model.image_size": 120, "model.text.layers": 1},
  ),
}


# ---- workers ------------------------------------------------------------------------------------


def _protocol_out():
  """A private copy of stdout for protocol lines; fd 1 then points at stderr, so library prints
  cannot corrupt the protocol."""
  out = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)
  return out


def _jax_worker(args, send) -> None:
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from benchmarks import jax_step  # pylint: disable=import-outside-toplevel

  variant, overrides = (TINY_MODELS if args.tiny else MODELS)[args.model]
  step = jax_step.ClospStep.build(variant, batch_size=args.batch, overrides={**ALL_TRAINED, **overrides})
  n = args.matmul
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  mm = jax.jit(lambda x, y: x @ y)
  mm(a, b).block_until_ready()
  send(
    {
      "ready": True,
      "flops": step.flops,
      "compile_s": step.compile_seconds,
      "params": step.trainable_params,
      "device": str(jax.devices()[0].device_kind),
      "platform": jax.devices()[0].platform,
      "samples_per_step": step.samples_per_step,
    }
  )

  def matmul(calls):
    start = time.perf_counter()
    out = None
    for _ in range(calls):
      out = mm(a, b)
    out.block_until_ready()
    return 2.0 * n**3 * calls / (time.perf_counter() - start) / 1e12

  _serve(send, lambda steps: step.run(steps), matmul, lambda: step.metrics()["loss"])


def _torch_worker(args, send) -> None:
  os.environ["JAX_PLATFORMS"] = "cpu"  # jax (config, schedule) must not take GPU memory here
  import torch  # pylint: disable=import-outside-toplevel

  from benchmarks import jax_step, torch_reference  # pylint: disable=import-outside-toplevel

  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  if cuda:
    torch.backends.cudnn.benchmark = True
  else:
    torch.set_num_threads(os.cpu_count() or 1)
  variant, overrides = (TINY_MODELS if args.tiny else MODELS)[args.model]
  cfg = jax_step.closp_config(variant, {"data.batch_size": args.batch, **ALL_TRAINED, **overrides})
  host = jax_step.synthetic_batch(cfg, args.batch)
  conv = cfg.model.s2_encoder.startswith("resnet")
  step = torch_reference.TorchStep(
    cfg, host, device=device, autocast=torch.bfloat16, channels_last=cuda and conv, lr_table=jax_step.lr_table(cfg)
  )
  n = args.matmul
  a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
  b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
  a @ b
  send(
    {
      "ready": True,
      "params": step.num_params(),
      "device": torch.cuda.get_device_name() if cuda else "cpu",
      "text_impl": type(step.model.text_model).__name__,
    }
  )

  def matmul(calls):
    if cuda:
      torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
      a @ b
    if cuda:
      torch.cuda.synchronize()
    return 2.0 * n**3 * calls / (time.perf_counter() - start) / 1e12

  _serve(send, lambda steps: step.run(steps), matmul, lambda: float(step.last_loss))


def _serve(send, run_steps, matmul, loss) -> None:
  for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "steps":
      start = time.perf_counter()
      run_steps(int(cmd["n"]))
      send({"seconds": time.perf_counter() - start})
    elif cmd["op"] == "matmul":
      send({"tflops": matmul(int(cmd["n"]))})
    elif cmd["op"] == "loss":
      send({"loss": loss()})
    elif cmd["op"] == "quit":
      send({"bye": True})
      return


class Worker:
  """A worker process speaking one JSON line per request and per reply."""

  def __init__(self, kind: str, args):
    cmd = [
      sys.executable,
      str(Path(__file__).resolve()),
      "--worker",
      kind,
      "--model",
      args.model,
      "--batch",
      str(args.batch),
      "--matmul",
      str(args.matmul),
    ] + (["--tiny"] if args.tiny else [])
    self.kind = kind
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=REPO)

  def read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the {self.kind} worker exited ({self.proc.wait()}); its stderr is above")
    return json.loads(line)

  def ask(self, **cmd) -> dict:
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    return self.read()

  def close(self) -> None:
    try:
      self.ask(op="quit")
    except (RuntimeError, BrokenPipeError, ValueError):
      pass
    self.proc.wait(timeout=60)


# ---- the driver ---------------------------------------------------------------------------------


def default_out() -> Path:
  """benchmarks/results/gpu-<date>.json, or $OUT/gpu-<date>.json where OUT is set (the device machine)."""
  name = f"gpu-{time.strftime('%Y-%m-%d')}.json"
  return Path(os.environ["OUT"]) / name if os.environ.get("OUT") else REPO / "benchmarks" / "results" / name


def peak_tflops(device: str, override: float | None) -> float | None:
  if override:
    return override
  for name, tflops in DENSE_BF16_TFLOPS.items():
    if name in device:
      return tflops
  return None


def measure_model(args, rows: dict) -> None:
  say = lambda m: print(m, file=sys.stderr, flush=True)
  say(f"{args.model}: starting the jax and torch workers (batch {args.batch} + {args.batch}) ...")
  workers = {"closp_jax": Worker("jax", args), "reference": Worker("torch", args)}
  try:
    info = {name: w.read() for name, w in workers.items()}  # both build at the same time
    jx, ref = info["closp_jax"], info["reference"]
    say(
      f"  ready: closp-jax compiled in {jx['compile_s']:.0f} s, {jx['flops'] / 1e9:.1f} GFLOP per step on "
      f"{jx['device']}; reference on {ref['device']} ({ref['text_impl']})"
    )
    if jx["params"] != ref["params"]:
      raise RuntimeError(f"{args.model}: closp-jax trains {jx['params']:,} parameters, the reference {ref['params']:,}")
    steps = args.steps
    contenders = {name: (lambda w=w: w.ask(op="steps", n=steps)) for name, w in workers.items()}
    times = common.alternate(contenders, repeats=args.repeats, warmup=args.warmup)
    matmul = {
      name: [w.ask(op="matmul", n=args.matmul_calls)["tflops"] for _ in range(3)] for name, w in workers.items()
    }
    losses = {name: w.ask(op="loss")["loss"] for name, w in workers.items()}
  finally:
    for w in workers.values():
      w.close()
  per_step = jx["samples_per_step"] * steps
  detail = {
    "batch_per_sensor": args.batch,
    "steps_per_round": steps,
    "device": jx["device"],
    "trainable_params": jx["params"],
    "closp_jax_gflop_per_step": round(jx["flops"] / 1e9, 1),
    "compile_s": round(jx["compile_s"], 1),
    "reference_text": ref["text_impl"],
    "closp_jax_loss": losses["closp_jax"],
    "reference_loss": losses["reference"],
  }
  name = f"gpu_train_step_{args.model}"
  row = common.timed_row(times, "closp_jax", "reference", per_step, "samples/s", detail)
  step_s = {k: common.median(v) / steps for k, v in times.items()}
  achieved = {k: jx["flops"] / s / 1e12 for k, s in step_s.items()}
  mm = {k: max(v) for k, v in matmul.items()}
  peak = peak_tflops(jx["device"], args.peak_tflops)
  # MFU: the closp-jax step's achieved FLOP/s (XLA's count) over the chip's dense bf16 peak; on a chip
  # without a known peak (or the CPU of --tiny) over the bf16 matmul measured in this run.
  row["mfu"] = round(achieved["closp_jax"] / (peak or mm["closp_jax"]), 4)
  row["detail"].update(
    {
      "mfu_against": f"dense bf16 spec, {peak} TFLOP/s" if peak else "the measured bf16 matmul",
      "flop_count": "XLA cost_analysis of the closp-jax step (used for both)",
      "closp_jax_tflops": round(achieved["closp_jax"], 2),
      "reference_tflops": round(achieved["reference"], 2),
      "reference_mfu": round(achieved["reference"] / (peak or mm["reference"]), 4),
      "matmul_tflops": {k: round(v, 1) for k, v in mm.items()},
      "mfu_vs_matmul": round(achieved["closp_jax"] / mm["closp_jax"], 4),
    }
  )
  rows[name] = row
  rows.setdefault(
    "matmul_bf16",
    common.make_row(
      mm["closp_jax"],
      mm["reference"],
      "TFLOP/s",
      common.HIGHER,
      {"n": args.matmul, "calls": args.matmul_calls, "best_of": 3},
    ),
  )
  say(f"  {name}: closp-jax {rows[name]['closp_jax']:.1f} vs reference {rows[name]['reference']:.1f} samples/s")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tiny", action="store_true", help="tiny towers and sizes (runs on CPU)")
  parser.add_argument("--models", default="rn50,vit_l")
  parser.add_argument("--batch", type=int, default=None, help="per sensor (default 64; 2 with --tiny)")
  parser.add_argument("--steps", type=int, default=None, help="steps per timed round (default 10; 1 tiny)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--matmul", type=int, default=None, help="matmul size (default 8192; 256 tiny)")
  parser.add_argument("--matmul_calls", type=int, default=None)
  parser.add_argument(
    "--out", default=None, help="JSON file (default: benchmarks/results/gpu-DATE.json, under $OUT when set)"
  )
  parser.add_argument("--peak_tflops", type=float, default=None, help="the chip's dense bf16 peak")
  parser.add_argument("--worker", choices=("jax", "torch"), default=None, help=argparse.SUPPRESS)
  parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.batch = args.batch or (2 if args.tiny else 64)
  args.steps = args.steps or (1 if args.tiny else 10)
  args.matmul = args.matmul or (256 if args.tiny else 8192)
  args.matmul_calls = args.matmul_calls or (2 if args.tiny else 20)
  if args.tiny:
    args.repeats = min(args.repeats, 2)

  if args.worker:
    send_file = _protocol_out()
    send = lambda obj: (send_file.write(json.dumps(obj) + "\n"), send_file.flush())
    (_jax_worker if args.worker == "jax" else _torch_worker)(args, send)
    return 0

  start = time.perf_counter()
  rows: dict = {}
  for model in [m.strip() for m in args.models.split(",") if m.strip()]:
    if model not in MODELS:
      raise SystemExit(f"--models: unknown model {model!r}; known: {', '.join(MODELS)}")
    args.model = model
    measure_model(args, rows)
  out = Path(args.out) if args.out else default_out()
  common.write_json(out, rows)
  print(f"wrote {out}")
  print(f"closp-jax GPU benchmarks{' (tiny)' if args.tiny else ''}, {time.perf_counter() - start:.0f} s")
  print(common.format_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
