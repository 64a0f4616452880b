"""Sharding: mesh from the config, FSDP rules, per-process rows, and training that does not depend on the layout.

The training comparisons run tests/sharded_train_driver.py in fresh interpreters (the fake CPU
device count is fixed when JAX starts): 5 steps on 1 device, then on 8 devices data-parallel,
FSDP over 8, and data 4 x fsdp 2; losses and every parameter must agree within 1e-4.

Adam's epsilon is 1e-6 in these runs, not 1e-8: a zero-initialised residual branch leaves a
few weights with gradients at rounding level for the first steps, and with eps=1e-8 Adam turns
those rounding differences (a different summation order on 8 devices) into full learning-rate
steps of either sign. With eps=1e-6 every real gradient is still normalised the Adam way.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from closp_jax.parallel import mesh as mesh_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(REPO, "tests", "sharded_train_driver.py")


def _env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def run_driver(devices: int, out, *args, timeout=900) -> dict:
  proc = subprocess.run(
    [sys.executable, DRIVER, "--out", str(out), *args],
    env=_env(devices),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if proc.returncode:
    raise AssertionError(f"driver failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  return dict(np.load(out))


def assert_same_run(a: dict, b: dict, atol: float) -> None:
  np.testing.assert_allclose(a["losses"], b["losses"], rtol=0, atol=atol, err_msg="losses")
  keys = sorted(k for k in a if k.startswith(("params", "batch_stats")))
  assert keys == sorted(k for k in b if k.startswith(("params", "batch_stats")))
  assert len(keys) > 50
  for k in keys:
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol, err_msg=k)


# --------------------------------------------------------------------------- config -> mesh


def test_mesh_shape_takes_the_rest_and_names_the_fix():
  cfg = {"data": -1, "fsdp": 2, "tensor": 1}
  assert mesh_lib.mesh_shape(cfg, 8) == (4, 2, 1)
  assert mesh_lib.mesh_shape({"data": 1, "fsdp": -1, "tensor": 1}, 256) == (1, 256, 1)
  with pytest.raises(mesh_lib.MeshConfigError, match="at most one axis may be -1"):
    mesh_lib.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
  with pytest.raises(mesh_lib.MeshConfigError, match="not divisible by 3"):
    mesh_lib.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
  with pytest.raises(mesh_lib.MeshConfigError, match="needs 4 devices but this run has 8"):
    mesh_lib.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)


_EIGHT_DEVICE_CHECKS = r"""
import json, math
import jax, numpy as np
from closp_jax.config import load_config
from closp_jax.models.towers import CLOSP
from closp_jax.parallel import mesh as mesh_lib
from closp_jax.train import setup

out = {}
def shardings(variant, mesh_cfg, rules):
  cfg = load_config(f"geoclosp:{variant}")
  mesh = mesh_lib.make_mesh(mesh_cfg)
  model = CLOSP(cfg.model)
  abstract = jax.eval_shape(lambda r: model.init(r, *setup.dummy_inputs(cfg), train=False), jax.random.key(0))
  sh = mesh_lib.param_shardings(abstract["params"], mesh, mesh_lib.logical_rules(rules))
  plain = __import__("flax").linen.unbox(abstract["params"])
  return plain, sh

fsdp8 = {"data": 1, "fsdp": 8, "tensor": 1}
plain, sh = shardings("vit_s", fsdp8, "fsdp")
flat = {jax.tree_util.keystr(p): (tuple(l.shape), s.spec) for (p, l), s in
        zip(jax.tree_util.tree_flatten_with_path(plain)[0], jax.tree.leaves(sh))}
out["vit_pos"] = [str(v[1]) for k, v in flat.items() if "pos_embed" in k]
out["vit_pos_shape"] = [v[0] for k, v in flat.items() if "pos_embed" in k]
out["word_embeddings"] = [str(v[1]) for k, v in flat.items() if "word_embeddings" in k]
total, per = mesh_lib.bytes_per_device(plain, sh)
out["vit_fsdp8"] = [total, per]
plain, sh = shardings("vit_s", {"data": -1, "fsdp": 1, "tensor": 1}, "dp")
out["vit_dp"] = list(mesh_lib.bytes_per_device(plain, sh))
# Every sharded dimension is divisible by the mesh axes it is split over.
bad = []
plain, sh = shardings("paper", {"data": 2, "fsdp": 4, "tensor": 1}, "fsdp")
mesh = next(iter(jax.tree.leaves(sh))).mesh
for leaf, s in zip(jax.tree.leaves(plain), jax.tree.leaves(sh)):
  for dim, axes in zip(leaf.shape, tuple(s.spec)):
    if axes is not None:
      names = (axes,) if isinstance(axes, str) else axes
      if dim % math.prod(mesh.shape[a] for a in names):
        bad.append((leaf.shape, str(s.spec)))
