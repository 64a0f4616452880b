"""docs/configs.md lists every key of the schema (closp_jax.config.defaults()) and no key it lacks."""

import re
from pathlib import Path

from conftest import REPO

from closp_jax.config import defaults, load_config

DOC = Path(REPO) / "docs" / "configs.md"


def _schema_keys(node, prefix="") -> set[str]:
  keys = set()
  for k, v in node.items():
    if hasattr(v, "items"):
      keys |= _schema_keys(v, f"{prefix}{k}.")
    else:
      keys.add(prefix + k)
  return keys


def _documented() -> list[str]:
  """The keys of the 'Every key' table: `a.b`, `a.{x,y}`, `a.<group>` and `model.*` expanded."""
  text = DOC.read_text()
  table = text[text.index("## Every key") :]
  out = []
  for line in table.splitlines():
    if not line.startswith("| `"):
      continue
    first = line.split("|")[1]
    for key in re.findall(r"`([^`]+)`", first):
      braces = re.match(r"^(.*)\{([^}]*)\}(.*)$", key)
      if braces:
        out += [braces.group(1) + part.strip() + braces.group(3) for part in braces.group(2).split(",")]
      else:
        out.append(key)
  return out


def _covered(key: str, documented: list[str]) -> bool:
  for doc in documented:
    if doc == key:
      return True
    if doc.endswith(".*") and key.startswith(doc[:-1]):
      return True
    if doc.endswith(".<group>") and key.startswith(doc[: -len("<group>")]):
      return True
  return False


def test_every_schema_key_is_documented():
  documented = _documented()
  missing = sorted(k for k in _schema_keys(defaults()) if not _covered(k, documented))
  assert not missing, f"docs/configs.md does not list: {missing}"


def test_every_documented_key_exists():
  schema = _schema_keys(defaults())
  stale = [
    d
    for d in _documented()
    if not (
      d in schema
      or (d.endswith(".*") and any(k.startswith(d[:-1]) for k in schema))
      or (d.endswith(".<group>") and any(k.startswith(d[: -len("<group>")]) for k in schema))
    )
  ]
  assert not stale, f"docs/configs.md lists keys the schema does not have: {stale}"


def test_the_recipes_set_only_schema_keys():
  """A recipe cannot add a key (configs are locked); every packaged variant has exactly the schema's keys."""
  from closp_jax.config import packaged_recipes  # pylint: disable=import-outside-toplevel
  from closp_jax.configs.common import VARIANTS  # pylint: disable=import-outside-toplevel

  schema = _schema_keys(defaults())
  for recipe in packaged_recipes():
    for variant in VARIANTS:
      assert _schema_keys(load_config(f"{recipe}:{variant}")) == schema, f"{recipe}:{variant}"
