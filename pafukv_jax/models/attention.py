"""Attention for the video DiT: Wan2.1-style self- and cross-attention modules and the kernels.

Three ways the self-attention sees keys (one module serves all three):
  * bidirectional: every token sees every token (the teacher);
  * block-causal: a token sees the tokens of its own chunk and of earlier chunks (the student
    in training, and the `recompute` reference rollout);
  * cached: the current chunk sees itself plus the valid slots of a KV cache (generation).
The cached path never concatenates cache and chunk: both parts are attended separately and
merged with their softmax statistics (online softmax). With `attention_impl='blockwise'` the cache
is read in blocks of slots, only up to the last filled block, in a loop with a traced trip count:
the cost follows the filled length and the step still compiles once. 'masked' reads every slot
(the preallocated baseline); 'xla' / 'cudnn' use `jax.nn.dot_product_attention` over the
concatenated, masked cache (cuDNN's fused kernel on GPU). 'auto' (the default) picks one of the
first two per backend and cache size (`resolve_impl`). Without a cache, 'blockwise' and 'masked'
compute the logits of `attention_query_chunk` queries at a time, so a teacher pass over a whole
clip never holds an [N, N] matrix.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pafukv_jax.cache.kv_cache import CacheRead
from pafukv_jax.models.layers import dense
from pafukv_jax.models.rope import apply_rope

_NEG_INF = -jnp.inf
ATTENTION_IMPLS = ('auto', 'blockwise', 'masked', 'xla', 'cudnn')
# 'auto' reads the whole cache at once ('masked') off the CPU while a head's logits of a chunk over
# the cache have at most this many entries: on an H200 at the rollout benchmark's sizes (64 queries,
# up to 8,192 slots) masked was 2-2.7x faster than blockwise, whose loop of small matmuls leaves a
# GPU idle. On the CPU blockwise wins once the cache is long and partly empty (full cache, 128
# frames: 205 against 416 ms/frame, README), and ties on bounded caches.
AUTO_MASKED_MAX_LOGITS = 1 << 22


# -- softmax pieces ---------------------------------------------------------------------------
# Everything is head-major, q [B, H, Nq, D] and k, v [B, H, Nk, D], so that the two einsums are
# plain batched matmuls over (B, H) with no transposes (1.5x faster on CPU than [B, N, H, D]).
# A "partial" is (out [B, H, Nq, D] unnormalised, row max [B, H, Nq], row sum [B, H, Nq]) of one
# group of keys; partials of disjoint groups combine exactly (the online softmax).


def _logits(q, k):
  """Scaled logits [B, H, Nq, Nk]; q is scaled, the smaller operand."""
  q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
  return jnp.einsum('bhqd,bhkd->bhqk', q, k, preferred_element_type=jnp.float32)


def _partial_attention(q, k, v, mask):
  """Partial over keys k/v [B, H, Nk, D]; mask broadcastable to [B, H, Nq, Nk] or None.
  A row with no visible key has max -inf and sum 0."""
  logits = _logits(q, k)
  if mask is None:
    row_max = jnp.max(logits, axis=-1)
    p = jnp.exp(logits - row_max[..., None])
  else:
    # The mask is applied inside each consumer (the max, the exp) rather than to the logits
    # once: a masked copy of the logits would be one more pass over [B, H, Nq, Nk] in memory,
    # the largest array of a long cache (7% of a full-cache frame at 64 frames on CPU).
    row_max = jnp.max(jnp.where(mask, logits, _NEG_INF), axis=-1)
    safe = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.where(mask, jnp.exp(logits - safe[..., None]), 0.0)
  out = jnp.einsum('bhqk,bhkd->bhqd', p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out, row_max, jnp.sum(p, axis=-1)


def _combine(a, b):
  (oa, ma, la), (ob, mb, lb) = a, b
  m = jnp.maximum(ma, mb)
  scale = lambda mx: jnp.where(jnp.isfinite(mx), jnp.exp(mx - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
  sa, sb = scale(ma), scale(mb)
  return oa * sa[..., None] + ob * sb[..., None], m, la * sa + lb * sb


def _normalise(partial):
  out, _, total = partial
  return out / total[..., None]


def attention(q, k, v, mask=None, impl='blockwise', query_chunk=0):
  """Softmax attention of q [B, H, Nq, D] over (k, v) [B, H, Nk, D] with an optional boolean
  visibility mask broadcastable to [B, H, Nq, Nk]; returns [B, H, Nq, D].

  query_chunk > 0 (with 'blockwise' / 'masked'): logits for at most that many queries at a time,
  so memory grows with query_chunk x Nk, never Nq x Nk (a whole 1.3B-model clip, 32,760 tokens,
  would need 51 GB of logits per layer). 'cudnn' is a fused kernel and never builds them."""
  if impl in ('xla', 'cudnn'):  # these take [B, N, H, D]
    t = lambda x: jnp.swapaxes(x, 1, 2)
    return t(jax.nn.dot_product_attention(t(q), t(k), t(v), mask=mask, implementation=impl))
  if query_chunk and q.shape[2] > query_chunk:
    return _query_chunked(q, k, v, mask, query_chunk)
  return _normalise(_partial_attention(q, k, v, mask)).astype(q.dtype)


def _query_chunked(q, k, v, mask, chunk):
  """`attention` one chunk of queries at a time (lax.map). Each chunk is rematerialised in the
  backward pass, so training keeps no chunk's probabilities either. Queries are padded to whole
  chunks; the padded rows are dropped."""
  b, h, nq, d = q.shape
  n = -(-nq // chunk)
  pad = n * chunk - nq
  to_chunks = lambda x: jnp.moveaxis(x.reshape(*x.shape[:2], n, chunk, *x.shape[3:]), 2, 0)
  rows = to_chunks(jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0))))
  one = jax.checkpoint(lambda qc, mc: _normalise(_partial_attention(qc, k, v, mc)))
  if mask is not None and mask.ndim == 4 and mask.shape[2] > 1:  # a mask row per query
    mask = to_chunks(jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=True))
    out = jax.lax.map(lambda x: one(*x), (rows, mask))  # [n, B, H, chunk, D]
  else:  # the same visibility for every query
    out = jax.lax.map(lambda qc: one(qc, mask), rows)
  return jnp.moveaxis(out, 0, 2).reshape(b, h, n * chunk, d)[:, :, :nq].astype(q.dtype)


# -- attention over the cache -----------------------------------------------------------------


def _cache_block(cache: CacheRead, layer, i):
  """Block i of the layer's slots, sliced out of the whole cache in one dynamic_slice.
  The last block is shifted back to stay in bounds; slots an earlier block covered are masked."""
  _, b, h, c, d = cache.k.shape
  bs = cache.block_size
  start = jnp.minimum(i * bs, c - bs)
  k = jax.lax.dynamic_slice(cache.k, (layer, 0, 0, start, 0), (1, b, h, bs, d))[0]
  v = jax.lax.dynamic_slice(cache.v, (layer, 0, 0, start, 0), (1, b, h, bs, d))[0]
  valid = jax.lax.dynamic_slice(cache.valid, (layer, 0, start), (1, b, bs))[0]
  return k, v, valid & (start + jnp.arange(bs) >= i * bs)[None], start


def resolve_impl(impl: str, num_queries: int, cache_slots: int, backend: str | None = None) -> str:
  """The implementation that 'auto' stands for with num_queries over cache_slots on `backend`
  (default: JAX's); any other impl is returned as it is."""
  if impl != 'auto':
    return impl
  backend = backend or jax.default_backend()
  if backend != 'cpu' and num_queries * cache_slots <= AUTO_MASKED_MAX_LOGITS:
    return 'masked'
  return 'blockwise'


def _cache_partial(q, cache: CacheRead, layer, impl):
  """Partial attention of q over the layer's valid cache slots."""
  if impl == 'masked':  # every slot, filled or not: the preallocated baseline
    return _partial_attention(q, cache.k[layer], cache.v[layer], cache.valid[layer][:, None, None])
  b, h, nq, d = q.shape
  init = (jnp.zeros((b, h, nq, d), jnp.float32), jnp.full((b, h, nq), _NEG_INF),
          jnp.zeros((b, h, nq), jnp.float32))

  def body(i, acc):
    k, v, valid, _ = _cache_block(cache, layer, i)
    return _combine(acc, _partial_attention(q, k, v, valid[:, None, None]))

  # a traced trip count: the cost follows the filled length, and it compiles once
  return jax.lax.fori_loop(0, cache.num_blocks, body, init)


def _cache_mass(q, cache: CacheRead, layer, row_max, row_sum, impl):
  """Attention probability each cache slot receives: [B, C], summed over the queries and
  averaged over heads, from the final softmax statistics (a second pass over the blocks)."""
  def mass(k, valid):
    p = jnp.exp(_logits(q, k) - row_max[..., None]) / row_sum[..., None]
    return jnp.sum(jnp.where(valid[:, None, None], p, 0.0), axis=2).mean(axis=1)

  if impl == 'masked':
    return mass(cache.k[layer], cache.valid[layer])
  b, c = cache.valid.shape[1:]

  def body(i, acc):
    k, _, valid, start = _cache_block(cache, layer, i)
    block = jax.lax.dynamic_slice_in_dim(acc, start, cache.block_size, axis=1)
    return jax.lax.dynamic_update_slice_in_dim(acc, block + mass(k, valid), start, axis=1)

  return jax.lax.fori_loop(0, cache.num_blocks, body, jnp.zeros((b, c), jnp.float32))


def cached_attention(q, k, v, cache: CacheRead, layer, impl='blockwise', with_mass=False):
  """The chunk (q, k, v) attends to itself and to the valid cache slots of `layer`.

  q, k, v [B, H, Nq, D]. Returns out [B, H, Nq, D], and with `with_mass` also the attention
  each slot receives [B, C].
  """
  impl = resolve_impl(impl, q.shape[2], cache.k.shape[3])
  if impl in ('xla', 'cudnn'):
    if with_mass:
      raise ValueError(f"attention_impl={impl!r} gives no attention probabilities; use "
                       "'blockwise' or 'masked' with a policy that needs them.")
    b, n = q.shape[0], q.shape[2]
    keys = jnp.concatenate([cache.k[layer], k], axis=2)
    values = jnp.concatenate([cache.v[layer], v], axis=2)
    visible = jnp.concatenate([cache.valid[layer], jnp.ones((b, n), bool)], axis=1)
    return attention(q, keys, values, visible[:, None, None], impl), None
  total = _combine(_partial_attention(q, k, v, None), _cache_partial(q, cache, layer, impl))
  out = _normalise(total).astype(q.dtype)
  if not with_mass:
    return out, None
  return out, _cache_mass(q, cache, layer, total[1], total[2], impl)


def block_causal_mask(frame_index: jax.Array, chunk_frames: int) -> jax.Array:
  """Visibility [B, 1, N, N] for tokens with frame indices [B, N]: key chunk <= query chunk."""
  chunk = frame_index // chunk_frames
  return (chunk[:, :, None] >= chunk[:, None, :])[:, None]


class _Attention(nnx.Module):
  """Wan2.1 attention projections: q/k/v/o and an RMS norm on q and k over all heads."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dim = cfg.dim
    self.num_heads = cfg.num_heads
    self.impl = cfg.attention_impl
    self.query_chunk = cfg.attention_query_chunk
    self.q = dense(cfg, dim, dim, ('embed', 'heads'), rngs)
    self.k = dense(cfg, dim, dim, ('embed', 'heads'), rngs)
    self.v = dense(cfg, dim, dim, ('embed', 'heads'), rngs)
    self.o = dense(cfg, dim, dim, ('heads', 'embed'), rngs)
    self.norm_q = nnx.RMSNorm(dim, epsilon=cfg.eps, dtype=cfg.compute_dtype, rngs=rngs)
    self.norm_k = nnx.RMSNorm(dim, epsilon=cfg.eps, dtype=cfg.compute_dtype, rngs=rngs)

  def _heads(self, x):
    """[B, N, dim] -> head-major [B, H, N, Dh]."""
    return jnp.swapaxes(x.reshape(*x.shape[:2], self.num_heads, -1), 1, 2)

  def _out(self, out):
    """[B, H, N, Dh] -> projected [B, N, dim]."""
    out = jnp.swapaxes(out, 1, 2)
    return self.o(out.reshape(*out.shape[:2], -1))


class SelfAttention(_Attention):
  """Self-attention over video tokens with 3D RoPE; bidirectional, masked, or with a cache."""

  def qkv(self, x, angles):
    """Projected, normalised, rotated q, k and v [B, H, N, Dh] of tokens x [B, N, dim]."""
    q = apply_rope(self._heads(self.norm_q(self.q(x))), angles)
    k = apply_rope(self._heads(self.norm_k(self.k(x))), angles)
    return q, k, self._heads(self.v(x))

  def __call__(self, x, angles, mask=None, cache=None, layer=None, with_mass=False):
    """Returns (output [B, N, dim], internals): internals holds q, k, v [B, H, N, Dh] of these
    tokens (k rotated, as the cache stores it) and, with `with_mass`, `cache_mass` [B, C], the attention
    each cache slot received.

    cache: None, or a CacheRead whose slots of `layer` are attended to as well.
    """
    q, k, v = self.qkv(x, angles)
    internals = dict(q=q, k=k, v=v)
    if cache is None:
      out = attention(q, k, v, mask, self.impl, self.query_chunk)
    else:
      out, mass = cached_attention(q, k, v, cache, layer, self.impl, with_mass)
      if with_mass:
        internals['cache_mass'] = mass
    return self._out(out), internals


class CrossAttention(_Attention):
  """Cross-attention from video tokens to the conditioning tokens (Wan2.1's text attention)."""

  def kv(self, context):
    """Keys and values [B, H, Lc, Dh] of conditioning tokens [B, Lc, dim]: the same for every
    chunk and pass of a video, so a rollout computes them once (`VideoDiT.cross_kv`)."""
    return self._heads(self.norm_k(self.k(context))), self._heads(self.v(context))

  def __call__(self, x, context):
    """context: conditioning tokens [B, Lc, dim], or their precomputed (k, v) from `kv`."""
    k, v = context if isinstance(context, tuple) else self.kv(context)
    q = self._heads(self.norm_q(self.q(x)))
    return self._out(attention(q, k, v, impl=self.impl, query_chunk=self.query_chunk))
