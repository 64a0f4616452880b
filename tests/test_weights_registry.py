"""Pretrained weights by name: the registry table, resolution through the Hugging Face cache (the
real huggingface_hub download path against tests/hub_server.py), the fetch command, and
load_pretrained filling towers from names."""

import copy
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from hub_server import HubServer
from safetensors.numpy import save as save_bytes

from closp_jax.config import load_config
from closp_jax.models.image import image_encoder
from closp_jax.models.location import SatCLIPLocationEncoder
from closp_jax.models.towers import GEOCLIP_LOCATION
from closp_jax.parallel import mesh as mesh_lib
from closp_jax.train import setup
from closp_jax.weights import convert, hub, registry, timm_import
from closp_jax.weights.satclip import siren_rules

REPO = Path(__file__).resolve().parent.parent
NAMES = (
  "ssl4eo-s12/resnet50-s2-moco",
  "ssl4eo-s12/resnet50-s1-moco",
  "ssl4eo-s12/vit-s16-s2-moco",
  "ssl4eo-s12/vit-s16-s1-mae",
  "ssl4eo-s12/vit-l16-s2-mae",
  "ssl4eo-s12/vit-l16-s1-mae",
  "satclip/resnet50-l10",
  "satclip/resnet50-l40",
  "geoclip",
  "closp/closp-rn",
  "closp/closp-vs",
  "closp/closp-vl",
  "closp/geoclosp-rn",
)
COMMIT = "c0ffee" + "0" * 34


def _files_under(folder: Path) -> list[str]:
  return sorted(str(Path(root, f).relative_to(folder)) for root, _, files in os.walk(folder) for f in files)


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
  """An empty Hugging Face home in tmp_path, online; returns the hub cache folder."""
  for var in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
  return tmp_path / "hf" / "hub"


@pytest.fixture
def served(hf_env, monkeypatch):
  with HubServer() as server:
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server


def _entry(name, sha, *, kind="timm_resnet", repo="test/weights", filename="w.safetensors", **fields):
  defaults = {
    "timm_resnet": dict(slots=("s1",), architecture="resnet_tiny", in_chans=2),
    "timm_vit": dict(slots=("s2",), architecture="vit_tiny", in_chans=13),
    "satclip": dict(slots=("location",), location=(("kind", "satclip"), ("degree", 10))),
  }[kind]
  return registry.WeightsEntry(
    name=name,
    kind=kind,
    description=f"test {kind}",
    licence="test",
    evidence="test",
    repo=repo,
    revision=COMMIT,
    filename=filename,
    sha256=sha,
    **{**defaults, **fields},
  )


# ---- the table ----------------------------------------------------------------------------------


def test_registry_entries_are_consistent_and_complete():
  assert set(NAMES) <= set(registry.REGISTRY)
  assert len(registry.ENTRIES) == len(registry.REGISTRY), "duplicate names"
  for e in registry.ENTRIES:
    assert registry.check_entry(e) == [], e.name
    assert e.kind in registry.KINDS and e.licence and e.evidence and e.description
    gaps = " ".join(registry.gaps(e))
    assert (e.sha256 is None) == ("sha256" in gaps), e.name
    assert (e.repo is not None and e.revision is None) == ("revision" in gaps), e.name
    # a torch-hub style file name (name-<8 hex>.pth) carries the digest's first 8 hex digits
    m = re.search(r"-([0-9a-f]{8})\.pth$", e.filename or "")
    if m:
      assert (e.sha256 or e.sha256_prefix).startswith(m.group(1)), e.name
  assert dict(registry.REGISTRY["geoclip"].location) == GEOCLIP_LOCATION
  assert (
    registry.check_entry(
      registry.WeightsEntry(
        name="x",
        kind="satclip",
        description="",
        licence="",
        slots=("s2",),
        evidence="",
        repo="a/b",
        revision="main",
        sha256="ABC",
      )
    )
    != []
  )  # the checker does find problems


