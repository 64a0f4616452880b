"""Location encoders: spherical harmonics vs scipy, SatCLIP's table conventions, SIREN and GeoCLIP
parity with PyTorch references, and the SatCLIP / GeoCLIP importers."""

import importlib
import importlib.util
import math
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from closp_jax.models.location import GeoCLIPLocationEncoder, SatCLIPLocationEncoder, equal_earth, spherical_harmonics

ROOT = Path(__file__).resolve().parents[1]


def scipy_sh(lonlat, degree):
  """Independent reference: real orthonormal harmonics from scipy's lpmv (Condon-Shortley phase
  included), with factorial normalisation, in float64."""
  from scipy.special import lpmv  # pylint: disable=import-outside-toplevel

  phi = np.deg2rad(lonlat[:, 0] + 180.0)
  x = np.cos(np.deg2rad(lonlat[:, 1] + 90.0))
  cols = []
  for l in range(degree):
    for m in range(-l, l + 1):
      am = abs(m)
      k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
      p = lpmv(am, l, x)
      if m == 0:
        cols.append(k * p)
      elif m > 0:
        cols.append(math.sqrt(2) * k * p * np.cos(m * phi))
      else:
        cols.append(math.sqrt(2) * k * p * np.sin(am * phi))
  return np.stack(cols, axis=-1)


def _points(n=48, seed=0):
  rng = np.random.default_rng(seed)
  pts = np.stack([rng.uniform(-180, 180, n), rng.uniform(-90, 90, n)], axis=-1)
  return np.concatenate([pts, [[0.0, 90.0], [0.0, -90.0], [180.0, 0.0], [-180.0, 45.0], [12.5, 89.9]]])


def test_spherical_harmonics_float64_matches_scipy_for_l10_and_l40():
  """In a float64 subprocess (x64 must be set before JAX starts): max abs diff <= 1e-6."""
  code = textwrap.dedent("""
      import numpy as np, jax.numpy as jnp
      from tests.test_location import scipy_sh, _points
      from closp_jax.models.location import spherical_harmonics
      pts = _points()
      for degree in (10, 40):
        out = spherical_harmonics(jnp.asarray(pts), degree)
        assert out.dtype == jnp.float64, out.dtype
        ref = scipy_sh(pts, degree)
        assert out.shape == ref.shape == (len(pts), degree * degree)
        print(degree, float(np.abs(np.asarray(out) - ref).max()), float(np.abs(ref).max()))
  """)
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  rows = [line.split() for line in res.stdout.strip().splitlines()]
  assert [r[0] for r in rows] == ["10", "40"]
  for _, err, scale in rows:
    assert float(err) <= 1e-6
    assert float(scale) > 0.5  # a non-trivial comparison


def test_spherical_harmonics_float32_close_to_scipy():
  pts = _points(seed=1)
  out = np.asarray(spherical_harmonics(jnp.asarray(pts, jnp.float32), 10))
  assert out.dtype == np.float32
  assert np.abs(out - scipy_sh(pts, 10)).max() < 1e-4


def test_spherical_harmonics_orthonormal_on_the_sphere():
  """Gauss-Legendre x uniform-longitude quadrature: the L**2 features are orthonormal."""
  degree = 6
  x, w = np.polynomial.legendre.leggauss(degree + 2)
  lat = np.rad2deg(np.arccos(x)) - 90.0
  lon = np.linspace(-180, 180, 2 * degree + 2, endpoint=False)
  grid = np.array([[lo, la] for la in lat for lo in lon])
  weights = np.array([wi * 2 * np.pi / len(lon) for wi in w for _ in lon])
  y = np.asarray(spherical_harmonics(jnp.asarray(grid, jnp.float32), degree), np.float64)
  gram = (y * weights[:, None]).T @ y
  assert np.abs(gram - np.eye(degree * degree)).max() < 1e-4