out["indivisible"] = bad
out["resnet50_fsdp"] = list(mesh_lib.bytes_per_device(plain, sh))

mesh = mesh_lib.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
out["rows"] = mesh_lib.process_rows(mesh, 32).tolist()
out["slice"] = str(mesh_lib.process_slice(mesh, 32))
g = mesh_lib.global_batch({"x": np.arange(32.0).reshape(16, 2)}, mesh)["x"]
out["global_shape"] = list(g.shape)
out["per_device_rows"] = sorted({s.data.shape[0] for s in g.addressable_shards})
try:
  mesh_lib.make_mesh({"data": 2, "fsdp": 4, "tensor": 1, "slices": 2})
  out["slices_error"] = ""
except mesh_lib.MeshConfigError as e:
  out["slices_error"] = str(e)
try:
  mesh_lib.make_mesh({"data": 1, "fsdp": 8, "tensor": 1, "slices": 2})
  out["slices_data_error"] = ""
except mesh_lib.MeshConfigError as e:
  out["slices_data_error"] = str(e)
# A hand count on 8 devices: 'a' [8, 4] float32 split over 'data' puts one row on each device; 'b'
# [3] int8 is replicated.
from jax.sharding import NamedSharding, PartitionSpec as P
mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
tree = {"a": jax.ShapeDtypeStruct((8, 4), np.float32), "b": jax.ShapeDtypeStruct((3,), np.int8)}
out["bytes"] = list(mesh_lib.bytes_per_device(tree, {"a": NamedSharding(mesh, P("data", None)),
                                                     "b": NamedSharding(mesh, P())}))
# A global batch that the 8 data shards cannot split is refused, naming the key and a fix.
cfg = load_config("closp:sample")
cfg.unlock()
cfg.data.batch_size, cfg.data.eval_batch_size = 12, 64
try:
  setup.check_batch(cfg, mesh)
  out["batch_error"] = ""
except setup.RunConfigError as e:
  out["batch_error"] = str(e)
cfg.data.batch_size = 16
setup.check_batch(cfg, mesh)  # divisible: accepted
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def eight_device_checks():
  proc = subprocess.run(
    [sys.executable, "-c", _EIGHT_DEVICE_CHECKS], env=_env(8), cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.split("RESULT", 1)[1])


def test_fsdp_rules_shard_large_tensors_and_keep_the_position_table_whole(eight_device_checks):
  r = eight_device_checks
  # ViT-S/16 at 224: 197 positions in each image tower. 'pos' is not mapped to a mesh axis, so
  # the 197 positions stay whole on every device; the 384 features are split over 'fsdp'.
  assert r["vit_pos_shape"] == [[1, 197, 384]] * 2
  assert r["vit_pos"] == ["P(None, None, 'fsdp')"] * 2
  # MiniLM's word embeddings (30522 x 384): 30522 is not divisible by 8, so only 'embed' is split.
  assert r["word_embeddings"] == ["P(None, 'fsdp')"]
  assert r["indivisible"] == []
  total, per = r["vit_fsdp8"]
  assert r["vit_dp"] == [total, total]  # data parallel: every device holds everything
  assert per < total / 6  # FSDP over 8: close to 1/8 (small tensors stay whole)
  total, per = r["resnet50_fsdp"]
  assert per < total / 3  # ResNet-50 towers over fsdp=4


def test_process_rows_and_global_batch_on_one_process(eight_device_checks):
  r = eight_device_checks
  assert r["rows"] == list(range(32))
  assert r["slice"] == "slice(0, 32, None)"
  assert r["global_shape"] == [16, 2] and r["per_device_rows"] == [2]


