"""docs/fidelity.md stays true: every `key = value` its tables give for ours is the :paper config's value."""

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

from closp_jax.config import load_config

DOC = Path(REPO) / "docs" / "fidelity.md"
PAIR = re.compile(r"`([a-z0-9_.]+) = ([^`]+)`")


def _claims():
  claims = []
  text = DOC.read_text()
  for line in text[text.index("## Training") :].splitlines():
    if not line.startswith("|"):
      continue
    cells = [c.strip() for c in line.strip("|").split("|")]
    if len(cells) < 3:
      continue
    claims += PAIR.findall(cells[2])  # the "ours" column
  return claims


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def test_the_doc_states_many_settings():
  assert len(_claims()) >= 30


@pytest.mark.parametrize("key,value", _claims())
def test_each_stated_setting_is_the_paper_configs(key, value):
  cfg = load_config(f"{REPO}/configs/geoclosp.py:paper")
  node = cfg
  for part in key.split("."):
    assert part in node, f"docs/fidelity.md names {key!r}, which the config does not have"
    node = node[part]
  want = _value(value)
  got = tuple(node) if isinstance(node, (list, tuple)) else node
  assert got == want, f"docs/fidelity.md says {key} = {value!r}; configs/geoclosp.py:paper has {node!r}"
