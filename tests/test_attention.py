import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pafukv_jax.cache import kv_cache
from pafukv_jax.models import attention as attention_lib
from pafukv_jax.models.attention import attention, block_causal_mask, cached_attention


def naive_attention(q, k, v, mask):
  """numpy reference: q [B, H, Nq, D], k/v [B, H, Nk, D], mask [B, Nq, Nk]."""
  logits = np.einsum('bhqd,bhkd->bhqk', q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[:, None], logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum('bhqk,bhkd->bhqd', p, v)


def _cache(rng, layers, b, c, h, d, filled):
  """A cache whose first `filled[l, b]` slots are valid (slots fill from 0 upward)."""
  k, v = (rng.normal(size=(layers, b, h, c, d)).astype(np.float32) for _ in range(2))
  frame = np.where(np.arange(c) < filled[..., None], 0, -1).astype(np.int32)
  cache = kv_cache.KVCache(jnp.asarray(k), jnp.asarray(v), jnp.asarray(frame),
                           jnp.zeros(frame.shape, jnp.float32))
  return cache, k, v, frame >= 0


@pytest.mark.parametrize('impl,block_size', [
    ('blockwise', 8), ('blockwise', 7), ('blockwise', 64), ('masked', 8), ('xla', 8),
    ('auto', 8)])
def test_cached_attention_equals_masked_concatenation(impl, block_size):
  rng = np.random.default_rng(0)
  layers, b, n, c, h, d = 2, 2, 4, 20, 2, 8
  q, k, v = (rng.normal(size=(b, h, n, d)).astype(np.float32) for _ in range(3))
  filled = np.array([[13, 0], [20, 5]])  # an empty cache attends to the chunk only
  cache, ck, cv, valid = _cache(rng, layers, b, c, h, d, filled)
  read = cache.read(block_size)
  assert int(read.num_blocks) == -(-20 // min(block_size, c))
  for layer in range(layers):
    got, _ = cached_attention(*map(jnp.asarray, (q, k, v)), read, layer, impl)
    mask = np.concatenate([np.broadcast_to(valid[layer][:, None], (b, n, c)),
                           np.ones((b, n, n), bool)], -1)
    want = naive_attention(q, np.concatenate([ck[layer], k], 2),
                           np.concatenate([cv[layer], v], 2), mask)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


@pytest.mark.parametrize('impl,block_size', [('blockwise', 8), ('blockwise', 7), ('masked', 8)])
def test_cache_mass_is_the_attention_each_slot_receives(impl, block_size):
  rng = np.random.default_rng(1)
  b, n, c, h, d = 2, 3, 16, 2, 4
  q, k, v = (rng.normal(size=(b, h, n, d)).astype(np.float32) for _ in range(3))
  cache, ck, _, valid = _cache(rng, 1, b, c, h, d, np.array([[9, 16]]))
  _, mass = cached_attention(*map(jnp.asarray, (q, k, v)), cache.read(block_size), 0, impl,
                             with_mass=True)
  keys = np.concatenate([ck[0], k], 2)
  logits = np.einsum('bhqd,bhkd->bhqk', q, keys) / np.sqrt(d)
  mask = np.concatenate([valid[0], np.ones((b, n), bool)], -1)[:, None, None]
  logits = np.where(mask, logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want = p[..., :c].sum(axis=2).mean(axis=1)  # sum over queries, mean over heads
  np.testing.assert_allclose(np.asarray(mass), want, atol=1e-5)
  assert np.all(np.asarray(mass)[~valid[0]] == 0)


def test_auto_attention_is_masked_off_the_cpu_for_small_logits_only():
  limit = attention_lib.AUTO_MASKED_MAX_LOGITS
  resolve = attention_lib.resolve_impl
  assert resolve('auto', 64, 8192, 'cpu') == 'blockwise'
  assert resolve('auto', 64, limit // 64, 'gpu') == 'masked'
  assert resolve('auto', 64, limit // 64 + 1, 'gpu') == 'blockwise'
  assert resolve('auto', 4680, 32760, 'tpu') == 'blockwise'   # a 1.3B chunk over a long cache
  assert resolve('masked', 64, 1 << 30, 'cpu') == 'masked'     # an explicit choice stands
  assert resolve('auto', 64, 512) == ('blockwise' if jax.default_backend() == 'cpu' else 'masked')


def test_masked_attention_matches_reference():
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(size=(1, 2, 6, 8)).astype(np.float32) for _ in range(3))
  frames = jnp.array([[0, 0, 1, 1, 2, 2]])
  mask = block_causal_mask(frames, chunk_frames=2)
  want = naive_attention(q, k, v, np.asarray(mask)[:, 0])
  for impl in ('blockwise', 'xla'):
    got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, impl)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_block_causal_mask_by_chunk():
  frames = jnp.array([[0, 1, 2, 3]])
  m = np.asarray(block_causal_mask(frames, chunk_frames=2))[0, 0]
  want = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(m, want)


@pytest.mark.parametrize('chunk', [1, 3, 4, 7])
@pytest.mark.parametrize('masked', [False, True])
def test_query_chunked_attention_equals_dense(chunk, masked):
  """Chunks that divide the queries and chunks that leave a padded last one; a per-row mask
  (block-causal) and none; values and gradients against the numpy reference / the dense path."""
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 2, 10, 8)).astype(np.float32)) for _ in range(3))
  frames = jnp.broadcast_to(jnp.arange(10) // 2, (2, 10))
  mask = block_causal_mask(frames, chunk_frames=2) if masked else None
  want = naive_attention(*map(np.asarray, (q, k, v)),
                         np.asarray(mask)[:, 0] if masked else np.ones((2, 10, 10), bool))
  got = attention(q, k, v, mask, 'blockwise', query_chunk=chunk)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  loss = lambda chunk: lambda *a: jnp.sum(jnp.sin(attention(*a, mask, 'blockwise', query_chunk=chunk)))
  for g, w in zip(jax.grad(loss(chunk), (0, 1, 2))(q, k, v), jax.grad(loss(0), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_query_chunked_attention_keeps_no_full_logits():
  """The compiled chunked pass holds no [B, H, Nq, Nk] buffer: its temporaries stay well below
  one full logits array, while the dense masked pass's exceed it. (Unmasked, XLA fuses the dense
  pass's softmax into the matmuls on CPU, so the masked pass is the reference.)"""
  q = k = v = jax.ShapeDtypeStruct((1, 2, 2048, 16), jnp.float32)
  keys = jax.ShapeDtypeStruct((1, 1, 1, 2048), jnp.bool_)  # a visibility mask per key
  full_logits = 2 * 2048 * 2048 * 4
  temp = lambda chunk, *mask: jax.jit(
      lambda q, k, v, *m: attention(q, k, v, *m, query_chunk=chunk)).lower(
          q, k, v, *mask).compile().memory_analysis().temp_size_in_bytes
  assert temp(0, keys) >= full_logits
  assert temp(256, keys) < full_logits / 2  # about three chunks of logits and probabilities
  assert temp(256) < full_logits / 3