def test_satclip_analytic_table_conventions():
  """Values from SatCLIP's generated tables (2023 release and 2024 regeneration), at one point.
  theta = rad(lat + 90), phi = rad(lon + 180)."""
  lon, lat = 33.0, -21.0
  th, ph = math.radians(lat + 90), math.radians(lon + 180)
  c, s = math.cos(th), math.sin(th)
  y23 = np.asarray(spherical_harmonics(jnp.asarray([[lon, lat]]), 4, "analytic_2023"))[0]
  y24 = np.asarray(spherical_harmonics(jnp.asarray([[lon, lat]]), 4, "analytic"))[0]
  ycf = np.asarray(spherical_harmonics(jnp.asarray([[lon, lat]]), 4, "closed_form"))[0]
  idx = lambda l, m: l * l + l + m
  # 2023 table: Yl0_m0 = 0.886226925452758, Yl1_m0 = 1.53499006191973 cos, m != 0 without the phase.
  np.testing.assert_allclose(y23[idx(0, 0)], 0.886226925452758, rtol=1e-6)
  np.testing.assert_allclose(y23[idx(1, 0)], 1.53499006191973 * c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y23[idx(2, 0)], 2.97249547320451 * c**2 - 0.990831824401503, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y23[idx(1, 1)], 0.48860251190292 * s * math.cos(ph), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y23[idx(2, -1)], 1.09254843059208 * s * math.sin(ph) * c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    y23[idx(3, -1)], 0.304697199642977 * s * (7.5 * c**2 - 1.5) * math.sin(ph), rtol=1e-5, atol=1e-6
  )
  # 2024 table: orthonormal m = 0 (Yl0_m0 = 0.282094791773878, Yl2_m0 = 0.946 cos^2 - 0.315).
  np.testing.assert_allclose(y24[idx(0, 0)], 0.282094791773878, rtol=1e-6)
  np.testing.assert_allclose(y24[idx(2, 0)], 0.94617469575756 * c**2 - 0.31539156525252, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y24[idx(1, 1)], y23[idx(1, 1)], rtol=1e-6)
  # Closed form carries the Condon-Shortley phase: odd m flip sign.
  np.testing.assert_allclose(ycf[idx(1, 1)], -y24[idx(1, 1)], rtol=1e-6)
  np.testing.assert_allclose(ycf[idx(2, 2)], y24[idx(2, 2)], rtol=1e-6)


def test_spherical_harmonics_rejects_bad_input():
  with pytest.raises(ValueError, match=r"\[N, 2\]"):
    spherical_harmonics(jnp.zeros((3, 3)), 4)
  with pytest.raises(ValueError, match="degree"):
    spherical_harmonics(jnp.zeros((3, 2)), 0)
  with pytest.raises(ValueError, match="convention"):
    spherical_harmonics(jnp.zeros((3, 2)), 3, "legendre")


def test_location_params_have_logical_axes():
  for module in (SatCLIPLocationEncoder(degree=4, hidden=8, out=6), GeoCLIPLocationEncoder(hidden=8, out=6)):
    v = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 2)))
    leaves = jax.tree_util.tree_flatten_with_path(v["params"], is_leaf=lambda x: hasattr(x, "names"))[0]
    assert leaves and all(hasattr(leaf, "names") for _, leaf in leaves)


# ---- SatCLIP SIREN vs a PyTorch reference ---------------------------------------------------------


