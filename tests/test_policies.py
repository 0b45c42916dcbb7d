import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pafukv_jax import rollout, sampling
from tests.helpers import cache_config, caches_per_chunk, make_rollout, tiny_model


def _rollout(policy, num_frames, budget, sink, seed=0, model=None):
  """Runs a rollout and returns (model, keys, the cache after every chunk, copied)."""
  model = model or tiny_model()
  rc = sampling.RolloutConfig(num_frames=num_frames, timesteps=(1000, 500))
  runner = make_rollout(model, rc, policy, cache_config(budget, sink))
  keys = sampling.sample_keys(seed, [0, 1])
  return model, rc, keys, caches_per_chunk(runner, rollout.inputs(keys, [1, 2]))


def test_random_keeps_sink_and_incoming_and_differs_by_seed():
  kept = []
  for seed in (0, 1):
    _, _, _, caches = _rollout('random', num_frames=8, budget=4, sink=1, seed=seed)
    for n, cache in enumerate(caches):
      frames = np.asarray(cache.frame)
      assert np.all((frames >= 0).sum(-1) == min(n + 1, 4) * 16)  # always full once filled
      assert np.all((frames == n).sum(-1) == 16)  # the incoming frame, every token
      assert np.all((frames == 0).sum(-1) == 16)  # the sink
      assert np.all(frames[0] == frames[1])  # one selection shared by the layers
    kept.append(np.sort(np.asarray(caches[-1].frame[0]), axis=-1))
  assert not np.array_equal(kept[0], kept[1])


def test_h2o_scores_are_the_attention_received():
  model, rc, keys, caches = _rollout('h2o', num_frames=2, budget=2, sink=0)
  before, after = caches
  # replay chunk 1's passes with the public model API, collecting the attention mass
  frames, label, masses = jnp.array([1]), jnp.array([1, 2]), []
  read = before.read(model.cfg.cache_block_size)

  def velocity(x, t):
    v, aux = model(x, t, frames, label, mode='cached', cache=read, collect=('cache_mass',))
    masses.append(aux['cache_mass'])
    return v

  clean = sampling.denoise_chunk(velocity, keys, 1, (2, 1, 16, 16, 3), rc)
  _, aux = model(clean, jnp.zeros((2, 1)), frames, label, mode='cached', cache=read,
                 collect=('k', 'v', 'cache_mass'))
  mass = aux['cache_mass']
  want = (sum(masses) + mass).mean(axis=0)  # [B, C]: summed over passes, mean over layers
  frame0 = np.asarray(after.frame[0]) == 0
  assert frame0.sum() == 2 * 16
  np.testing.assert_allclose(np.asarray(after.score[0])[frame0],
                             np.asarray(want)[np.asarray(before.frame[0]) == 0], rtol=1e-5)
  assert np.all(np.asarray(after.score)[:, np.asarray(after.frame[0]) == 1] == 0)  # new: nothing yet
  # 3 passes (2 denoising + 1 clean) x 16 queries of attention, part of it on the cache
  assert 0 < float(want[0].sum()) < 3 * 16



class TableHead(nnx.Module):
  """A 'head' that looks each token's score up by its absolute index in a table [B, T*S]."""

  def __init__(self, table):
    self.table = nnx.Variable(jnp.asarray(table, jnp.float32))

  def __call__(self, hidden, token_index):
    return jnp.take_along_axis(self.table[...], token_index, axis=-1)


def test_pafu_with_the_oracle_scores_as_its_head_reproduces_oracle():
  from pafukv_jax.salience.head import SalienceHead
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=6, timesteps=(1000, 500))
  keys, labels = sampling.sample_keys(0, [0, 1]), [1, 2]
  table = jax.random.normal(jax.random.key(3), (2, 6 * 16))
  runs = {}
  for name, policy, kwargs, head in [('oracle', 'oracle', dict(token_scores=table), None),
                                     ('pafu', 'pafu', {}, TableHead(table))]:
    out = make_rollout(model, rc, policy, cache_config(3, 1), head=head).generate(
        rollout.inputs(keys, labels, **kwargs))
    runs[name] = (np.asarray(out.videos), out.cache)
  np.testing.assert_array_equal(runs['pafu'][0], runs['oracle'][0])
  np.testing.assert_array_equal(runs['pafu'][1].frame, runs['oracle'][1].frame)
  # static scores: the unprotected slots hold the 16 best-scored tokens of frames 1-4, with their
  # table scores (sink frame 0 and the newest frame 5 are protected)
  frames, scores = np.asarray(runs['oracle'][1].frame[0]), np.asarray(runs['oracle'][1].score[0])
  for b in range(2):
    unprotected = (frames[b] > 0) & (frames[b] < 5)
    best = np.sort(np.asarray(table[b, 16:5 * 16]))[-16:]
    np.testing.assert_allclose(np.sort(scores[b][unprotected]), best, rtol=1e-6)
  # a learned head runs on the same path, and pafu_mix adds the attention received
  head = SalienceHead(model.cfg.dim, 8, rngs=nnx.Rngs(0))
  mix_config = cache_config(3, 1)
  mix_config.pafu_mix = 0.5
  mixed = make_rollout(model, rc, 'pafu', mix_config, head=head)
  assert mixed.policy.attention_weight(mixed.spec) == 0.5
  assert np.isfinite(np.asarray(mixed.generate(rollout.inputs(keys, labels)).videos)).all()
  with pytest.raises(ValueError, match='needs a salience head'):
    make_rollout(model, rc, 'pafu', cache_config(3, 1))
  with pytest.raises(ValueError, match='needs token_scores'):
    make_rollout(model, rc, 'oracle', cache_config(3, 1)).generate(rollout.inputs(keys, labels))


