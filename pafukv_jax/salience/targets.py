"""Salience targets (SSE) from the bidirectional teacher's attention.

The teacher sees the whole clip, so its attention says which tokens are used by queries of
earlier chunks, of their own chunk, and of later chunks (the future, unknown while generating).
For a key token j and each region x of queries (by chunk, relative to j's chunk):
    s_x[b, j] = mean over heads of max over queries i in region x of P[b, h, i, j]
An empty region (no earlier chunk for the first, no later chunk for the last) scores 0.
Self-attention favours its own chunk, so the target normalises each region over the clip's tokens
and mixes them with config weights, the diagonal down-weighted by default.

The attention is computed over at most `query_chunk` queries at a time (a part of one chunk):
memory grows with N x query_chunk, never N x N.
"""

import math

import jax
import jax.numpy as jnp

from pafukv_jax import diffusion

REGIONS = ('earlier', 'same', 'later')  # query chunk before / equal to / after the key's chunk
NORMALIZATIONS = ('max', 'sum', 'none')


def _rows_per_step(block_tokens: int, query_chunk: int) -> int:
  """The largest divisor of block_tokens that is at most query_chunk (all of it for 0), so
  every step's queries lie in one chunk."""
  if not query_chunk or query_chunk >= block_tokens:
    return block_tokens
  return max(r for r in range(1, query_chunk + 1) if block_tokens % r == 0)


def _over_query_chunks(q, k, block_tokens: int, update, init, query_chunk: int = 1024):
  """fori_loop over the queries of q, k [B, H, N, D], a part of one chunk at a time:
  acc = update(chunk, scaled logits [B, H, rows, N], key chunk ids [N], acc). Memory: the
  logits of `rows` <= query_chunk queries, never N x N (nor chunk x N: a 1.3B-model chunk is
  4,680 tokens, 7 GB of logits against a whole clip)."""
  n, d = q.shape[2], q.shape[3]
  if n % block_tokens:
    raise ValueError(f'{n} tokens are not a whole number of chunks of {block_tokens} tokens.')
  key_block = jnp.arange(n) // block_tokens
  rows = _rows_per_step(block_tokens, query_chunk)

  def body(step, acc):
    queries = jax.lax.dynamic_slice_in_dim(q, step * rows, rows, axis=2)
    logits = jnp.einsum('bhqd,bhkd->bhqk', queries, k, preferred_element_type=jnp.float32)
    return update(step * rows // block_tokens, logits / math.sqrt(d), key_block, acc)

  return jax.lax.fori_loop(0, n // rows, body, init)


def region_salience(q, k, block_tokens: int, query_chunk: int = 1024):
  """The same from queries and keys q, k [B, H, N, D] of one layer, one query chunk at a time."""
  b, h, n, _ = q.shape

  def update(qb, logits, key_block, maxes):
    col_max = jnp.max(jax.nn.softmax(logits, axis=-1), axis=2)  # [B, H, N]: the most any
    region = jnp.where(qb < key_block, 0, jnp.where(qb == key_block, 1, 2))  # query of qb gives j
    hit = region[None, None, None, :] == jnp.arange(3)[:, None, None, None]
    return jnp.where(hit, jnp.maximum(maxes, col_max[None]), maxes)

  maxes = _over_query_chunks(q, k, block_tokens, update, jnp.zeros((3, b, h, n), jnp.float32),
                             query_chunk)
  return maxes.mean(axis=2)


def attention_received(q, k, block_tokens: int, query_chunk: int = 1024):
  """Attention mass [B, N] each key token receives under block-causal attention: the sum over
  the queries that may see it (its own chunk and later ones), mean over heads. What `h2o` would
  have accumulated for it by the end of the clip with an unbounded cache (clean pass only)."""
  b, h, n, _ = q.shape

  def update(qb, logits, key_block, total):
    logits = jnp.where(key_block <= qb, logits, -jnp.inf)
    return total + jnp.sum(jax.nn.softmax(logits, axis=-1), axis=2)

  total = _over_query_chunks(q, k, block_tokens, update, jnp.zeros((b, h, n), jnp.float32),
                             query_chunk)
  return total.mean(axis=1)


def normalize_regions(regions, how: str = 'max', eps: float = 1e-8):
  """Puts the regions [..., 3, B, N] on one scale over each clip's tokens."""
  if how == 'max':
    return regions / (jnp.max(regions, axis=-1, keepdims=True) + eps)
  if how == 'sum':
    return regions / (jnp.sum(regions, axis=-1, keepdims=True) + eps)
  if how == 'none':
    return regions
  raise ValueError(f'Unknown salience normalization {how!r}; expected one of {NORMALIZATIONS}.')


def sse_targets(regions, weights=(1.0, 0.5, 1.0), normalize: str = 'max', per_layer: bool = False):
  """Mixes per-layer regions [L, 3, B, N] into targets [B, N] (or [L, B, N] with per_layer).

  weights: of the (earlier, same, later) regions, after each is normalised over the clip."""
  if len(weights) != 3:
    raise ValueError(f'salience weights must give (earlier, same, later), got {weights!r}.')
  mixed = jnp.einsum('lrbn,r->lbn', normalize_regions(regions, normalize),
                     jnp.asarray(weights, jnp.float32))
  return mixed if per_layer else mixed.mean(axis=0)


def student_targets(received, block_tokens: int, normalize: str = 'max',
                    per_layer: bool = False):
  """The `salience.source='student'` targets: from the per-layer attention received [L, B, N]
  (`attention_received` of the student's block-causal pass), the mean attention a token gets per
  query that may see it (its own chunk and later ones), normalised over the clip; [B, N], or
  [L, B, N] with per_layer. What the student itself uses, rather than what the teacher finds
  salient; dividing by the number of queries keeps early tokens from ranking high merely
  because more queries see them."""
  n = received.shape[-1]
  seen_by = n - (jnp.arange(n) // block_tokens) * block_tokens
  target = normalize_regions(received / seen_by, normalize)
  return target if per_layer else target.mean(axis=0)


def teacher_regions(model, video, label, frame_cond=None, *, block_tokens: int,
                    noise_level: float = 0.0, key=None):
  """Per-layer regions [L, 3, B, N] from the bidirectional teacher on whole clips
  video [B, T, H, W, C]: clean, or noised to `noise_level` with noise from `key`."""
  b, t = video.shape[:2]
  level = jnp.full((b, t), noise_level, jnp.float32)
  if noise_level:
    video = diffusion.add_noise(video, jax.random.normal(key, video.shape), level)
  # inside the layer loop, so that no layer's q and k outlive it
  regions = lambda i: dict(regions=region_salience(i['q'], i['k'], block_tokens,
                                                   model.cfg.attention_query_chunk))
  _, aux = model(video, level, jnp.arange(t), label, frame_cond, mode='bidirectional',
                 collect=('q', 'k'), reduce=regions)
  return aux['regions']
