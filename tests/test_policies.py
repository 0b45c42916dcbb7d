import jax
import jax.numpy as jnp
import numpy as np

from pafukv_jax import sampling
from tests.helpers import cache_config, tiny_model


def _rollout(policy, num_frames, budget, sink, seed=0, model=None):
  """Runs a rollout and returns (model, keys, the cache after every chunk, copied)."""
  model = model or tiny_model()
  rc = sampling.RolloutConfig(num_frames=num_frames, timesteps=(1000, 500))
  sampler = sampling.Sampler(model, rc, policy, cache_config(budget, sink))
  caches = []
  original = sampler._step

  def step(params, cache, *args):
    cache, clean = original(params, cache, *args)
    caches.append(jax.tree.map(jnp.copy, cache))  # the next step donates `cache`
    return cache, clean

  sampler._step = step
  keys = sampling.sample_keys(seed, [0, 1])
  sampler.generate(keys, [1, 2])
  return model, rc, keys, caches


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
    v, mass = model(x, t, frames, label, mode='cached', cache=read, return_cache_mass=True)
    masses.append(mass)
    return v

  clean = sampling.denoise_chunk(velocity, keys, 1, (2, 1, 16, 16, 3), rc)
  _, _, mass = model(clean, jnp.zeros((2, 1)), frames, label, mode='cached', cache=read,
                     return_kv=True, return_cache_mass=True)
  want = (sum(masses) + mass).mean(axis=0)  # [B, C]: summed over passes, mean over layers
  frame0 = np.asarray(after.frame[0]) == 0
  assert frame0.sum() == 2 * 16
  np.testing.assert_allclose(np.asarray(after.score[0])[frame0],
                             np.asarray(want)[np.asarray(before.frame[0]) == 0], rtol=1e-5)
  assert np.all(np.asarray(after.score)[:, np.asarray(after.frame[0]) == 1] == 0)  # new: nothing yet
  # 3 passes (2 denoising + 1 clean) x 16 queries of attention, part of it on the cache
  assert 0 < float(want[0].sum()) < 3 * 16

