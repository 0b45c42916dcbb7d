import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pafukv_jax import rollout, sampling
from pafukv_jax.cache import kv_cache
from pafukv_jax.cache.policies import get_policy
from tests.helpers import cache_config, caches_per_chunk, make_rollout, tiny_model

L, B, C, N, H, D = 2, 3, 8, 3, 1, 2


def _tokens(ids, frames, scores):
  """Incoming tokens whose k/v encode their id, so slots can be traced after the update."""
  ids = jnp.asarray(ids, jnp.float32)  # [L, B, N]
  k = jnp.broadcast_to(ids[:, :, None, :, None], (*ids.shape[:2], H, ids.shape[2], D))
  return k, -k, jnp.asarray(frames), jnp.asarray(scores)


def _naive_keep(cand_ids, cand_frames, cand_keep, sink, recent, newest):
  """Reference: sort the candidates and keep the best C (protected first)."""
  order = sorted(range(len(cand_ids)), key=lambda i: (
      cand_frames[i] < sink or cand_frames[i] > newest - recent, cand_keep[i]), reverse=True)
  return {cand_ids[i] for i in order[:C]}


@pytest.mark.parametrize('sink,recent', [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_update_keeps_top_c_and_moves_slots_together(sink, recent):
  rng = np.random.default_rng(sink * 2 + recent)
  cache = kv_cache.init_cache(L, B, C, H, D)
  contents = [[dict() for _ in range(B)] for _ in range(L)]  # id -> (frame, score)
  next_id = 1
  for step in range(6):
    ids = next_id + np.arange(L * B * N).reshape(L, B, N)
    next_id += ids.size
    frame_new = np.full((B, N), step)
    score_new = rng.normal(size=(L, B, N)).astype(np.float32)
    keep = rng.permutation(L * B * (C + N)).reshape(L, B, C + N).astype(np.float32)
    k, v, frames, scores = _tokens(ids, frame_new, score_new)
    old = jax.device_get(cache)
    cache = kv_cache.update_cache(cache, k, v, frames, scores, jnp.asarray(keep),
                                  sink_frames=sink, recent_frames=recent)
    got = jax.device_get(cache)
    for l in range(L):
      for b in range(B):
        cand_ids = [int(x) if f >= 0 else -1 for x, f in zip(old.k[l, b, 0, :, 0], old.frame[l, b])]
        cand_ids += list(ids[l, b])
        cand_frames = list(old.frame[l, b]) + list(frame_new[b])
        valid = [i for i in range(C + N) if cand_frames[i] >= 0]
        want = _naive_keep([cand_ids[i] for i in valid], [cand_frames[i] for i in valid],
                           [keep[l, b, i] for i in valid], sink, recent, step)
        live = got.frame[l, b] >= 0
        held = {int(x) for x in got.k[l, b, 0, live, 0]}
        assert held == want
        # k, v, frame and score of each token stay together
        np.testing.assert_array_equal(got.v[l, b], -got.k[l, b])
        for slot in np.flatnonzero(live):
          tok = int(got.k[l, b, 0, slot, 0])
          if tok in ids[l, b]:
            contents[l][b][tok] = (step, float(score_new[l, b, list(ids[l, b]).index(tok)]))
          assert (got.frame[l, b, slot], got.score[l, b, slot]) == pytest.approx(contents[l][b][tok])


def test_update_writes_into_freed_slots_only():
  """Slots of surviving tokens are not moved: no compaction."""
  cache = kv_cache.init_cache(1, 1, 4, H, D)
  k, v, f, s = _tokens(np.array([[[1, 2]]]), np.array([[0, 0]]), np.zeros((1, 1, 2)))
  recency = lambda c, fn: jnp.concatenate([c.frame, jnp.broadcast_to(fn, (1, 1, 2))], -1)
  cache = kv_cache.update_cache(cache, k, v, f, s, recency(cache, f).astype(jnp.float32))
  k, v, f, s = _tokens(np.array([[[3, 4]]]), np.array([[1, 1]]), np.zeros((1, 1, 2)))
  cache = kv_cache.update_cache(cache, k, v, f, s, recency(cache, f).astype(jnp.float32))
  before = np.asarray(cache.k[0, 0, 0, :, 0]).copy()
  k, v, f, s = _tokens(np.array([[[5, 6]]]), np.array([[2, 2]]), np.zeros((1, 1, 2)))
  cache = kv_cache.update_cache(cache, k, v, f, s, recency(cache, f).astype(jnp.float32))
  after = np.asarray(cache.k[0, 0, 0, :, 0])
  evicted = before <= 2  # frame 0's tokens
  np.testing.assert_array_equal(after[~evicted], before[~evicted])
  assert sorted(after[evicted]) == [5, 6]


def _final_frames(policy, budget, sink, chunk, num_frames=8):
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=num_frames, chunk_frames=chunk, timesteps=(1000, 500))
  runner = make_rollout(model, rc, policy, cache_config(budget, sink))
  inputs = rollout.inputs(sampling.sample_keys(0, [0]), [1])
  seen = [np.asarray(cache.frame) for cache in caches_per_chunk(runner, inputs)]
  return seen, model.cfg.tokens_per_frame


@pytest.mark.parametrize('chunk', [1, 2])
def test_window_keeps_the_most_recent_frames(chunk):
  seen, s = _final_frames('window', budget=4, sink=1, chunk=chunk)
  for n, frames in enumerate(seen):
    newest = (n + 1) * chunk - 1
    want = [f for f in range(newest - 3, newest + 1) if f >= 0]
    for layer_frames in frames.reshape(-1, frames.shape[-1]):
      got = layer_frames[layer_frames >= 0]
      assert sorted(set(got)) == want and len(got) == len(want) * s


@pytest.mark.parametrize('chunk', [1, 2])
def test_sink_window_keeps_sink_and_most_recent(chunk):
  seen, s = _final_frames('sink_window', budget=5, sink=2, chunk=chunk)
  for n, frames in enumerate(seen):
    newest = (n + 1) * chunk - 1
    want = sorted({0, 1} & set(range(newest + 1)) | set(range(max(newest - 2, 0), newest + 1)))
    for layer_frames in frames.reshape(-1, frames.shape[-1]):
      got = layer_frames[layer_frames >= 0]
      assert sorted(set(got)) == want and len(got) == len(want) * s


@pytest.mark.parametrize('policy,budget,sink,recent,match', [
    ('window', 1, 0, 0, 'smaller than one chunk'),
    ('sink_window', 2, 1, 0, 'cannot hold cache.sink_frames=1'),
    ('sink_window', 4, 1, 4, 'cannot hold'),
    ('sink_window', 4, 0, 0, 'needs cache.sink_frames >= 1'),
])
def test_impossible_budgets(policy, budget, sink, recent, match):
  with pytest.raises(ValueError, match=match):
    kv_cache.CacheSpec.from_config(get_policy(policy), cache_config(budget, sink, recent),
                                   num_frames=16, chunk_frames=2, tokens_per_frame=4)


def test_capacity():
  spec = kv_cache.CacheSpec.from_config(get_policy('full'), cache_config(2, 1), num_frames=16,
                                        chunk_frames=2, tokens_per_frame=4)
  assert spec.capacity == 64 and spec.sink_frames == 0
  spec = kv_cache.CacheSpec.from_config(get_policy('window'), cache_config(4, 1), num_frames=16,
                                        chunk_frames=2, tokens_per_frame=4)
  assert spec.capacity == 16 and spec.sink_frames == 0
  with pytest.raises(ValueError, match='Unknown policy'):
    get_policy('lru')
