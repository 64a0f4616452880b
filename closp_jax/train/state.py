"""The train state: a small pytree of everything a step reads and writes."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any  # BatchNorm running statistics ({} for models without BatchNorm)
  opt_state: Any
  rng: jax.Array  # uint32[2] key data: the step's randomness is fold_in(rng, step)
