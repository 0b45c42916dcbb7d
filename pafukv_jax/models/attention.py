"""Attention for the video DiT: Wan2.1-style self- and cross-attention modules and the kernels.

Three ways the self-attention sees keys (one module serves all three):
  * bidirectional: every token sees every token (the teacher);
  * block-causal: a token sees the tokens of its own chunk and of earlier chunks (the student
    in training, and the `recompute` reference rollout);
  * cached: the current chunk sees itself plus the valid slots of a KV cache (generation).
The cached path never concatenates cache and chunk: both parts are attended separately and
merged with their softmax statistics, so the cache is read in place.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pafukv_jax.models.rope import apply_rope

_NEG_INF = -jnp.inf


def dense(cfg, din, dout, axes, rngs, init=nnx.initializers.lecun_normal()):
  """Linear layer with logical axis names on its kernel and bias."""
  return nnx.Linear(
      din, dout, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
      kernel_init=nnx.with_partitioning(init, axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), axes[-1:]),
      rngs=rngs)


def _partial_attention(q, k, v, mask):
  """Unnormalised softmax attention over one group of keys.

  q [B, Nq, H, D], k/v [B, Nk, H, D], mask broadcastable to [B, H, Nq, Nk] or None.
  Returns (out [B, Nq, H, D] unnormalised, row max [B, H, Nq], row sum [B, H, Nq]).
  A row with no visible key has max -inf and sum 0.
  """
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
  logits = logits / math.sqrt(q.shape[-1])
  if mask is not None:
    logits = jnp.where(mask, logits, _NEG_INF)
  row_max = jnp.max(logits, axis=-1)
  safe_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  p = jnp.exp(logits - safe_max[..., None])
  out = jnp.einsum('bhqk,bkhd->bqhd', p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out, row_max, jnp.sum(p, axis=-1)


def _merge(parts):
  """Combines [(out, max, sum), ...] of disjoint key groups into normalised attention."""
  row_max = parts[0][1]
  for _, m, _ in parts[1:]:
    row_max = jnp.maximum(row_max, m)
  out, total = 0.0, 0.0
  for o, m, s in parts:
    alpha = jnp.where(jnp.isfinite(m), jnp.exp(m - row_max), 0.0)  # [B, H, Nq]
    out = out + o * jnp.swapaxes(alpha, 1, 2)[..., None]
    total = total + s * alpha
  return out / jnp.swapaxes(total, 1, 2)[..., None]


def attention(q, k, v, mask=None):
  """Softmax attention of q over (k, v) with an optional boolean visibility mask."""
  return _merge([_partial_attention(q, k, v, mask)]).astype(q.dtype)


def cached_attention(q, k, v, cache_k, cache_v, cache_valid):
  """The chunk (q, k, v) attends to itself and to the valid cache slots.

  cache_k/cache_v [B, C, H, D]; cache_valid [B, C] bool.
  """
  own = _partial_attention(q, k, v, None)
  cached = _partial_attention(q, cache_k, cache_v, cache_valid[:, None, None, :])
  return _merge([own, cached]).astype(q.dtype)


def block_causal_mask(frame_index: jax.Array, chunk_frames: int) -> jax.Array:
  """Visibility [B, 1, N, N] for tokens with frame indices [B, N]: key chunk <= query chunk."""
  chunk = frame_index // chunk_frames
  return (chunk[:, :, None] >= chunk[:, None, :])[:, None]


class _Attention(nnx.Module):
  """Wan2.1 attention projections: q/k/v/o and an RMS norm on q and k over all heads."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dim = cfg.dim
    self.num_heads = cfg.num_heads
    self.q = dense(cfg, dim, dim, ('embed', 'heads'), rngs)
    self.k = dense(cfg, dim, dim, ('embed', 'heads'), rngs)
    self.v = dense(cfg, dim, dim, ('embed', 'heads'), rngs)
    self.o = dense(cfg, dim, dim, ('heads', 'embed'), rngs)
    self.norm_q = nnx.RMSNorm(dim, epsilon=cfg.eps, dtype=cfg.compute_dtype, rngs=rngs)
    self.norm_k = nnx.RMSNorm(dim, epsilon=cfg.eps, dtype=cfg.compute_dtype, rngs=rngs)

  def _heads(self, x):
    return x.reshape(*x.shape[:2], self.num_heads, -1)

  def _out(self, out):
    return self.o(out.reshape(*out.shape[:2], -1))


class SelfAttention(_Attention):
  """Self-attention over video tokens with 3D RoPE; bidirectional, masked, or with a cache."""

  def qkv(self, x, angles):
    """Projected, normalised, rotated q, k and v [B, N, H, Dh] of tokens x [B, N, dim]."""
    q = apply_rope(self._heads(self.norm_q(self.q(x))), angles)
    k = apply_rope(self._heads(self.norm_k(self.k(x))), angles)
    return q, k, self._heads(self.v(x))

  def __call__(self, x, angles, mask=None, cache_kv=None):
    """Returns (output [B, N, dim], (k, v) of these tokens, as the cache stores them).

    cache_kv: None, or (k [B, C, H, Dh], v [B, C, H, Dh], valid [B, C]) to attend to as well.
    """
    q, k, v = self.qkv(x, angles)
    if cache_kv is None:
      out = attention(q, k, v, mask)
    else:
      out = cached_attention(q, k, v, *cache_kv)
    return self._out(out), (k, v)


class CrossAttention(_Attention):
  """Cross-attention from video tokens to the conditioning tokens (Wan2.1's text attention)."""

  def __call__(self, x, context):
    q = self._heads(self.norm_q(self.q(x)))
    k = self._heads(self.norm_k(self.k(context)))
    return self._out(attention(q, k, self._heads(self.v(context))))