def _oracle_cache(table, **options):
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=6, timesteps=(1000,))
  cfg = cache_config(3, 1)
  cfg.update(options)
  state = make_rollout(model, rc, 'oracle', cfg).generate(
      rollout.inputs(sampling.sample_keys(0, [0, 1]), [1, 2], token_scores=table)).cache
  return np.asarray(state.frame), np.asarray(state.score)


def test_frame_granularity_keeps_whole_frames_with_the_best_mean_score():
  s = 16  # tokens per frame of the tiny model
  table = np.asarray(jax.random.normal(jax.random.key(5), (2, 6 * s)))
  frames, _ = _oracle_cache(table, granularity='frame')
  for b in range(2):
    kept = sorted(set(frames[0, b].tolist()))
    # naive reference: sink frame 0 and the newest frame 5 stay; of frames 1-4, the one with the
    # best mean score survives the successive evictions only if it beat each frame it met, so
    # replay the rollout frame by frame on mean scores
    means = table[b].reshape(6, s).mean(axis=1)
    cached = [0]
    for new in range(1, 6):
      cached.append(new)
      if len(cached) > 3:  # capacity 3 frames: evict the lowest mean among frames 1..new-1
        cached.remove(min((f for f in cached if 0 < f < new), key=lambda f: means[f]))
    assert kept == sorted(cached)
    for layer in range(frames.shape[0]):  # whole frames: every kept frame has all its tokens
      counts = np.bincount(frames[layer, b][frames[layer, b] >= 0])
      assert set(counts[counts > 0].tolist()) == {s}
  # token granularity with the same scores splits frames: some frame keeps only part of its tokens
  token_frames, _ = _oracle_cache(table)
  counts = [np.bincount(row[row >= 0]) for row in token_frames[0]]
  assert any(((c > 0) & (c < s)).any() for c in counts)


def test_per_layer_selection_keeps_each_layers_own_top_tokens():
  s, num_layers = 16, tiny_model().cfg.num_layers
  table = np.asarray(jax.random.normal(jax.random.key(6), (num_layers, 2, 6 * s)))
  frames, scores = _oracle_cache(table, per_layer=True)
  for layer in range(num_layers):
    for b in range(2):
      unprotected = (frames[layer, b] > 0) & (frames[layer, b] < 5)
      best = np.sort(table[layer, b, s:5 * s])[-s:]  # static scores: the 16 best of frames 1-4
      np.testing.assert_allclose(np.sort(scores[layer, b][unprotected]), best, rtol=1e-6)
  assert not np.array_equal(frames[0], frames[1])
  # without per_layer, a per-layer table is averaged into one selection shared by the layers
  shared, _ = _oracle_cache(table)
  np.testing.assert_array_equal(shared[0], shared[1])


def test_readme_policy_example():
  """The README's "Adding a policy" block, run as written: the cache keeps the sink, the oldest
  frames and the incoming one; generation accepts the new name."""
  import os
  import re
  from pafukv_jax.cache import policies
  readme = open(os.path.join(os.path.dirname(__file__), '..', 'README.md')).read()
  section = readme[readme.index('### Adding a policy'):]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  try:
    exec(code, {})
    assert 'oldest' in policies.rollout_policies()
    model = tiny_model()
    rc = sampling.RolloutConfig(num_frames=6, timesteps=(1000,))
    runner = make_rollout(model, rc, 'oldest', cache_config(3, 0))
    caches = caches_per_chunk(runner, rollout.inputs(sampling.sample_keys(0, [0]), [1]))
    kept = sorted(set(np.asarray(caches[-1].frame[0, 0]).tolist()))
    assert kept == [0, 1, 5]  # the two oldest frames and the incoming one (protected)
    with pytest.raises(ValueError, match='exists already'):
      exec(code, {})
  finally:
    policies.POLICIES.pop('oldest', None)
