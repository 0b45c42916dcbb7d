import jax
import jax.numpy as jnp
import numpy as np

from pafukv_jax.models.attention import attention, block_causal_mask, cached_attention


def naive_attention(q, k, v, mask):
  """numpy reference: q [B, Nq, H, D], k/v [B, Nk, H, D], mask [B, Nq, Nk]."""
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[:, None], logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', p, v)


def test_cached_attention_equals_masked_concatenation():
  rng = np.random.default_rng(0)
  b, n, c, h, d = 2, 4, 10, 2, 8
  q, k, v = (rng.normal(size=(b, n, h, d)).astype(np.float32) for _ in range(3))
  ck, cv = (rng.normal(size=(b, c, h, d)).astype(np.float32) for _ in range(2))
  valid = rng.random((b, c)) < 0.6
  valid[1] = False  # an empty cache attends to the chunk only
  got = cached_attention(*map(jnp.asarray, (q, k, v, ck, cv, valid)))
  mask = np.concatenate([np.broadcast_to(valid[:, None], (b, n, c)), np.ones((b, n, n), bool)], -1)
  want = naive_attention(q, np.concatenate([ck, k], 1), np.concatenate([cv, v], 1), mask)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_masked_attention_matches_reference():
  rng = np.random.default_rng(1)
  q, k, v = (rng.normal(size=(1, 6, 2, 8)).astype(np.float32) for _ in range(3))
  frames = jnp.array([[0, 0, 1, 1, 2, 2]])
  mask = block_causal_mask(frames, chunk_frames=2)
  got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
  want = naive_attention(q, k, v, np.asarray(mask)[:, 0])
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_block_causal_mask_by_chunk():
  frames = jnp.array([[0, 1, 2, 3]])
  m = np.asarray(block_causal_mask(frames, chunk_frames=2))[0, 0]
  want = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(m, want)
