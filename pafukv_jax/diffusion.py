"""Rectified flow: x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0.

Noise levels t live in [0, 1] (0 = clean); the model sees 1000 t, the timestep scale of Wan2.1
and Self-Forcing. A shift s > 1 moves sampling and training toward high noise:
t -> s t / (1 + (s - 1) t), as in SD3 / Wan (Self-Forcing uses s = 5).
"""

import jax
import jax.numpy as jnp

SAMPLERS = ('euler', 'renoise')


def shift_time(t, shift: float):
  return shift * t / (1.0 + (shift - 1.0) * t)


def add_noise(x0, noise, t):
  """x_t for per-frame noise levels t [B, T] and x0, noise [B, T, H, W, C]."""
  t = t[..., None, None, None]
  return (1.0 - t) * x0 + t * noise


def velocity_target(x0, noise):
  return noise - x0


def predict_x0(x_t, velocity, t):
  return x_t - t[..., None, None, None] * velocity


def sample_train_time(key, shape, shift: float = 1.0):
  """Training noise levels: logit-normal (mean 0, std 1), then shifted."""
  return shift_time(jax.nn.sigmoid(jax.random.normal(key, shape)), shift)


def flow_matching_loss(velocity, x0, noise, weights=None):
  """Mean squared velocity error, optionally weighted per frame (weights [B, T])."""
  err = jnp.mean(jnp.square(velocity - velocity_target(x0, noise)), axis=(2, 3, 4))
  if weights is None:
    return jnp.mean(err)
  return jnp.sum(err * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


def sampling_schedule(timesteps, shift: float, num_train_timesteps: int = 1000):
  """Noise levels [K] of a few-step sampler from timesteps on the 0..1000 scale, e.g.
  Self-Forcing's (1000, 750, 500, 250)."""
  t = jnp.asarray(timesteps, jnp.float32) / num_train_timesteps
  if t.ndim != 1 or t.shape[0] == 0:
    raise ValueError(f'sampling timesteps must be a non-empty list, got {timesteps!r}.')
  return shift_time(t, shift)


def sampler_step(kind: str, x_t, velocity, t, t_next, noise):
  """One step from noise level t to t_next (t_next = 0 ends at the clean prediction).

  euler:   the ODE step x + (t_next - t) v.
  renoise: predict x0, then noise it again to t_next with fresh noise (Self-Forcing / CausVid's
           few-step sampler for distilled models).
  """
  if kind == 'euler':
    return x_t + (t_next - t)[..., None, None, None] * velocity
  if kind == 'renoise':
    return add_noise(predict_x0(x_t, velocity, t), noise, t_next)
  raise ValueError(f'Unknown sampler {kind!r}; expected one of {SAMPLERS}.')
