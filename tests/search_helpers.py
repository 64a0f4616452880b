"""Shared by the search tests: an exported model with random weights, a folder of patches, an index
of crisis_landmark/tiny, the server in a subprocess, browser availability (CI must have one)."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "tests" / "output"  # screenshots and other artefacts people look at (git-ignored)

# Patches around Europe: (lon, lat), sensor, labels.
PLACES = [
  ((13.40, 52.52), "s2", ["Built"]),
  ((2.35, 48.86), "s2", ["Built", "Water"]),
  ((-3.70, 40.42), "s2", ["Crops"]),
  ((13.38, 52.40), "s1", ["Water"]),
  ((12.50, 41.90), "s1", ["Trees", "Grass"]),
  ((14.00, 52.00), "s1", []),
]


def export_fresh_model(tmp: Path):
  """An exported model (random weights) in tmp/model and its loaded form."""
  pytest.importorskip("flatbuffers", reason="jax.export serialization needs the flatbuffers package")
  import test_export  # pylint: disable=import-outside-toplevel

  from closp_jax import export as export_lib  # pylint: disable=import-outside-toplevel
  from closp_jax.exported import load_exported  # pylint: disable=import-outside-toplevel

  test_export.make_workdir(tmp / "workdir", test_export.fresh_config())
  out = export_lib.export_model(tmp / "workdir", tmp / "model", band_stats=test_export.band_stats())
  return out, load_exported(out)


def patch(sensor, seed):
  rng = np.random.default_rng(seed)
  if sensor == "s2":
    x = rng.uniform(100, 3500, (120, 120, 13)).astype(np.float32)
    x[..., 10] = 0.0
    return x
  return rng.gamma(1.0, 0.1, (120, 120, 2)).astype(np.float32)


def write_patch_folder(root: Path) -> Path:
  """Six .npy patches with sidecars: S2 stored HWC with all metadata, S1 stored CHW; one S1 patch
  has no sidecar (its sensor comes from the band count, its key from the path, no location)."""
  (root / "sub").mkdir(parents=True)
  for i, ((lon, lat), sensor, labels) in enumerate(PLACES):
    x = patch(sensor, i)
    name = root / ("sub" if sensor == "s1" else ".") / f"p{i}.npy"
    np.save(name, x if sensor == "s2" else np.transpose(x, (2, 0, 1)))
    if i != 5:
      name.with_suffix(".json").write_text(
        json.dumps(
          {
            "lon": lon,
            "lat": lat,
            "labels": labels,
            "key": f"patch{i}",
            "timestamp": f"2024-0{i + 1}-01",
            "source": "test",
          }
        )
      )
  return root


def tiny_index(model_dir, model, data_dir, out: Path):
  """The test split of crisis_landmark/tiny (480 patches), indexed with `model`."""
  from closp_jax.search_lib.index import build_index, open_index  # pylint: disable=import-outside-toplevel
  from closp_jax.search_lib.sources import ArchiveSource  # pylint: disable=import-outside-toplevel

  build_index(model_dir, out, ArchiveSource("crisis_landmark/tiny", "test", data_dir), progress=False, model=model)
  return open_index(out)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """`closp-search serve` in a subprocess on 127.0.0.1:<free port>; stops itself after `stop_after` s."""

  def __init__(self, index_dir, cache_dir, *extra, stop_after: float = 600.0, data_dir=None):
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    env = dict(
      os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), JAX_PLATFORMS="cpu"
    )
    if data_dir:
      env["CLOSP_DATA_DIR"] = str(data_dir)
    self.log = Path(cache_dir) / "server.log"
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    cmd = [
      sys.executable,
      "-m",
      "closp_jax.search",
      "serve",
      "--index",
      str(index_dir),
      "--port",
      str(self.port),
      "--cache_dir",
      str(cache_dir),
      f"--stop_after={stop_after}",
      *extra,
    ]
    self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), cwd=REPO)
    deadline = time.time() + 120
    while time.time() < deadline:
      if self.proc.poll() is not None:
        raise AssertionError(f"server exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
      try:
        with urllib.request.urlopen(self.url + "/api/info", timeout=2) as r:
          self.info = json.loads(r.read())
          return
      except OSError:
        time.sleep(0.3)
    self.stop()
    raise AssertionError(f"server did not answer within 120 s: {self.log.read_text()[-3000:]}")

  def get(self, path: str):
    """(status, parsed JSON or bytes, headers) of a GET."""
    req = urllib.request.Request(self.url + path)
    try:
      with urllib.request.urlopen(req, timeout=60) as r:
        body, status, headers = r.read(), r.status, r.headers
    except urllib.error.HTTPError as e:
      body, status, headers = e.read(), e.code, e.headers
    if headers.get("Content-Type", "").startswith("application/json"):
      return status, json.loads(body), headers
    return status, body, headers

  def stop(self):
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=20)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_or_skip():
  """Selenium's Chrome driver on Debian's chromium; skipped outside CI when absent, a failure in CI."""
  missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
  if importlib.util.find_spec("selenium") is None:
    missing.append("the selenium package")
  if missing:
    msg = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
    if os.environ.get("CI") == "true":
      pytest.fail(msg)
    pytest.skip(msg)
  import tempfile  # pylint: disable=import-outside-toplevel

  from selenium import webdriver  # pylint: disable=import-outside-toplevel
  from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel

  opts = webdriver.ChromeOptions()
  opts.binary_location = CHROMIUM
  for a in (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
    f"--user-data-dir={tempfile.mkdtemp(prefix='closp-chromium-')}",
  ):
    opts.add_argument(a)
  return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
