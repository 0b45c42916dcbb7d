"""Cache policies. A policy is a score: the update keeps the highest-scoring tokens.

A `Policy` says, in one place, everything the rollout does differently for it:
  * `keep`: the keep score of every candidate of an update (cached slots, then incoming tokens),
    fn(frame [L, B, M] int, score [L, B, M] carried score, keys [B]) -> [L, B, M]; with
    cache.per_layer, `keep_per_layer` if it has one;
  * `incoming`: the score an incoming token carries into the cache: 'none' (0), 'head' (the
    salience head's, pafu) or 'table' (given per-token scores: the oracle's, fov's);
  * `attention`: whether the attention each cached slot receives is added to its carried score:
    'none', 'all' (h2o) or 'mix' (pafu: a share cache.pafu_mix of it, the head's the rest);
  * `bounded` (False: the whole video fits, nothing is evicted) and `uses_sink`.
The granularity (cache.granularity='frame': a frame's tokens share their mean keep score) and
per-layer selections (cache.per_layer) are the `CacheSpec`'s and apply to every policy.
The update always admits the incoming chunk and protects sink and recent frames (kv_cache.py).

Adding a policy is one `keep` function and one `Policy(...)`, in `POLICIES` or through `register`
(README, "Adding a policy").
`recompute` is not a cache policy: it re-runs the block-causal model over the whole history
for every chunk and is the reference the cached policies are checked against.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from pafukv_jax.cache import kv_cache

KeepFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
INCOMING = ('none', 'head', 'table')
ATTENTION = ('none', 'all', 'mix')


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


def table_lookup(table, token_index):
  """Scores of tokens by absolute index [B, N] from a table [B, T*S] (or [L, B, T*S])."""
  index = jnp.broadcast_to(token_index, (*table.shape[:-1], token_index.shape[-1]))
  return jnp.take_along_axis(table.astype(jnp.float32), index, axis=-1)


@dataclasses.dataclass(frozen=True)
class Policy:
  name: str
  keep: KeepFn
  keep_per_layer: KeepFn | None = None  # the keep score with cache.per_layer (default: keep)
  bounded: bool = True
  uses_sink: bool = True                # False: cache.sink_frames is ignored
  incoming: str = 'none'                # one of INCOMING
  attention: str = 'none'               # one of ATTENTION

  def __post_init__(self):
    if self.incoming not in INCOMING or self.attention not in ATTENTION:
      raise ValueError(f'Policy {self.name!r}: incoming must be one of {INCOMING} and attention '
                       f'one of {ATTENTION}.')

  # -- what the rollout asks of a policy --------------------------------------------------------

  def attention_weight(self, spec: kv_cache.CacheSpec) -> float:
    """The share of the attention a slot receives that is added to its carried score."""
    return dict(none=0.0, all=1.0, mix=spec.pafu_mix)[self.attention]

  def collect(self, spec: kv_cache.CacheSpec, writing: bool) -> tuple[str, ...]:
    """What a cached forward must return for this policy (model `collect`): the keys and values
    in the pass that writes, the attention the slots receive, the features the head reads."""
    names = ('k', 'v') if writing else ()
    if self.attention_weight(spec) > 0:
      names += ('cache_mass',)
    if writing and self.incoming == 'head':
      names += ('hidden',)
    return names

  def receive(self, spec, cache: kv_cache.KVCache, masses) -> kv_cache.KVCache:
    """Adds the attention the slots received in these passes (masses: [L, B, C] each), times
    the attention weight, to their carried score: averaged over layers (one selection shared by
    all layers), or each layer's own with cache.per_layer."""
    weight = self.attention_weight(spec)
    if weight == 0 or not masses:
      return cache
    received = sum(masses)
    if not spec.per_layer:
      received = jnp.mean(received, axis=0, keepdims=True)
    return cache.replace(score=cache.score + weight * received)

  def incoming_score(self, spec, aux, token_index, num_layers, head=None, table=None):
    """The score [L, B, N] each incoming token carries into the cache. aux: the writing pass's
    outputs; token_index [B, N] absolute token indices; head(hidden, token_index) -> [B, N] or
    [L, B, N]; table: the oracle's scores [B, T*S] or [L, B, T*S]."""
    b, n = token_index.shape
    score = jnp.zeros((b, n))
    if self.incoming == 'head':
      score = head(aux['hidden'], token_index).astype(jnp.float32)
    elif self.incoming == 'table':
      score = table_lookup(table, token_index)
    if score.ndim == 3 and not spec.per_layer:
      score = score.mean(axis=0)  # a per-layer scorer, one shared selection
    return jnp.broadcast_to((1.0 - self.attention_weight(spec)) * score, (num_layers, b, n))

  def keep_score(self, spec, cache: kv_cache.KVCache, token_frames, incoming, keys):
    """The keep score [L, B, C + N] of every cached slot, then every incoming token."""
    frames = jnp.concatenate([cache.frame, jnp.broadcast_to(token_frames, incoming.shape)], -1)
    scores = jnp.concatenate([cache.score, incoming], axis=-1)
    fn = (self.keep_per_layer if spec.per_layer else None) or self.keep
    keep = fn(frames, scores, keys)
    if spec.granularity == 'frame':
      keep = frame_mean(keep, frames, spec.num_frames)
    return keep


POLICIES = {
    p.name: p for p in (
        Policy('full', recency, bounded=False, uses_sink=False),
        Policy('window', recency, uses_sink=False),
        Policy('sink_window', recency),
        Policy('h2o', carried, attention='all'),
        Policy('random', uniform, keep_per_layer=uniform_per_layer),
        Policy('pafu', carried, incoming='head', attention='mix'),
        Policy('fov', carried, incoming='table'),   # scores: cache/fov.py, from the path
        Policy('oracle', carried, incoming='table'),
    )
}
RECOMPUTE = 'recompute'


def rollout_policies() -> tuple[str, ...]:
  """Every name a rollout accepts: 'recompute', then the cache policies (registered ones too)."""
  return (RECOMPUTE, *POLICIES)


def register(policy: Policy) -> Policy:
  """Adds a policy under its name, for every entry point (generate.py, evaluate.py, ...)."""
  if policy.name in rollout_policies():
    raise ValueError(f'A policy named {policy.name!r} exists already.')
  POLICIES[policy.name] = policy
  return policy


def get_policy(name: str) -> Policy:
  if name not in POLICIES:
    raise ValueError(f'Unknown policy {name!r}; choose one of {list(rollout_policies())}.')
  return POLICIES[name]


def cache_spec(name: str, cache_config, *, num_frames, chunk_frames, tokens_per_frame):
  """The CacheSpec of policy `name` from a config's `cache` fields (checked); None for
  'recompute', which keeps no cache."""
  if name == RECOMPUTE:
    return None
  return kv_cache.CacheSpec.from_config(get_policy(name), cache_config, num_frames=num_frames,
                                        chunk_frames=chunk_frames,
                                        tokens_per_frame=tokens_per_frame)