def test_every_weights_name_the_configs_use_exists():
  from closp_jax.config import load_config, packaged_recipes  # pylint: disable=import-outside-toplevel
  from closp_jax.configs.common import VARIANTS  # pylint: disable=import-outside-toplevel

  used = {}
  for recipe in packaged_recipes():
    for variant in VARIANTS:
      init = load_config(f"{recipe}:{variant}").init
      for slot in ("s2", "s1", "location"):
        value = init.get(slot, "")
        if value and not Path(value).suffix:
          used[f"{recipe}:{variant} init.{slot}"] = value
  unknown = {k: v for k, v in used.items() if v not in registry.REGISTRY}
  assert not unknown


def test_docs_list_every_name_with_its_revision_and_digest():
  doc = (REPO / "docs" / "weights.md").read_text()
  for e in registry.ENTRIES:
    assert f"`{e.name}`" in doc, e.name
    for fact in (e.revision, e.sha256, e.sha256_prefix, e.filename):
      if fact:
        assert fact in doc, (e.name, fact)


# ---- resolution through the cache --------------------------------------------------------------


def test_download_into_an_empty_cache_then_offline_from_the_cache(served, hf_env, monkeypatch):
  data = os.urandom(4096)
  sha = served.add("test/weights", "w.safetensors", data, commit=COMMIT)
  table = {"t/w": _entry("t/w", sha)}
  path = hub.resolve("t/w", table=table)
  assert path.read_bytes() == data
  assert hf_env in path.parents and path.parent.name == COMMIT
  assert served.count("GET", "/lfs/") == 1
  assert hub.resolve("t/w", table=table) == path  # present: no second download
  assert served.count("GET", "/lfs/") == 1 and served.count("HEAD", "/resolve/") == 1
  served.stop()
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  assert hub.resolve("t/w", table=table).read_bytes() == data


@pytest.mark.parametrize(
  "name, tamper",
  [
    ("ssl4eo-s12/resnet50-s2-moco", "content"),  # full digest in the table
    ("ssl4eo-s12/vit-s16-s2-moco", "content"),  # only the file name's prefix is known
    ("ssl4eo-s12/vit-s16-s1-mae", "cdn"),  # no digest: the hub's LFS sha256, which the CDN betrays
  ],
)
def test_a_download_with_another_sha256_is_refused_and_leaves_nothing_in_the_cache(served, hf_env, name, tamper):
  entry = registry.REGISTRY[name]
  genuine = b"published bytes " * 64
  other = bytes([genuine[0] ^ 1]) + genuine[1:]  # same length: only the digest can tell
  if tamper == "content":
    served.add(entry.repo, entry.filename, other, commit=entry.revision)
  else:
    served.add(entry.repo, entry.filename, genuine, commit=entry.revision, serve=other)
  with pytest.raises(hub.WeightsChecksumError) as err:
    hub.resolve(name)
  message = str(err.value)
  assert "\n" not in message and entry.filename in message
  assert hashlib.sha256(other).hexdigest() in message
  assert (entry.sha256 or entry.sha256_prefix or hashlib.sha256(genuine).hexdigest()) in message
  assert served.count("GET", "/lfs/") == 1  # it was downloaded, then refused
  assert not hf_env.exists() or _files_under(hf_env) == []


