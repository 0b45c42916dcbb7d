"""Cache policies. A policy is a score: the update keeps the highest-scoring tokens.

Each scoring function maps the candidates of one update (cached slots, then incoming tokens) to
a keep score: fn(frame [L, B, M] int, score [L, B, M] carried score, key) -> [L, B, M].
Adding a policy means adding one function and one `Policy` line to `POLICIES`.
`recompute` is not a cache policy: it re-runs the block-causal model over the whole history
for every chunk and is the reference the cached policies are checked against.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


def recency(frame, score, key):
  """Newer frames first: the sliding window (with sink frames protected by the update)."""
  del score, key
  return frame.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Policy:
  name: str
  score: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
  bounded: bool = True      # False: capacity is the whole video, nothing is ever evicted
  uses_sink: bool = True    # False: cache.sink_frames is ignored


POLICIES = {
    p.name: p for p in (
        Policy('full', recency, bounded=False, uses_sink=False),
        Policy('window', recency, uses_sink=False),
        Policy('sink_window', recency),
    )
}
RECOMPUTE = 'recompute'
ROLLOUT_POLICIES = (RECOMPUTE, *POLICIES)


def get_policy(name: str) -> Policy:
  if name not in POLICIES:
    raise ValueError(f'Unknown policy {name!r}; choose one of {list(ROLLOUT_POLICIES)}.')
  return POLICIES[name]
