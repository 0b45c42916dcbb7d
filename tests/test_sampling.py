import jax
import numpy as np
import pytest

from pafukv_jax import rollout, sampling
from pafukv_jax.compile_counter import CompileCounter
from tests.helpers import cache_config, make_rollout, tiny_model


def _generate(model, policy, rc, labels=(1, 4), seed=0, context=None, cache=None):
  runner = make_rollout(model, rc, policy, cache or cache_config(budget_frames=4, sink_frames=1))
  keys = sampling.sample_keys(seed, np.arange(len(labels)))
  return np.asarray(runner.generate(rollout.inputs(keys, list(labels)), context).videos), runner


@pytest.mark.parametrize('chunk,context_frames,sampler_kind', [
    (1, 0, 'euler'), (2, 0, 'renoise'), (1, 2, 'euler'), (2, 2, 'euler')])
def test_full_equals_recompute(chunk, context_frames, sampler_kind):
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=6, chunk_frames=chunk, context_frames=context_frames,
                              timesteps=(1000, 750, 500), sampler=sampler_kind)
  context = None
  if context_frames:
    context = jax.random.uniform(jax.random.key(7), (2, context_frames, 16, 16, 3), minval=-1)
  full, _ = _generate(model, 'full', rc, context=context)
  ref, _ = _generate(model, 'recompute', rc, context=context)
  assert full.shape == (2, 6, 16, 16, 3)
  rel = np.max(np.abs(full - ref)) / np.max(np.abs(ref))
  assert rel <= 1e-4
  if context is not None:
    np.testing.assert_array_equal(full[:, :context_frames], np.asarray(context))


def test_bounded_cache_differs_from_full_once_it_evicts():
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=6, timesteps=(1000, 500))
  full, _ = _generate(model, 'full', rc)
  window, _ = _generate(model, 'window', rc, cache=cache_config(budget_frames=2, sink_frames=0))
  # identical while nothing was evicted (frames 0..2 see all of their past), different after
  np.testing.assert_allclose(window[:, :3], full[:, :3], atol=1e-5)
  assert np.max(np.abs(window[:, 3:] - full[:, 3:])) > 1e-3


def test_sixteen_chunks_compile_the_step_once_and_keep_shapes():
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=16, timesteps=(1000, 500))
  runner = make_rollout(model, rc, 'sink_window', cache_config(budget_frames=4, sink_frames=1))
  shapes = []
  with CompileCounter(rollout.chunk_step_jit) as compiles:
    for seed, labels in ((0, [0, 1]), (1, [2, 3])):  # a second video: no recompile
      inputs = runner.encode(rollout.inputs(sampling.sample_keys(seed, [0, 1]), labels))
      state = runner.init_state(2)
      for _ in range(rc.num_chunks):  # the public step, driven by hand
        shapes.append(jax.tree.map(lambda a: (a.shape, a.dtype), state.cache))
        state, _ = rollout.chunk_step_jit(runner.static, runner.params, state, inputs)
    final = runner.generate(inputs).cache
  assert compiles.count == 1 and compiles.by_name == {'chunk_step': 1}
  assert len(shapes) == 32 and all(s == shapes[0] for s in shapes)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), final) == shapes[0]


def test_same_seed_same_videos_in_any_batch():
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=4, timesteps=(1000, 500), sampler='renoise')
  a, _ = _generate(model, 'window', rc, labels=(1, 4), seed=3)
  b, _ = _generate(model, 'window', rc, labels=(1, 4), seed=3)
  np.testing.assert_array_equal(a, b)
  # sample 1 alone (same id) is the same video as in the batch of two
  runner = make_rollout(model, rc, 'window', cache_config(4, 1))
  alone = np.asarray(runner.generate(rollout.inputs(sampling.sample_keys(3, [1]), [4])).videos)
  np.testing.assert_allclose(alone[0], a[1], atol=1e-5)
  c, _ = _generate(model, 'window', rc, labels=(1, 4), seed=4)
  assert np.max(np.abs(c - a)) > 1e-2


def test_bad_rollout_configs():
  with pytest.raises(ValueError, match='multiples of chunk_frames'):
    sampling.RolloutConfig(num_frames=7, chunk_frames=2).validate()
  with pytest.raises(ValueError, match='multiples of chunk_frames'):
    sampling.RolloutConfig(num_frames=8, chunk_frames=2, context_frames=3).validate()
  with pytest.raises(ValueError, match='Unknown sampler'):
    sampling.RolloutConfig(num_frames=8, sampler='ddim').validate()
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=4, context_frames=2)
  runner = make_rollout(model, rc, 'full', cache_config())
  with pytest.raises(ValueError, match='context must have shape'):
    runner.generate(rollout.inputs(sampling.sample_keys(0, [0]), [0]), None)


@pytest.mark.parametrize('chunk', [1, 2])
def test_full_equals_recompute_with_world_positions(chunk):
  """The cached rollout slices the whole video's camera path chunk by chunk; recompute derives
  it from frame_cond over the whole video: the same positions, the same video."""
  model = tiny_model(frame_cond_dim=2, rope_positions='world')
  rc = sampling.RolloutConfig(num_frames=6, chunk_frames=chunk, context_frames=2,
                              timesteps=(1000, 500))
  context = jax.random.uniform(jax.random.key(7), (2, 2, 16, 16, 3), minval=-1)
  cond = jax.random.randint(jax.random.key(8), (2, 6, 2), -6, 7).astype(np.float32)
  inputs = rollout.inputs(sampling.sample_keys(0, [0, 1]), [1, 4], cond)
  full = make_rollout(model, rc, 'full', cache_config()).generate(inputs, context).videos
  ref = make_rollout(model, rc, 'recompute').generate(inputs, context).videos
  rel = np.max(np.abs(np.asarray(full) - np.asarray(ref))) / np.max(np.abs(np.asarray(ref)))
  assert rel <= 1e-4
