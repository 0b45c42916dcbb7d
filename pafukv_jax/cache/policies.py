"""Cache policies. A policy is a score: the update keeps the highest-scoring tokens.

Each scoring function maps the candidates of one update (cached slots, then incoming tokens) to
a keep score: fn(frame [L, B, M] int, score [L, B, M] carried score, keys [B]) -> [L, B, M].
The update always admits the incoming chunk and protects sink and recent frames (kv_cache.py).
Adding a policy means adding one function and one `Policy` line to `POLICIES`.
`recompute` is not a cache policy: it re-runs the block-causal model over the whole history
for every chunk and is the reference the cached policies are checked against.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


def recency(frame, score, keys):
  """Newer frames first: the sliding window (with sink frames protected by the update)."""
  del score, keys
  return frame.astype(jnp.float32)


def carried(frame, score, keys):
  """The score the cache carries with each token (h2o: the attention it has received)."""
  del frame, keys
  return score


def uniform(frame, score, keys):
  """A random keep order per sample, shared by the layers: the control."""
  del score
  draw = jax.vmap(lambda key: jax.random.uniform(key, frame.shape[2:]))(keys)  # [B, M]
  return jnp.broadcast_to(draw, frame.shape)


def uniform_per_layer(frame, score, keys):
  """The control with one random order per layer."""
  del score
  draw = jax.vmap(lambda key: jax.random.uniform(key, (frame.shape[0], *frame.shape[2:])))(keys)
  return jnp.moveaxis(draw, 0, 1)  # [L, B, M]


def frame_mean(keep, frame, num_frames: int):
  """Frame granularity: every token's keep score becomes the mean over its frame's tokens
  (keep, frame [L, B, M]; empty slots, frame -1, form their own group), so the update keeps or
  evicts whole frames."""
  ids = jnp.where(frame >= 0, frame, num_frames)

  def one_row(k, i):
    total = jax.ops.segment_sum(k, i, num_segments=num_frames + 1)
    count = jax.ops.segment_sum(jnp.ones_like(k), i, num_segments=num_frames + 1)
    return (total / jnp.maximum(count, 1.0))[i]

  return jax.vmap(jax.vmap(one_row))(keep, ids)


@dataclasses.dataclass(frozen=True)
class Policy:
  name: str
  score: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
  bounded: bool = True            # False: capacity is the whole video, nothing is ever evicted
  uses_sink: bool = True          # False: cache.sink_frames is ignored
  needs_attention: bool = False   # True: the rollout adds the attention each slot receives to
                                  # its carried score (a second pass over the cache)
  scorer: str = ''                # 'head': incoming tokens score by the salience head (pafu);
                                  # 'table': by given per-token scores (oracle)
  mixes_attention: bool = False   # pafu: score = (1 - mix) head + mix accumulated attention
  per_layer_score: Callable | None = None  # the score with cache.per_layer (default: `score`)


POLICIES = {
    p.name: p for p in (
        Policy('full', recency, bounded=False, uses_sink=False),
        Policy('window', recency, uses_sink=False),
        Policy('sink_window', recency),
        Policy('h2o', carried, needs_attention=True),
        Policy('random', uniform, per_layer_score=uniform_per_layer),
        Policy('pafu', carried, scorer='head', mixes_attention=True),
        Policy('oracle', carried, scorer='table'),
    )
}


def attention_weight(policy: Policy, cache_config) -> float:
  """How much of the attention each slot receives is added to its carried score."""
  if policy.needs_attention:
    return 1.0
  if policy.mixes_attention:
    mix = float(cache_config.get('pafu_mix', 0.0)) if cache_config is not None else 0.0
    if not 0.0 <= mix <= 1.0:
      raise ValueError(f'cache.pafu_mix must be in [0, 1], got {mix}.')
    return mix
  return 0.0
RECOMPUTE = 'recompute'
ROLLOUT_POLICIES = (RECOMPUTE, *POLICIES)


def get_policy(name: str) -> Policy:
  if name not in POLICIES:
    raise ValueError(f'Unknown policy {name!r}; choose one of {list(ROLLOUT_POLICIES)}.')
  return POLICIES[name]
