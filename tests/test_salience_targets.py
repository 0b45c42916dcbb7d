import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pafukv_jax.salience import targets as salience_targets
from pafukv_jax.salience.targets import region_salience, sse_targets


def region_salience_from_probs(probs, block_tokens: int):
  """The naive reference, on a full attention matrix P [B, H, N, N] (rows: queries): [3, B, N]."""
  n = probs.shape[-1]
  block = jnp.arange(n) // block_tokens
  query_block, key_block = block[:, None], block[None, :]
  masks = (query_block < key_block, query_block == key_block, query_block > key_block)
  out = [jnp.max(jnp.where(m, probs, 0.0), axis=2).mean(axis=1) for m in masks]
  return jnp.stack(out)


def test_hand_built_attention():
  # 4 tokens in 2 chunks of 2; rows are queries. Head 0 and head 1 differ.
  p0 = np.array([[.7, .1, .1, .1],
                 [.2, .2, .5, .1],
                 [.6, .1, .2, .1],
                 [.1, .3, .1, .5]])
  p1 = np.array([[.4, .4, .1, .1],
                 [.1, .1, .1, .7],
                 [.1, .1, .4, .4],
                 [.2, .2, .2, .4]])
  got = np.asarray(region_salience_from_probs(jnp.asarray(np.stack([p0, p1])[None]), 2))[:, 0]
  mean = lambda a, b: (a + b) / 2
  # key 0 (chunk 0): same = queries 0-1, later = queries 2-3, earlier = none
  # key 2 (chunk 1): earlier = queries 0-1, same = queries 2-3, later = none
  want_earlier = [0, 0, mean(.5, .1), mean(.1, .7)]
  want_same = [mean(.7, .4), mean(.2, .4), mean(.2, .4), mean(.5, .4)]
  want_later = [mean(.6, .2), mean(.3, .2), 0, 0]
  np.testing.assert_allclose(got, [want_earlier, want_same, want_later], atol=1e-7)


@pytest.mark.parametrize('block,query_chunk', [(1, 1024), (3, 1024), (4, 1024), (12, 1024),
                                               (12, 5), (12, 1), (4, 3)])
def test_blockwise_equals_the_full_matrix(block, query_chunk):
  """Whole chunks of queries at a time, and parts of chunks (query_chunk < block)."""
  rng = np.random.default_rng(block)
  q, k = (jnp.asarray(rng.normal(size=(2, 3, 12, 8)), jnp.float32) for _ in range(2))
  probs = jax.nn.softmax(jnp.einsum('bhqd,bhkd->bhqk', q, k) / math.sqrt(8), axis=-1)
  np.testing.assert_allclose(region_salience(q, k, block, query_chunk),
                             region_salience_from_probs(probs, block), atol=1e-6)
  if query_chunk < block:  # the received mass too, against the whole chunks
    np.testing.assert_allclose(salience_targets.attention_received(q, k, block, query_chunk),
                               salience_targets.attention_received(q, k, block, 0), atol=1e-6)


def test_targets_normalise_then_mix():
  regions = jnp.asarray(np.array([[[[1., 2., 4.]], [[10., 10., 20.]], [[0., 3., 1.]]]]))  # [1,3,1,3]
  got = np.asarray(sse_targets(regions, weights=(1.0, 0.5, 2.0), normalize='max'))
  want = np.array([1, 2, 4]) / 4 + 0.5 * np.array([10, 10, 20]) / 20 + 2 * np.array([0, 3, 1]) / 3
  np.testing.assert_allclose(got[0], want, rtol=1e-6)
  per_layer = sse_targets(jnp.concatenate([regions, 2 * regions]), per_layer=True)
  assert per_layer.shape == (2, 1, 3)
  np.testing.assert_allclose(per_layer[0], per_layer[1], rtol=1e-6)  # max-normalised: scale-free
  with pytest.raises(ValueError, match='normalization'):
    sse_targets(regions, normalize='zscore')


def test_teacher_regions_per_layer():
  from tests.helpers import tiny_model
  model = tiny_model()
  video = jax.random.uniform(jax.random.key(0), (2, 4, 16, 16, 3), minval=-1)
  label = jnp.array([1, 2])
  got = salience_targets.teacher_regions(model, video, label, block_tokens=32)  # chunks of 2 frames
  _, aux = model(video, jnp.zeros((2, 4)), jnp.arange(4), label, collect=('q', 'k'))
  q, k = aux['q'], aux['k']
  _, aux2 = model(video, jnp.zeros((2, 4)), jnp.arange(4), label, collect=('k', 'v'))
  k2 = aux2['k']
  np.testing.assert_array_equal(k, k2)  # the keys the cache would store
  assert got.shape == (2, 3, 2, 64)
  for layer in range(2):
    probs = jax.nn.softmax(jnp.einsum('bhqd,bhkd->bhqk', q[layer], k[layer]) / math.sqrt(16), -1)
    np.testing.assert_allclose(got[layer], region_salience_from_probs(probs, 32), atol=1e-6)
  noisy = salience_targets.teacher_regions(model, video, label, block_tokens=32, noise_level=0.3,
                                           key=jax.random.key(1))
  assert float(jnp.max(jnp.abs(noisy - got))) > 1e-4


@pytest.mark.parametrize('block', [4, 8])
def test_attention_received_equals_the_block_causal_matrix(block):
  b, h, n, d = 2, 3, 16, 8
  q, k = jax.random.normal(jax.random.key(1), (2, b, h, n, d))
  logits = np.einsum('bhqd,bhkd->bhqk', q, k) / math.sqrt(d)
  chunk = np.arange(n) // block
  logits = np.where(chunk[None, :] <= chunk[:, None], logits, -np.inf)  # keys of chunks <= query's
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(salience_targets.attention_received(q, k, block),
                             probs.sum(axis=2).mean(axis=1), rtol=1e-5, atol=1e-6)


def test_student_targets_are_attention_per_seeing_query():
  L, b, h, n, d, block = 2, 2, 3, 16, 8, 4
  q, k = jax.random.normal(jax.random.key(2), (2, L, b, h, n, d))
  chunk = np.arange(n) // block
  per_layer = []
  for layer in range(L):
    logits = np.einsum('bhqd,bhkd->bhqk', q[layer], k[layer]) / math.sqrt(d)
    logits = np.where(chunk[None, :] <= chunk[:, None], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    seeing = (chunk[:, None] >= chunk[None, :]).sum(axis=0)  # queries that may see each key
    mean = probs.sum(axis=2).mean(axis=1) / seeing
    per_layer.append(mean / mean.max(axis=-1, keepdims=True))
  received = jax.vmap(lambda q, k: salience_targets.attention_received(q, k, block))(q, k)
  got = salience_targets.student_targets(received, block, 'max', per_layer=True)
  np.testing.assert_allclose(got, np.stack(per_layer), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(salience_targets.student_targets(received, block),
                             np.mean(per_layer, axis=0), rtol=1e-5, atol=1e-6)
