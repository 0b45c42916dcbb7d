"""The fixed-size KV cache: one pytree of static shape, one update path for every policy.

Shapes (L layers, B samples, C slots, H heads, Dh head dim):
  k, v   [L, B, H, C, Dh]  keys are stored already rotated by RoPE at their absolute frame;
                           head-major, so attention over the slots is a plain batched matmul;
  frame  [L, B, C] int32   frame index of the token in each slot, -1 for an empty slot;
  score  [L, B, C] f32     the score the policy carries with each token (e.g. attention mass).
Metadata is per layer so that a policy may keep a different selection in every layer; with a
shared selection all layers hold the same values.

Update: the policy scores every cached and incoming token; protected tokens (sink frames,
recent frames) score +inf, empty slots -inf; the N lowest of the C + N candidates are evicted
(N = tokens of the incoming chunk). Exactly as many cached slots are freed as incoming tokens
survive, and the survivors are scattered into the freed slots: the cache is never compacted,
and keys, values, frame and score of a token always move together.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
  k: jax.Array
  v: jax.Array
  frame: jax.Array
  score: jax.Array

  @property
  def valid(self) -> jax.Array:
    return self.frame >= 0

  @property
  def capacity(self) -> int:
    return self.k.shape[3]

  @property
  def nbytes(self) -> int:
    return sum(x.size * x.dtype.itemsize for x in (self.k, self.v, self.frame, self.score))

  def read(self, block_size: int = 512) -> 'CacheRead':
    """What the attention reads, with the number of blocks of `block_size` slots that hold
    valid tokens (slots fill from 0 upward, so this follows the filled length)."""
    c = self.capacity
    bs = min(block_size, c)
    high_water = jnp.max(jnp.where(self.valid, jnp.arange(c) + 1, 0))
    return CacheRead(self.k, self.v, self.valid, (high_water + bs - 1) // bs, bs)


@struct.dataclass
class CacheRead:
  """What a cached forward reads: the whole cache (never a per-layer copy) and how much of it
  is filled. Slots at or past `num_blocks * block_size` hold no valid token."""
  k: jax.Array           # [L, B, H, C, Dh]
  v: jax.Array           # [L, B, H, C, Dh]
  valid: jax.Array       # [L, B, C] bool
  num_blocks: jax.Array  # traced int32: blocks of slots up to the last valid one
  block_size: int = struct.field(pytree_node=False, default=512)



def init_cache(num_layers, batch, capacity, num_heads, head_dim, dtype=jnp.float32) -> KVCache:
  kv_shape = (num_layers, batch, num_heads, capacity, head_dim)
  meta_shape = (num_layers, batch, capacity)
  return KVCache(
      k=jnp.zeros(kv_shape, dtype), v=jnp.zeros(kv_shape, dtype),
      frame=jnp.full(meta_shape, -1, jnp.int32), score=jnp.zeros(meta_shape, jnp.float32))


GRANULARITIES = ('token', 'frame')


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """Static description of the cache of one rollout; `from_config` checks the budget."""
  policy: str
  capacity_frames: int
  tokens_per_frame: int
  sink_frames: int = 0
  recent_frames: int = 0
  granularity: str = 'token'  # 'frame': a frame's tokens share their mean score, kept or evicted together
  per_layer: bool = False     # True: every layer keeps its own selection (h2o, pafu, oracle, random)
  pafu_mix: float = 0.0       # a 'mix' policy's share of received attention in the carried score
  num_frames: int = 0         # frames of the whole video (frame granularity groups by frame index)

  @property
  def capacity(self) -> int:
    return self.capacity_frames * self.tokens_per_frame

  @classmethod
  def from_config(cls, policy, cache_config, *, num_frames, chunk_frames, tokens_per_frame):
    """policy: a `Policy`; cache_config: fields budget_frames, sink_frames, recent_frames and
    optionally granularity, per_layer, pafu_mix (may be None for a policy that keeps
    everything)."""
    video = dict(tokens_per_frame=tokens_per_frame, num_frames=num_frames)
    if not policy.bounded and cache_config is None:
      return cls(policy.name, num_frames, **video)
    granularity = cache_config.get('granularity', 'token')
    if granularity not in GRANULARITIES:
      raise ValueError(f'cache.granularity must be one of {GRANULARITIES}, got {granularity!r}.')
    mix = float(cache_config.get('pafu_mix', 0.0)) if policy.attention == 'mix' else 0.0
    if not 0.0 <= mix <= 1.0:
      raise ValueError(f'cache.pafu_mix must be in [0, 1], got {mix}.')
    options = dict(granularity=granularity, per_layer=bool(cache_config.get('per_layer', False)),
                   pafu_mix=mix, **video)
    budget = int(cache_config.budget_frames)
    sink = int(cache_config.sink_frames) if policy.uses_sink else 0
    recent = int(cache_config.get('recent_frames', 0))
    if sink < 0 or recent < 0:
      raise ValueError(f'cache.sink_frames ({sink}) and cache.recent_frames ({recent}) must be >= 0.')
    if policy.name == 'sink_window' and sink < 1:
      raise ValueError("policy='sink_window' needs cache.sink_frames >= 1 (use policy='window' "
                       'for a cache without sink frames).')
    if not policy.bounded:
      return cls(policy.name, num_frames, sink_frames=sink, recent_frames=recent, **options)
    if budget < chunk_frames:
      raise ValueError(
          f'cache.budget_frames={budget} is smaller than one chunk ({chunk_frames} frames): the '
          f'chunk being generated could not enter the cache. Use cache.budget_frames >= {chunk_frames}.')
    recent = max(recent, chunk_frames)  # the incoming chunk is always admitted
    if sink + recent > budget:
      raise ValueError(
          f'cache.budget_frames={budget} cannot hold cache.sink_frames={sink} plus the newest '
          f'{recent} frames (chunk or cache.recent_frames): raise the budget to '
          f'>= {sink + recent} frames or lower sink_frames / recent_frames.')
    return cls(policy.name, budget, sink_frames=sink, recent_frames=recent, **options)


def _write_slots(k, v, frame, score, k_new, v_new, frame_new, score_new, keep):
  """One (layer, sample): evict the N lowest of keep [C + N], write survivors into freed slots."""
  c, n = frame.shape[0], frame_new.shape[0]
  _, evict = jax.lax.top_k(-keep, n)
  evicted = jnp.zeros(c + n, bool).at[evict].set(True)
  freed = jnp.nonzero(evicted[:c], size=n, fill_value=c)[0]  # ascending free slots
  survives = ~evicted[c:]
  rank = jnp.cumsum(survives) - 1
  target = jnp.where(survives, freed[jnp.clip(rank, 0, n - 1)], c)  # c = dropped
  put = lambda buf, new: buf.at[target].set(new, mode='drop')
  put_kv = lambda buf, new: buf.at[:, target].set(new, mode='drop')  # [H, C, Dh]
  return put_kv(k, k_new), put_kv(v, v_new), put(frame, frame_new), put(score, score_new)


def update_cache(cache: KVCache, k_new, v_new, frame_new, score_new, keep_score,
                 *, sink_frames: int = 0, recent_frames: int = 0) -> KVCache:
  """Admits a chunk's tokens, keeping the cache's C best by `keep_score`.

  k_new/v_new [L, B, H, N, Dh]; frame_new [B, N] int; score_new [L, B, N];
  keep_score [L, B, C + N]: the policy's score of every cached slot, then every incoming token.
  Tokens of frames < sink_frames, and of the newest `recent_frames` frames, are never evicted.
  """
  num_layers = cache.k.shape[0]
  frame_new = jnp.broadcast_to(frame_new.astype(jnp.int32), (num_layers, *frame_new.shape))
  frames = jnp.concatenate([cache.frame, frame_new], axis=-1)
  newest = jnp.max(frame_new, axis=-1, keepdims=True)
  protected = (frames < sink_frames) | (frames > newest - recent_frames)
  keep = jnp.where(protected, jnp.inf, keep_score.astype(jnp.float32))
  keep = jnp.where(frames >= 0, keep, -jnp.inf)
  write = jax.vmap(jax.vmap(_write_slots))  # over layers, then samples
  k, v, frame, score = write(cache.k, cache.v, cache.frame, cache.score,
                             k_new.astype(cache.k.dtype), v_new.astype(cache.v.dtype),
                             frame_new, score_new.astype(jnp.float32), keep)
  return KVCache(k=k, v=v, frame=frame, score=score)
