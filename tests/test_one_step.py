"""The one-step check against its definition: the model-free answers in NumPy, t = 0 exact, and a
model that is exactly right."""

import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from pafukv_jax import diffusion
from pafukv_jax.evaluation import one_step
from pafukv_jax.models.dit import DiTConfig, init_model


def _numpy_psnr(a, b):
  """PSNR of the MSE over everything, on the [0, 1] scale."""
  return 10 * np.log10(1.0 / np.mean(((np.asarray(a) - np.asarray(b)) / 2) ** 2))


def _clips():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.uniform(-1, 1, (3, 4, 16, 16, 3)), jnp.float32)


def test_model_free_answers_match_numpy():
  video = _clips()
  model = init_model(DiTConfig.from_config(common.model_config('tiny')), 0)
  r = one_step.one_step_psnr(model, video, jnp.zeros(3, jnp.int32), None, frame=2, levels=(0.5,))
  v = np.asarray(video)
  mean_colour = np.broadcast_to(v[:, 2].mean(axis=(1, 2), keepdims=True), v[:, 2].shape)
  assert math.isclose(r['mean_colour'], _numpy_psnr(mean_colour, v[:, 2]), rel_tol=1e-4)
  assert math.isclose(r['previous_frame'], _numpy_psnr(v[:, 1], v[:, 2]), rel_tol=1e-4)


class Oracle:
  """Predicts the velocity of the true clip: x0 = x_t - t v recovers the truth exactly."""

  def __init__(self, video):
    self.video = video

  def __call__(self, x_t, t, frame_index, label, frame_cond, **kw):
    t = t[..., None, None, None]
    noise = (x_t - (1 - t) * self.video) / jnp.where(t > 0, t, 1.0)
    return diffusion.velocity_target(self.video, noise), {}


def test_a_model_that_knows_the_truth_scores_far_above_the_baselines():
  video = _clips()
  r = one_step.one_step_psnr(Oracle(video), video, None, None, frame=2, levels=(0.5, 1.0))
  assert min(r['own_context'].values()) > 60   # float32-exact up to rounding
  assert r['mean_colour'] < 15


def test_bad_frame():
  model = init_model(DiTConfig.from_config(common.model_config('tiny')), 0)
  with pytest.raises(ValueError, match='frame must be in'):
    one_step.one_step_psnr(model, _clips(), jnp.zeros(3, jnp.int32), None, frame=0)


def test_command_line_errors_before_any_work():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for flag, message in (('--frame=16', '--frame must be in [1, 16)'),
                        ('--config.checkpoint=/nonexistent', 'does not exist')):
    out = subprocess.run([sys.executable, '-m', 'pafukv_jax.evaluation.one_step', flag],
                         cwd=repo, capture_output=True, text=True)
    assert out.returncode != 0 and 'one_step: error: ' in out.stderr and message in out.stderr, \
        out.stderr[-1000:]