def _torch_siren(degree, hidden, layers, out, seed=0):
  """SatCLIP's SirenNet written from its description: sin(w0 (W x + b)), w0 = 30 first, 1 after,
  linear last layer; named nnet.layers.<i>, nnet.last_layer."""
  torch = pytest.importorskip("torch")

  class Siren(torch.nn.Module):
    def __init__(self):
      super().__init__()
      dims = [degree * degree] + [hidden] * layers
      self.layers = torch.nn.ModuleList([torch.nn.Linear(dims[i], dims[i + 1]) for i in range(layers)])
      self.last_layer = torch.nn.Linear(hidden, out)

    def forward(self, x):
      for i, layer in enumerate(self.layers):
        x = torch.sin((30.0 if i == 0 else 1.0) * layer(x))
      return self.last_layer(x)

  class Loc(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.nnet = Siren()

  torch.manual_seed(seed)
  return Loc()


@pytest.mark.torch
def test_satclip_importer_and_parity(tmp_path):
  torch = pytest.importorskip("torch")
  from closp_jax.weights.satclip import load_satclip  # pylint: disable=import-outside-toplevel

  ref = _torch_siren(degree=10, hidden=32, layers=2, out=24)
  sd = {f"model.location.{k}": v.double() for k, v in ref.state_dict().items()}
  sd.update({f"model.nnet.{k[len('nnet.') :]}": v for k, v in ref.state_dict().items()})  # SatCLIP keeps both
  sd["model.visual.conv1.weight"] = torch.zeros(4, 13, 3, 3)
  ckpt = {
    "hyper_parameters": {
      "legendre_polys": 10,
      "capacity": 32,
      "num_hidden_layers": 2,
      "embed_dim": 24,
      "le_type": "sphericalharmonics",
      "pe_type": "siren",
      "harmonics_calculation": "closed-form",
    },
    "state_dict": sd,
    "epoch": 3,
  }
  path = tmp_path / "satclip.ckpt"
  torch.save(ckpt, path)
  module, params = load_satclip(path)
  assert (module.degree, module.hidden, module.layers, module.out, module.sh_convention) == (
    10,
    32,
    2,
    24,
    "closed_form",
  )
  pts = _points(seed=3)
  with torch.no_grad():
    want = ref.nnet(torch.tensor(scipy_sh(pts, 10), dtype=torch.float32)).numpy()
  got = np.asarray(module.apply({"params": params}, jnp.asarray(pts, jnp.float32)))
  assert np.abs(want).max() > 0.1
  assert np.abs(got - want).max() <= 1e-4
  # The default "analytic" calculation maps to SatCLIP's 2023 table.
  ckpt["hyper_parameters"]["harmonics_calculation"] = "analytic"
  torch.save(ckpt, path)
  assert load_satclip(path)[0].sh_convention == "analytic_2023"
  # Hyper-parameters that disagree with the tensors are an error naming both.
  ckpt["hyper_parameters"]["capacity"] = 64
  torch.save(ckpt, path)
  with pytest.raises(ValueError, match="capacity"):
    load_satclip(path)


def test_siren_dropout_only_in_train_mode():
  module = SatCLIPLocationEncoder(degree=3, hidden=16, out=4, dropout=0.5)
  x = jnp.asarray(_points(8), jnp.float32)
  v = module.init(jax.random.key(0), x)
  a = module.apply(v, x)
  np.testing.assert_array_equal(a, module.apply(v, x))
  b = module.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


# ---- GeoCLIP --------------------------------------------------------------------------------------


def _geoclip_torch_module(monkeypatch):
  """The geoclip package's PyTorch LocationEncoder (shipped weights) without importing the package
  __init__ (it needs pandas, which the --no-deps install leaves out): only its `misc` is replaced."""
  pytest.importorskip("torch")
  spec = importlib.util.find_spec("geoclip")
  if spec is None:
    pytest.skip("geoclip is not installed")
  root = Path(list(spec.submodule_search_locations)[0])
  pkg = types.ModuleType("geoclip")
  pkg.__path__ = [str(root)]
  sub = types.ModuleType("geoclip.model")
  sub.__path__ = [str(root / "model")]
  misc = types.ModuleType("geoclip.model.misc")
  misc.file_dir = str(root / "model")
  for name, mod in (("geoclip", pkg), ("geoclip.model", sub), ("geoclip.model.misc", misc)):
    monkeypatch.setitem(sys.modules, name, mod)
  for name in (
    "geoclip.model.location_encoder",
    "geoclip.model.rff",
    "geoclip.model.rff.layers",
    "geoclip.model.rff.functional",
  ):
    monkeypatch.delitem(sys.modules, name, raising=False)
  return importlib.import_module("geoclip.model.location_encoder")


@pytest.mark.torch
def test_geoclip_matches_the_package_module_on_its_shipped_weights(monkeypatch):
  torch = pytest.importorskip("torch")
  le = _geoclip_torch_module(monkeypatch)
  ref = le.LocationEncoder().eval()  # loads geoclip/model/weights/location_encoder_weights.pth
  from closp_jax.weights.geoclip_import import load_geoclip_location  # pylint: disable=import-outside-toplevel

  module, variables = load_geoclip_location()
  assert set(variables) == {"params", "batch_stats"}
  rng = np.random.default_rng(0)
  lat, lon = rng.uniform(-90, 90, 128), rng.uniform(-180, 180, 128)
  with torch.no_grad():
    want = ref(torch.tensor(np.stack([lat, lon], 1), dtype=torch.float32)).numpy()  # GeoCLIP takes (lat, lon)
    want_xy = le.equal_earth_projection(torch.tensor(np.stack([lat, lon], 1), dtype=torch.float32)).numpy()
  got = np.asarray(jax.jit(module.apply)(variables, jnp.asarray(np.stack([lon, lat], 1), jnp.float32)))
  assert got.shape == want.shape == (128, 512)
  assert np.abs(want).max() > 0.01
  assert np.abs(got - want).max() <= 1e-4
  np.testing.assert_allclose(
    np.asarray(equal_earth(jnp.asarray(lat, jnp.float32), jnp.asarray(lon, jnp.float32))), want_xy, atol=1e-6
  )


def test_geoclip_fourier_matrices_are_not_parameters():
  module = GeoCLIPLocationEncoder(hidden=16, depth=2, out=8)
  v = module.init(jax.random.key(0), jnp.zeros((2, 2)))
  assert set(v["batch_stats"]) == {"LocEnc0", "LocEnc1", "LocEnc2"}
  stds = [float(np.std(v["batch_stats"][f"LocEnc{i}"]["b"])) for i in range(3)]
  assert stds[0] < stds[1] < stds[2]  # sigma 1, 16, 256
  assert all("b" not in v["params"][f"LocEnc{i}"] for i in range(3))
