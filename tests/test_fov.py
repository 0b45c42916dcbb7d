"""fov: the planned camera path's scores, against a loop over frames and pixels."""

import numpy as np
import pytest

from pafukv_jax import rollout, sampling
from pafukv_jax.cache import fov
from tests.helpers import cache_config, make_rollout, tiny_model


def naive_scores(frame_cond, size, patch):
  """Frame by frame: where the camera is, which later frames show each patch centre, and whether
  the view lost it in between."""
  b, t = frame_cond.shape[:2]
  grid = size // patch
  out = np.zeros((b, t, grid * grid))
  for i in range(b):
    pos = np.cumsum(frame_cond[i], axis=0)
    for f in range(t):
      for p in range(grid * grid):
        point = pos[f] + (np.array([p % grid, p // grid]) + 0.5) * patch   # (x, y)
        visible = [bool(np.all((point - pos[s] >= 0) & (point - pos[s] < size)))
                   for s in range(t)]
        lost = False
        for s in range(f + 1, t):
          out[i, f, p] += visible[s] and lost
          lost |= not visible[s]
        out[i, f, p] += fov.RECENCY_TIE_BREAK * f / t
  return out.reshape(b, -1)


def test_scores_match_the_loop_on_random_paths():
  rng = np.random.default_rng(0)
  cond = rng.integers(-9, 10, size=(3, 10, 2)).astype(np.float32)
  cond[:, 0] = 0
  got = np.asarray(fov.fov_scores(cond, (16, 16), 4))
  np.testing.assert_allclose(got, naive_scores(cond, 16, 4), atol=1e-6)
  assert got.max() >= 1   # some paths do come back


def test_a_still_camera_is_a_window_and_a_return_is_kept():
  still = fov.fov_scores(np.zeros((1, 6, 2)), (16, 16), 4).reshape(6, 16)
  assert (still < 1).all() and (np.diff(still[:, 0]) > 0).all()   # recency only
  # out by a whole view at frame 1, back at frame 4: frame 0's tokens are seen again twice
  cond = np.zeros((1, 6, 2), np.float32)
  cond[0, 1], cond[0, 4] = (16, 0), (-16, 0)
  away = fov.fov_scores(cond, (16, 16), 4).reshape(6, 16)
  np.testing.assert_allclose(np.floor(away[:, 0]), [2, 0, 0, 0, 0, 0])


def test_a_fov_cache_keeps_the_frame_the_path_returns_to():
  model = tiny_model()
  rc = sampling.RolloutConfig(num_frames=6, timesteps=(1000,))
  cond = np.zeros((1, 6, 2), np.float32)
  cond[0, 1], cond[0, 4] = (16, 0), (-16, 0)   # frames 1-3 elsewhere, back to frame 0's view
  scores = fov.fov_scores(cond, (16, 16), model.cfg.patch_size)
  runner = make_rollout(model, rc, 'fov', cache_config(budget_frames=2, sink_frames=0))
  out = runner.generate(rollout.inputs(sampling.sample_keys(0, [0]), [1], cond, scores))
  kept = set(np.asarray(out.cache.frame)[0, 0].tolist())
  assert 0 in kept and 5 in kept   # the start view it came back to, and the incoming frame
  with pytest.raises(ValueError, match='token_scores'):
    runner.generate(rollout.inputs(sampling.sample_keys(0, [0]), [1], cond))