def test_slices_need_slices_or_processes_to_split(eight_device_checks):
  assert "slices=2" in eight_device_checks["slices_error"]
  assert "1 process" in eight_device_checks["slices_error"]
  assert "must be a multiple of config.mesh.slices=2" in eight_device_checks["slices_data_error"]


def test_bytes_per_device_against_a_hand_count(eight_device_checks):
  # total: 8*4 float32 + 3 int8 = 131 bytes; per device: one row of 4 float32 + the replicated 3 bytes
  assert eight_device_checks["bytes"] == [8 * 4 * 4 + 3, 1 * 4 * 4 + 3]


def test_batch_not_divisible_by_the_data_axes_is_refused(eight_device_checks):
  message = eight_device_checks["batch_error"]
  assert "config.data.batch_size=12 must be a positive multiple of the data-parallel size 8" in message
  assert "--config.data.batch_size=" in message


# --------------------------------------------------------------------------- training, 1 vs 8 devices

TRAIN = ["--steps", "5", "--batch_size", "16", "--train_text", "--adam_eps", "1e-6"]


@pytest.fixture(scope="module")
def one_device_run(tiny_data_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("one") / "run.npz"
  return run_driver(1, out, "--data_dir", tiny_data_dir, "--mesh", "1,1,1", *TRAIN)


@pytest.mark.slow
@pytest.mark.parametrize(
  "mesh,rules", [("8,1,1", "dp"), ("1,8,1", "fsdp"), ("4,2,1", "fsdp")], ids=["data8", "fsdp8", "data4xfsdp2"]
)
def test_five_steps_on_eight_devices_match_one_device(one_device_run, tiny_data_dir, tmp_path, mesh, rules):
  run = run_driver(8, tmp_path / "run.npz", "--data_dir", tiny_data_dir, "--mesh", mesh, "--rules", rules, *TRAIN)
  assert list(run["mesh"]) == [int(v) for v in mesh.split(",")]
  assert run["losses"].shape == (5, 5)  # total + 4 terms, 5 steps
  assert run["losses"][-1, 0] < run["losses"][0, 0]  # it trains
  assert_same_run(run, one_device_run, atol=1e-4)
  if rules == "fsdp":
    assert int(run["sharded_params"]) > 20
    assert int(run["param_bytes_per_device"]) < 0.6 * int(run["param_bytes"])
  else:
    assert int(run["sharded_params"]) == 0
    assert int(run["param_bytes_per_device"]) == int(run["param_bytes"])


class _FakeDevice:
  """Stands in for a jax.Device in the pure slice-grouping logic."""

  def __init__(self, id_, process_index, slice_index=None):
    self.id, self.process_index = id_, process_index
    if slice_index is not None:
      self.slice_index = slice_index

  def __repr__(self):
    return f"d{self.id}"


def test_slices_of_process_groups():
  # 4 hosts x 2 devices, listed out of order; 2 slices = hosts {0, 1} and {2, 3}.
  devices = [_FakeDevice(i, i // 2) for i in (5, 1, 0, 7, 3, 2, 6, 4)]
  grid = mesh_lib._slice_grid(devices, (2, 2, 1), 2)  # pylint: disable=protected-access
  assert grid.shape == (4, 2, 1)
  assert [[d.id for d in row.flat] for row in grid] == [[0, 1], [2, 3], [4, 5], [6, 7]]
  assert {d.process_index for d in grid[:2].flat} == {0, 1} and {d.process_index for d in grid[2:].flat} == {2, 3}
  with pytest.raises(mesh_lib.MeshConfigError, match="4 process"):
    mesh_lib._slice_grid(devices, (4, 2, 1), 3)  # pylint: disable=protected-access


def test_tpu_slice_count_must_match():
  devices = [_FakeDevice(i, i // 4, slice_index=i // 8) for i in range(32)]  # 4 TPU slices of 8
  with pytest.raises(mesh_lib.MeshConfigError, match="span 4 TPU slices; set --config.mesh.slices=4"):
    mesh_lib._slice_grid(devices, (8, 2, 1), 2)  # pylint: disable=protected-access
  assert mesh_lib.num_slices({"slices": -1}, devices) == 4
  assert mesh_lib.num_slices({}, devices) == 1
  with pytest.raises(mesh_lib.MeshConfigError, match="expected a positive count or -1"):
    mesh_lib.num_slices({"slices": 0}, devices)
