"""Teacher-forced evaluation: the cached predictions against the model run on the true frames."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pafukv_jax import rollout, sampling
from pafukv_jax.compile_counter import CompileCounter
from pafukv_jax.evaluation import teacher_forced
from tests.helpers import cache_config, make_rollout, tiny_model

B, T = 2, 6


def true_video(seed=7):
  return jax.random.uniform(jax.random.key(seed), (B, T, 16, 16, 3), minval=-1)


def reference(model, video, inputs, n, f, level, kept, mode):
  """The prediction of chunk n by a whole-video pass: the frames `kept` true and clean (t = 0),
  then chunk n noised to `level` with the rollout's noise of chunk n."""
  true = video[:, n * f:(n + 1) * f]
  x_t = (1 - level) * true + level * sampling.chunk_noise(inputs.keys, n, 0, true.shape[1:])
  frames = np.concatenate([np.asarray(kept, int), n * f + np.arange(f)])
  buf = jnp.concatenate([video[:, np.asarray(kept, int)], x_t], axis=1)
  t = jnp.concatenate([jnp.zeros((B, len(kept))), jnp.full((B, f), level)], axis=1)
  v, _ = model(buf, t, jnp.asarray(frames), inputs.cond, mode=mode, chunk_frames=f)
  return np.asarray(x_t - level * v[:, -f:])


def close(a, b):
  return np.max(np.abs(a - b)) / np.max(np.abs(b)) <= 1e-4


@pytest.mark.parametrize('chunk,level', [(1, 1.0), (2, 0.5)])
def test_full_predicts_what_the_block_causal_model_predicts_from_the_true_past(chunk, level):
  """`full`: every chunk's cached K/V saw only the true past, as in the block-causal model over
  the true frames before chunk n and chunk n noised."""
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=T, chunk_frames=chunk, context_frames=2)
  video = true_video()
  inputs = rollout.inputs(sampling.sample_keys(0, [0, 1]), [1, 4])
  out = teacher_forced.predict(make_rollout(model, rc, 'full', cache_config()), inputs, video,
                               level)
  got = np.asarray(out.videos)
  np.testing.assert_array_equal(got[:, :2], np.asarray(video[:, :2]))
  for n in range(2 // chunk, T // chunk):
    want = reference(model, video, inputs, n, chunk, level, range(n * chunk), 'block_causal')
    assert close(got[:, n * chunk:(n + 1) * chunk], want), n


def test_window_predicts_from_the_last_frames_only():
  """A one-layer model: a cached frame's K/V depend on that frame alone, so a window of 2 frames
  predicts chunk n as the model run on the true frames n-2, n-1 and chunk n, and differs from
  `full` once frames were evicted."""
  model = tiny_model(num_layers=1)
  rc = sampling.RolloutConfig(num_frames=T, context_frames=1)
  video, level = true_video(), 1.0
  inputs = rollout.inputs(sampling.sample_keys(0, [0, 1]), [1, 4])
  window = make_rollout(model, rc, 'window', cache_config(budget_frames=2, sink_frames=0))
  got = np.asarray(teacher_forced.predict(window, inputs, video, level).videos)
  for n in range(1, T):
    want = reference(model, video, inputs, n, 1, level, range(max(0, n - 2), n), 'bidirectional')
    assert close(got[:, n:n + 1], want), n
  full = teacher_forced.predict(make_rollout(model, rc, 'full', cache_config()), inputs, video,
                                level).videos
  np.testing.assert_allclose(got[:, :3], np.asarray(full[:, :3]), atol=1e-5)  # nothing evicted
  assert np.max(np.abs(got[:, 3:] - np.asarray(full[:, 3:]))) > 1e-3


def test_predictions_compile_once_for_any_video_and_noise_level():
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=T, context_frames=2)
  runner = make_rollout(model, rc, 'h2o', cache_config(budget_frames=3, sink_frames=1))
  with CompileCounter(teacher_forced.teacher_forced_step_jit) as compiles:
    for seed, level in ((0, 1.0), (1, 0.5)):
      inputs = rollout.inputs(sampling.sample_keys(seed, [0, 1]), [2, 3])
      out = teacher_forced.predict(runner, inputs, true_video(seed), level)
  assert compiles.by_name == {'teacher_forced_step': 1}
  assert out.videos.shape == (B, T, 16, 16, 3) and len(out.chunk_seconds) == T - 2


def test_bad_teacher_forced_inputs_are_refused_before_any_work():
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=T, context_frames=2)
  inputs = rollout.inputs(sampling.sample_keys(0, [0, 1]), [1, 4])
  full = make_rollout(model, rc, 'full', cache_config())
  with pytest.raises(ValueError, match='noise_level must be in'):
    teacher_forced.predict(full, inputs, true_video(), 0.0)
  with pytest.raises(ValueError, match='whole true clips'):
    teacher_forced.predict(full, inputs, true_video()[:, :4], 1.0)
  with pytest.raises(ValueError, match='needs a cache policy'):
    teacher_forced.predict(make_rollout(model, rc, 'recompute'), inputs, true_video(), 1.0)
