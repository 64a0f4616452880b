"""Move tensors between flat PyTorch-named state dicts and Flax variable trees.

A model importer is a list of `TensorRule`s: each names one tensor in the PyTorch state dict, the
path of the matching leaf in the Flax variables (the first element is the collection: 'params' or
'batch_stats'), and the layout change between the two. `import_state_dict` checks names and shapes
against the model's own variables (from `jax.eval_shape(model.init, ...)`) and reports every problem
at once; `export_state_dict` runs the rules backwards.

Layouts: a PyTorch conv weight is (out, in, kh, kw), a Flax conv kernel (kh, kw, in, out); a
PyTorch Linear weight is (out, in), a Flax Dense kernel (in, out). Multi-axis Flax kernels
(DenseGeneral) use `reshape_rule`s built from these.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from closp_jax.errors import UserError

_log = logging.getLogger(__name__)

Array = np.ndarray
Layout = Callable[[Array], Array]
Path = tuple[str, ...]


class WeightMismatchError(UserError, ValueError):
  """A state dict does not fit a model: shape mismatches, missing or unexpected tensors."""


def identity(a: Array) -> Array:
  return a


def conv_to_flax(w: Array) -> Array:
  """(out, in, kh, kw) -> (kh, kw, in, out)."""
  return np.transpose(w, (2, 3, 1, 0))


def conv_to_torch(k: Array) -> Array:
  """(kh, kw, in, out) -> (out, in, kh, kw)."""
  return np.transpose(k, (3, 2, 0, 1))


def dense_to_flax(w: Array) -> Array:
  """(out, in) -> (in, out)."""
  return np.transpose(w)


dense_to_torch = dense_to_flax


@dataclasses.dataclass(frozen=True)
class TensorRule:
  """One tensor: its PyTorch name, its Flax path and the layout change both ways."""

  torch_name: str
  flax_path: Path
  to_flax: Layout = identity
  to_torch: Layout = identity


# ---- rule builders for common layers -------------------------------------------------------------


def conv_rules(torch_prefix: str, flax_path: Path, *, bias: bool = False) -> list[TensorRule]:
  """A torch Conv2d `<prefix>.weight` [+ `.bias`] as a Flax nn.Conv at `('params', *flax_path)`."""
  rules = [TensorRule(f"{torch_prefix}.weight", ("params", *flax_path, "kernel"), conv_to_flax, conv_to_torch)]
  if bias:
    rules.append(TensorRule(f"{torch_prefix}.bias", ("params", *flax_path, "bias")))
  return rules


def dense_rules(torch_prefix: str, flax_path: Path, *, bias: bool = True) -> list[TensorRule]:
  """A torch Linear as a Flax nn.Dense."""
  rules = [TensorRule(f"{torch_prefix}.weight", ("params", *flax_path, "kernel"), dense_to_flax, dense_to_torch)]
  if bias:
    rules.append(TensorRule(f"{torch_prefix}.bias", ("params", *flax_path, "bias")))
  return rules


def layernorm_rules(torch_prefix: str, flax_path: Path) -> list[TensorRule]:
  """A torch LayerNorm (weight, bias) as a Flax nn.LayerNorm (scale, bias)."""
  return [
    TensorRule(f"{torch_prefix}.weight", ("params", *flax_path, "scale")),
    TensorRule(f"{torch_prefix}.bias", ("params", *flax_path, "bias")),
  ]


def batchnorm_rules(torch_prefix: str, flax_path: Path) -> list[TensorRule]:
  """A torch BatchNorm2d as a Flax nn.BatchNorm: affine terms in 'params', statistics in 'batch_stats'.

  `num_batches_tracked` has no Flax counterpart; importers ignore it and exporters write 0.
  """
  return [
    TensorRule(f"{torch_prefix}.weight", ("params", *flax_path, "scale")),
    TensorRule(f"{torch_prefix}.bias", ("params", *flax_path, "bias")),
    TensorRule(f"{torch_prefix}.running_mean", ("batch_stats", *flax_path, "mean")),
    TensorRule(f"{torch_prefix}.running_var", ("batch_stats", *flax_path, "var")),
  ]


def reshape_rule(
  torch_name: str,
  flax_path: Path,
  *,
  torch_shape: Sequence[int],
  split_shape: Sequence[int],
  flax_shape: Sequence[int],
  perm: Sequence[int] | None = None,
) -> TensorRule:
  """A tensor stored as `torch_shape` in PyTorch whose axes are split, permuted and merged for Flax.

  to_flax: reshape to `split_shape`, transpose by `perm`, reshape to `flax_shape`; to_torch undoes it.
  E.g. a timm qkv weight stored (3*H*hd, D) for a Flax (D, 3, H, hd) kernel:
  torch_shape=(3*H*hd, D), split_shape=(3, H, hd, D), perm=(3, 0, 1, 2), flax_shape=(D, 3, H, hd).
  """
  torch_shape, split_shape, flax_shape = tuple(torch_shape), tuple(split_shape), tuple(flax_shape)
  perm = tuple(perm) if perm is not None else tuple(range(len(split_shape)))
  inv = tuple(int(i) for i in np.argsort(perm))
  permuted = tuple(split_shape[p] for p in perm)

  def to_flax(a: Array) -> Array:
    if tuple(a.shape) != torch_shape:
      raise ValueError(f"shape {a.shape}, expected {torch_shape}")
    return np.transpose(a.reshape(split_shape), perm).reshape(flax_shape)

  def to_torch(a: Array) -> Array:
    return np.transpose(np.reshape(a, permuted), inv).reshape(torch_shape)

  return TensorRule(torch_name, tuple(flax_path), to_flax, to_torch)


# ---- trees --------------------------------------------------------------------------------------


def _unbox(tree: Any) -> Any:
  """Strips flax.linen.Partitioned (or any AxisMetadata) boxes; leaves other trees as they are."""
  try:
    from flax.core import meta  # pylint: disable=import-outside-toplevel

    return meta.unbox(tree)
  except ImportError:  # pragma: no cover - flax is a hard dependency
    return tree


def flatten_tree(tree: Mapping[str, Any]) -> dict[Path, Any]:
  """{('a','b'): leaf} for a nested mapping (FrozenDicts and Partitioned boxes accepted)."""
  out: dict[Path, Any] = {}

  def walk(node: Any, path: Path) -> None:
    if isinstance(node, Mapping):
      for k, v in node.items():
        walk(v, (*path, str(k)))
    else:
      out[path] = node

  walk(_unbox(tree), ())
  return out


def unflatten_tree(flat: Mapping[Path, Any]) -> dict[str, Any]:
  """The inverse of `flatten_tree` (plain nested dicts)."""
  root: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = root
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = leaf
  return root


def strip_prefix(state_dict: Mapping[str, Array], prefix: str, *, source: str = "state dict") -> dict[str, Array]:
  """Keeps the tensors whose names start with `prefix`, without it. Other tensors are dropped
  (a checkpoint holding several towers is read one tower at a time)."""
  if not prefix:
    return dict(state_dict)
  out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
  if not out:
    sample = ", ".join(list(state_dict)[:8])
    raise WeightMismatchError(f"{source}: no tensor name starts with prefix {prefix!r} (names look like: {sample})")
  return out


def _fmt(shape: Iterable[int]) -> str:
  return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _expected_torch_shape(rule: TensorRule, flax_shape: Sequence[int]) -> str:
  try:
    return _fmt(rule.to_torch(np.zeros(flax_shape, np.float32)).shape)
  except Exception:  # pylint: disable=broad-except
    return "?"


def import_state_dict(
  state_dict: Mapping[str, Array],
  rules: Sequence[TensorRule],
  expected: Mapping[str, Any],
  *,
  ignore: Sequence[str] = (),
  source: str = "state dict",
) -> dict[str, Any]:
  """Builds Flax variables {collection: tree} of float32 numpy arrays from a flat state dict.

  Args:
    state_dict: {torch name: array} (already prefix-stripped).
    rules: one TensorRule per tensor the model needs.
    expected: the model's variables (arrays or jax.ShapeDtypeStruct, boxed or not), e.g. from
      `jax.eval_shape(model.init, ...)`; every leaf must be covered by exactly one rule.
    ignore: fnmatch patterns of state-dict names to skip silently (classifier heads, counters).
    source: how to name the state dict in error messages (e.g. the file path).

  Raises:
    WeightMismatchError listing every shape mismatch (tensor name, Flax path, both shapes),
    every missing tensor and every unexpected tensor.
  """
  want = flatten_tree(expected)
  by_path = {r.flax_path: r for r in rules}
  if len(by_path) != len(rules):
    raise ValueError("two rules write the same Flax path")
  uncovered = sorted("/".join(p) for p in want if p not in by_path)
  unknown = sorted("/".join(p) for p in by_path if p not in want)
  if uncovered or unknown:
    raise ValueError(
      f"importer rules do not match the model: model leaves without a rule {uncovered}, "
      f"rules for leaves the model lacks {unknown}"
    )

  problems: list[str] = []
  missing = [r.torch_name for r in rules if r.torch_name not in state_dict]
  used = {r.torch_name for r in rules}
  unexpected = [k for k in state_dict if k not in used and not any(fnmatch.fnmatchcase(k, pat) for pat in ignore)]
  flat: dict[Path, Array] = {}
  for r in rules:
    if r.torch_name not in state_dict:
      continue
    value = np.asarray(state_dict[r.torch_name])
    target = tuple(int(s) for s in want[r.flax_path].shape)
    try:
      converted = r.to_flax(value)
    except Exception:  # pylint: disable=broad-except
      converted = None
    if converted is None or tuple(converted.shape) != target:
      problems.append(
        f"  {r.torch_name} -> {'/'.join(r.flax_path)}: file has shape {_fmt(value.shape)}, "
        f"model expects {_expected_torch_shape(r, target)} (Flax layout {_fmt(target)})"
      )
      continue
    flat[r.flax_path] = np.ascontiguousarray(converted, dtype=np.float32)
  if missing:
    problems.append(f"  missing tensors ({len(missing)}): {', '.join(missing)}")
  if unexpected:
    problems.append(f"  unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}")
  if problems:
    raise WeightMismatchError(f"{source} does not fit the model:\n" + "\n".join(problems))
  skipped = [k for k in state_dict if k not in used]
  if skipped:
    _log.info("%s: ignored %d tensors not used by the encoder: %s", source, len(skipped), ", ".join(skipped))
  return unflatten_tree(flat)


def export_state_dict(
  variables: Mapping[str, Any], rules: Sequence[TensorRule], *, constants: Mapping[str, Array] | None = None
) -> dict[str, Array]:
  """The flat PyTorch-named state dict (float32 numpy) for Flax `variables` ({collection: tree}).

  Every leaf of `variables` must be exported by some rule, so nothing is lost silently.
  `constants` are added as given (e.g. BatchNorm `num_batches_tracked` counters).
  """
  have = flatten_tree(variables)
  rule_paths = {r.flax_path for r in rules}
  left = sorted("/".join(p) for p in have if p not in rule_paths)
  absent = sorted("/".join(r.flax_path) for r in rules if r.flax_path not in have)
  if left or absent:
    raise WeightMismatchError(f"cannot export: leaves without a rule {left}, rules without a leaf {absent}")
  out: dict[str, Array] = {}
  for r in rules:
    # an owned, writable, C-ordered copy (torch.from_numpy warns on read-only views of jax arrays)
    out[r.torch_name] = np.array(r.to_torch(np.asarray(have[r.flax_path], dtype=np.float32)), order="C", copy=True)
  for k, v in (constants or {}).items():
    out[k] = np.asarray(v)
  return out
