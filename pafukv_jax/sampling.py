"""Sampling pieces shared by every rollout: its config, the noise, the denoising of a chunk.

The noise of chunk n at sampler step k is a function of the sample's key, n and k only, so every
policy and `recompute` denoise from the same noise and their videos can be compared; the
cached rollout itself is in rollout.py. `sample_clip` is the bidirectional teacher's sampler.
"""

import dataclasses

import jax
import jax.numpy as jnp

from pafukv_jax import diffusion


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  num_frames: int                 # frames of the whole video, context included
  chunk_frames: int = 1           # frames generated together (one cache write)
  context_frames: int = 0         # given frames at the start, prefilled into the cache
  timesteps: tuple = (1000, 750, 500, 250)
  shift: float = 5.0
  sampler: str = 'euler'

  def validate(self):
    f = self.chunk_frames
    if f < 1:
      raise ValueError(f'chunk_frames must be >= 1, got {f}.')
    if self.num_frames % f or self.context_frames % f:
      raise ValueError(
          f'num_frames={self.num_frames} and context_frames={self.context_frames} must be '
          f'multiples of chunk_frames={f}.')
    if not 0 <= self.context_frames < self.num_frames:
      raise ValueError(f'context_frames={self.context_frames} must be in [0, num_frames={self.num_frames}).')
    if self.sampler not in diffusion.SAMPLERS:
      raise ValueError(f'Unknown sampler {self.sampler!r}; expected one of {diffusion.SAMPLERS}.')
    diffusion.sampling_schedule(self.timesteps, self.shift)

  @property
  def num_chunks(self) -> int:
    return self.num_frames // self.chunk_frames


# Every sample has its own key [B], so a sample's video does not depend on the batch it is in.
_fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))


def chunk_noise(keys, chunk_index, step, shape):
  """Noise [B, *shape] of chunk n at sampler step k (k = 0: the initial noise).

  The same for every policy and for `recompute`, so their videos can be compared."""
  k = _fold(_fold(_fold(keys, 0), chunk_index), step)
  return jax.vmap(lambda key: jax.random.normal(key, shape))(k)


def chunk_policy_keys(keys, chunk_index):
  """Keys [B] a policy may use when chunk n enters the cache (disjoint from the noise)."""
  return _fold(_fold(keys, 1), chunk_index)


def denoise_chunk(velocity_fn, keys, chunk_index, shape, rc: RolloutConfig):
  """K sampler steps from pure noise; velocity_fn(x, t [B, F]) -> v. Returns the clean chunk."""
  sigmas = diffusion.sampling_schedule(rc.timesteps, rc.shift)
  x = chunk_noise(keys, chunk_index, 0, shape[1:])
  for k in range(sigmas.shape[0]):
    t = jnp.full(shape[:2], sigmas[k])
    t_next = jnp.full(shape[:2], sigmas[k + 1] if k + 1 < sigmas.shape[0] else 0.0)
    fresh = chunk_noise(keys, chunk_index, k + 1, shape[1:])
    x = diffusion.sampler_step(rc.sampler, x, velocity_fn(x, t), t, t_next, fresh)
  return x


def chunk_slice(a, chunk_index, chunk_frames):
  """Frames of chunk n of a [B, T, ...] array (None passes through)."""
  if a is None:
    return None
  return jax.lax.dynamic_slice_in_dim(a, chunk_index * chunk_frames, chunk_frames, axis=1)


def sample_keys(seed: int, sample_ids) -> jax.Array:
  """One PRNG key per sample id: sample i of seed s is the same video in any batch."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(sample_ids, jnp.uint32))


def sample_clip(model, keys, label, frame_cond, num_frames, rc: RolloutConfig):
  """The bidirectional teacher's sampler: all frames of a clip denoised together (no cache)."""
  cfg = model.cfg
  shape = (label.shape[0], num_frames, *cfg.image_size, cfg.channels)
  frames = jnp.arange(num_frames)

  def velocity(x, t):
    return model(x, t, frames, label, frame_cond)[0]

  return denoise_chunk(velocity, keys, 0, shape, rc)
