"""Revisit consistency: revisited pixels against the video's own earlier frame at the same scene
point, against a brute-force search and on videos whose answer is known."""

import numpy as np

from pafukv_jax.data.revisit import revisit_mask
from pafukv_jax.evaluation import video_metrics


def _scene(seed=0, t_len=14, h=4, w=5):
  rng = np.random.default_rng(seed)
  camera = np.cumsum(rng.integers(-2, 3, (t_len, 2)), axis=0).astype(np.float64)
  camera[:, 0] += 3 * np.sin(np.arange(t_len))  # wander and come back
  camera = np.round(camera).astype(np.int64)
  low = camera.min(0)
  rows, cols = np.mgrid[:h, :w]
  scene_w = camera[:, 0].max() - low[0] + w
  ids = (camera[:, 1, None, None] - low[1] + rows) * scene_w + camera[:, 0, None, None] - low[0] + cols
  return camera, ids, revisit_mask(ids, horizon=2)


def _brute_force(camera, ids, mask):
  t_len, h, w = ids.shape
  out = np.full(ids.shape, -1)
  for t, y, x in zip(*np.nonzero(mask)):
    p = ids[t, y, x]
    visible = [p in ids[s] for s in range(t_len)]
    b = t
    while b > 0 and visible[b - 1]:
      b -= 1  # the start of its current run
    out[t, y, x] = max(s for s in range(b) if visible[s])
  return out


def test_references_match_a_brute_force_search():
  for seed in range(4):
    camera, ids, mask = _scene(seed)
    assert mask.any()
    np.testing.assert_array_equal(video_metrics.revisit_references(camera, mask),
                                  _brute_force(camera, ids, mask))


def test_a_consistent_video_scores_inf_and_a_changed_return_scores_its_error():
  camera, ids, mask = _scene(1)
  scene = np.random.default_rng(0).uniform(-1, 1, (ids.max() + 1, 3))
  video = scene[ids]  # a static scene through the camera: every return matches
  assert video_metrics.revisit_consistency(video, camera, mask) == np.inf
  changed = video.copy()
  t = np.nonzero(mask.any(axis=(1, 2)))[0][-1]  # the last frame with revisited pixels
  changed[t] += 0.1  # it shows them 0.1 off (its other pixels are not scored)
  mse = 0.01
  got = video_metrics.revisit_consistency(changed, camera, mask, frames=[t])
  np.testing.assert_allclose(got, 10 * np.log10(4 / mse), rtol=1e-9)
  assert np.isnan(video_metrics.revisit_consistency(video, camera, np.zeros_like(mask)))


def test_score_run_scores_photo_pan_rollouts_by_their_own_earlier_frames(tmp_path):
  from configs import data as data_config
  from pafukv_jax.data import sources
  from pafukv_jax.evaluation import scores
  cfg = data_config.get_config('tiny,photo_pan')
  cfg.data_dir = str(tmp_path)
  cfg.num_frames, cfg.trajectories = 16, 'out_and_back,waypoints'
  clips = sources.first_clips(cfg, 'test', 6)
  assert sources.static_scene(cfg) and clips['revisit_mask'][:, 4:].any()
  truth = clips['video']
  exact = scores.score_run(truth, truth, clips, 4, static_scene=True)['revisit_consistency']
  assert all(c is None for c in exact)  # the true frames repeat the photograph exactly: inf
  noisy = truth + np.random.default_rng(0).normal(0, 0.1, truth.shape).astype(np.float32)
  got = scores.score_run(noisy, truth, clips, 4, static_scene=True)['revisit_consistency']
  has = clips['revisit_mask'][:, 4:].any(axis=(1, 2, 3))
  assert [g is not None for g in got] == has.tolist()
  # two independent noises of sd 0.1: MSE 0.02, PSNR 10 log10(4 / 0.02) = 23 dB
  np.testing.assert_allclose([g for g in got if g is not None], 23.0, atol=0.6)
  none = scores.score_run(noisy, truth, clips, 4)['revisit_consistency']
  assert none is None  # not asked for (occluded_objects, teacher-forced predictions)