def test_offline_and_absent_names_the_file_its_source_and_the_fetch_command(hf_env, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  entry = registry.REGISTRY["satclip/resnet50-l10"]
  with pytest.raises(hub.WeightsUnavailableError) as err:
    hub.resolve(entry.name)
  message = str(err.value)
  for fact in (entry.filename, entry.repo, entry.revision, "python -m closp_jax.weights fetch satclip/resnet50-l10"):
    assert fact in message
  assert isinstance(err.value, FileNotFoundError)  # the trainer prints it as a user fault
  assert not hf_env.exists() or _files_under(hf_env) == []


def test_an_unreachable_hub_is_a_one_line_weights_error(hf_env, monkeypatch):
  """Online but nothing answers (a closed port): a WeightsError naming the endpoint, not the HTTP
  client's traceback, and nothing in the cache."""
  import socket  # pylint: disable=import-outside-toplevel

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
  # closp/closp-rn is listed on the hub first (no pinned file); huggingface_hub's client raises its own
  # transport error there, not an OSError. (A pinned file is fetched with huggingface_hub's retries,
  # about 25 s against a closed port, and ends in the same error.)
  with pytest.raises(registry.WeightsError) as err:
    hub.resolve("closp/closp-rn")
  assert f"127.0.0.1:{port}" in str(err.value) and "failed" in str(err.value)
  assert not hf_env.exists() or _files_under(hf_env) == []


def test_unknown_name_lists_the_known_names(hf_env, tmp_path):
  with pytest.raises(registry.UnknownWeightsError) as err:
    hub.resolve("ssl4eo-s12/resnet51-s2-moco")
  message = str(err.value)
  assert "ssl4eo-s12/resnet50-s2-moco" in message and "local path must point to an existing file" in message
  local = tmp_path / "mine.safetensors"
  local.write_bytes(b"x")
  assert hub.resolve(str(local)) == local  # an existing file is taken as it is


def test_geoclip_resolves_to_the_installed_package_file_with_its_digest(hf_env):
  if importlib.util.find_spec("geoclip") is None:
    pytest.skip("geoclip is not installed")
  path = hub.resolve("geoclip")
  assert path.name == "location_encoder_weights.pth"
  assert hashlib.sha256(path.read_bytes()).hexdigest() == registry.REGISTRY["geoclip"].sha256


# ---- the fetch command --------------------------------------------------------------------------


def _cli(*args, env):
  return subprocess.run(
    [sys.executable, "-m", "closp_jax.weights", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )


def test_fetch_to_a_folder_in_a_subprocess_then_offline(served, hf_env, tmp_path):
  # The authors' releases pin neither revision nor file name: fetch must say what it followed.
  data = save_bytes({"s2_encoder.conv1.weight": np.ones((4, 13, 3, 3), np.float32)})
  served.add("DarthReca/CLOSP-RN", "model.safetensors", data, commit=COMMIT)
  served.add("DarthReca/CLOSP-RN", "config.json", b"{}", commit=COMMIT, lfs=False)
  env = dict(os.environ)
  out = _cli("fetch", "closp/closp-rn", "--to", str(tmp_path / "copy"), env=env)
  assert out.returncode == 0, out.stderr
  assert "not pinned" in out.stdout and COMMIT in out.stdout and "model.safetensors" in out.stdout
  assert (tmp_path / "copy" / "model.safetensors").read_bytes() == data
  served.stop()
  env["HF_HUB_OFFLINE"] = "1"
  again = _cli("fetch", "closp/closp-rn", env=env)
  assert again.returncode == 0, again.stderr
  assert "already here" in again.stdout and "not pinned" in again.stdout
  listing = _cli("list", env=env)
  assert re.search(r"closp/closp-rn\s+\[cached\]", listing.stdout)
  assert re.search(r"satclip/resnet50-l10\s+\[not cached\]", listing.stdout)
  missing = _cli("fetch", "satclip/resnet50-l10", env=env)
  assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "error: " in missing.stderr
  assert "python -m closp_jax.weights fetch satclip/resnet50-l10" in missing.stderr
  unknown = _cli("fetch", "no/such", env=env)
  assert unknown.returncode == 1 and "closp/closp-rn" in unknown.stderr


# ---- load_pretrained ----------------------------------------------------------------------------


def _geo_cfg(**init):
  cfg = load_config("geoclosp:sample")
  cfg.unlock()
  cfg.init.text = ""
  cfg.model.s2_encoder = "vit_tiny"
  cfg.model.location.sh_convention = "analytic_2023"
  for k, v in init.items():
    cfg.init[k] = v
  return cfg


@pytest.fixture(scope="module")
def geo_model():
  return _zero_model(_geo_cfg())


def _zero_model(cfg):
  """Zero variables of the model `cfg` describes, and their shardings (shapes only: no init to compile)."""
  mesh = mesh_lib.make_mesh(cfg.mesh)
  model = setup.CLOSP(cfg.model)
  abstract = jax.eval_shape(lambda r: model.init(r, *setup.dummy_inputs(cfg), train=False), jax.random.key(0))
  rules = mesh_lib.logical_rules(cfg.mesh.rules)
  shardings = {c: mesh_lib.param_shardings(t, mesh, rules) for c, t in abstract.items()}
  return _random_like(nn.unbox(abstract), 0, scale=0.0), shardings


def _random_like(tree, seed: int, scale: float = 1.0):
  """numpy arrays of the tree's shapes (standard normal times `scale`)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), tree)


def _variables(module, *inputs):
  return _random_like(jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *inputs))), 1)


def _tiny_weights():
  """timm-named S2 ViT (with an MAE decoder), S1 ResNet and SatCLIP files, and the variables behind them."""
  vit_vars = _variables(image_encoder("vit_tiny", 13), np.zeros((1, 120, 120, 13), np.float32))
  vit_sd = timm_import.export_timm_vit(vit_vars["params"])
  vit_sd.update({"decoder_embed.weight": np.ones((8, 96), np.float32), "mask_token": np.zeros((1, 1, 8), np.float32)})
  rn_vars = _variables(image_encoder("resnet_tiny", 2), np.zeros((1, 32, 32, 2), np.float32))
  rn_sd = timm_import.export_timm_resnet(rn_vars["params"], rn_vars["batch_stats"])
  loc_params = _variables(
    SatCLIPLocationEncoder(degree=10, hidden=256, layers=2, out=256), np.zeros((1, 2), np.float32)
  )["params"]
  loc_sd = convert.export_state_dict({"params": loc_params}, siren_rules(2, prefix="model.location.nnet."))
  files = {"vit": save_bytes(vit_sd), "rn": save_bytes(rn_sd), "loc": save_bytes(loc_sd)}
  return files, {"vit": vit_vars["params"], "rn": rn_vars, "loc": loc_params, "rn_sd": rn_sd}


def _assert_same(got, want):
  got_flat, want_flat = convert.flatten_tree(got), convert.flatten_tree(want)
  assert set(got_flat) == set(want_flat)
  for k in want_flat:
    np.testing.assert_array_equal(np.asarray(got_flat[k]), np.asarray(want_flat[k]), err_msg=str(k))


def test_load_pretrained_fills_every_slot_from_served_names(served, geo_model):
  files, want = _tiny_weights()
  table = {}
  for name, kind, key in (("t/vit", "timm_vit", "vit"), ("t/rn", "timm_resnet", "rn"), ("t/loc", "satclip", "loc")):
    sha = served.add(f"test/{key}", f"{key}.safetensors", files[key], commit=COMMIT)
    table[name] = _entry(name, sha, kind=kind, repo=f"test/{key}", filename=f"{key}.safetensors")
  variables, shardings = geo_model
  cfg = _geo_cfg(s2="t/vit", s1="t/rn", location="t/loc")
  out, notes = setup.load_pretrained(copy.copy(variables), cfg, shardings, weights_table=table)
  out = jax.device_get(out)
  _assert_same(out["params"]["s2_encoder"], want["vit"])
  _assert_same(out["params"]["s1_encoder"], want["rn"]["params"])
  _assert_same(out["batch_stats"]["s1_encoder"], want["rn"]["batch_stats"])
  _assert_same(out["params"]["location_encoder"], want["loc"])
  # and straight against the file's tensors: PyTorch (out, in, kh, kw) is Flax (kh, kw, in, out)
  np.testing.assert_array_equal(
    out["params"]["s1_encoder"]["conv1"]["kernel"], np.transpose(want["rn_sd"]["conv1.weight"], (2, 3, 1, 0))
  )
  assert len(notes) == 3 and all("t/" in n for n in notes)
  assert served.count("GET", "/lfs/") == 3


def test_a_tower_inside_a_whole_checkpoint_and_its_classifier_are_loaded_from_a_local_file(tmp_path, hf_env):
  files, want = _tiny_weights()
  rn_sd = dict(want["rn_sd"], **{"fc.weight": np.full((10, 128), 0.5, np.float32), "fc.bias": np.ones(10, np.float32)})
  whole = {f"model.s1_encoder.{k}": v for k, v in rn_sd.items()}
  whole["model.text_model.embeddings.word_embeddings.weight"] = np.zeros((4, 8), np.float32)  # not this tower's
  path = tmp_path / "closp_like.safetensors"
  path.write_bytes(save_bytes(whole))
  cfg = _geo_cfg(s1=str(path))
  cfg.model.s1_head_classes = 10
  variables, shardings = _zero_model(cfg)
  out, notes = setup.load_pretrained(variables, cfg, shardings)
  s1 = jax.device_get(out["params"]["s1_encoder"])
  np.testing.assert_array_equal(s1["fc"]["kernel"], rn_sd["fc.weight"].T)
  _assert_same({k: v for k, v in s1.items() if k != "fc"}, want["rn"]["params"])
  assert notes == [f"s1_encoder <- {path}"]  # nothing kept at its initial value
  path.write_bytes(files["rn"])  # a file without the classifier: it stays initialised, and the notes say so
  _, notes = setup.load_pretrained(variables, cfg, shardings)
  assert "kept initialised: ['fc']" in notes[0]


def test_an_mae_checkpoint_under_a_model_key_loads_its_encoder_only(tmp_path, hf_env):
  torch = pytest.importorskip("torch")
  _, want = _tiny_weights()
  sd = timm_import.export_timm_vit(want["vit"])
  sd.update({"decoder_pred.weight": np.ones((4, 8), np.float32), "mask_token": np.zeros((1, 1, 8), np.float32)})
  path = tmp_path / "B13_vittiny_mae_ep99.pth"
  torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, "epoch": 99}, path)
  cfg = _geo_cfg(s2=str(path))
  variables, shardings = _zero_model(cfg)
  out, _ = setup.load_pretrained(variables, cfg, shardings)
  _assert_same(jax.device_get(out["params"]["s2_encoder"]), want["vit"])


def test_geoclip_by_name_fills_the_location_encoder_and_its_fourier_matrices(hf_env):
  if importlib.util.find_spec("geoclip") is None:
    pytest.skip("geoclip is not installed")
  pytest.importorskip("torch")  # the package ships a .pth file
  from closp_jax.weights.geoclip_import import load_geoclip_location  # pylint: disable=import-outside-toplevel

  cfg = _geo_cfg(location="geoclip")
  for k, v in GEOCLIP_LOCATION.items():
    cfg.model.location[k] = v
  variables, shardings = _zero_model(cfg)
  out, notes = setup.load_pretrained(variables, cfg, shardings)
  _, want = load_geoclip_location(hub.resolve("geoclip"))
  _assert_same(jax.device_get(out["params"]["location_encoder"]), want["params"])
  _assert_same(jax.device_get(out["batch_stats"]["location_encoder"]), want["batch_stats"])
  assert notes[0].startswith("location_encoder <- geoclip (") and "location_encoder_weights.pth" in notes[0]


def test_location_weights_that_need_another_config_say_which_flag_to_set(served, geo_model):
  files, _ = _tiny_weights()
  sha = served.add("test/loc", "loc.safetensors", files["loc"], commit=COMMIT)
  table = {"t/loc": _entry("t/loc", sha, kind="satclip", repo="test/loc", filename="loc.safetensors")}
  cfg = _geo_cfg(location="t/loc")
  cfg.model.location.sh_convention = "closed_form"  # a SatCLIP file without hyper-parameters needs analytic_2023
  with pytest.raises(setup.RunConfigError, match=r"--config\.model\.location\.sh_convention=analytic_2023"):
    setup.load_pretrained(dict(geo_model[0]), cfg, geo_model[1], weights_table=table)


@pytest.mark.parametrize(
  "init, error, pattern",
  [
    ({"s2": "satclip/resnet50-l10"}, registry.WeightsKindError, r"init\.s2.*satclip.*init\.location"),
    ({"s2": "ssl4eo-s12/resnet50-s1-moco"}, registry.WeightsKindError, r"init\.s1"),
    ({"s2": "ssl4eo-s12/vit-s16-s2-moco"}, setup.RunConfigError, r"--config\.model\.s2_encoder=vit_s16"),
    ({"location": "satclip/resnet50-l40"}, setup.RunConfigError, r"--config\.model\.location\.degree=40"),
    ({"location": "geoclip"}, setup.RunConfigError, r"location\.kind=geoclip.*location\.hidden=1024"),
  ],
)
def test_names_that_do_not_fit_the_slot_or_the_model_are_refused_before_any_download(
  hf_env, monkeypatch, init, error, pattern
):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may need the file
  no_model = {"params": {"s2_encoder": {}, "s1_encoder": {}, "location_encoder": {}}, "batch_stats": {}}
  with pytest.raises(error, match=pattern):
    setup.load_pretrained(no_model, _geo_cfg(**init), {})  # the model's S2 tower is vit_tiny
  assert not hf_env.exists() or _files_under(hf_env) == []
