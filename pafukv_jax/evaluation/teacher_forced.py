"""Teacher-forced evaluation: each policy's cache built from the true frames, the next chunk
predicted from it.

The video analogue of perplexity under a compressed KV cache. The context and every chunk before
n are the *ground-truth* frames, written into the cache through the same clean pass and the same
policy as in a rollout (`rollout.write_chunk`); then chunk n is noised to level t, with one
fixed noise (the rollout's initial noise of chunk n, so every policy gets the same), and the
student predicts its clean frames in one pass over the cache. A free rollout drifts, and its
drift swamps what the policy does; here every policy sees the same inputs at every chunk, so
what differs is only what its cache kept. At t = 1 the prediction is the model's mean guess of
the next chunk from the cache alone.
"""

import time

import jax
import jax.numpy as jnp

from pafukv_jax import diffusion, rollout
from pafukv_jax.cache.policies import get_policy
from pafukv_jax.sampling import chunk_noise, chunk_slice


def teacher_forced_step(static: rollout.Static, params, state: rollout.RolloutState, video,
                        inputs: rollout.RolloutInputs, t):
  """Predicts chunk `state.chunk` of the true `video` [B, T, H, W, C] from noise level t (a
  scalar in (0, 1]) over the cache, then writes the true chunk into it. Returns (state, the
  clean-frame prediction [B, F, H, W, C])."""
  model, head = rollout.merge_modules(static, params)
  policy, spec, cfg = get_policy(static.spec.policy), static.spec, model.cfg
  n, f = state.chunk, static.rc.chunk_frames
  frames, fc, camera = rollout.chunk_conditioning(static, cfg, inputs, n)
  true = chunk_slice(video, n, f)
  level = jnp.full(true.shape[:2], t, jnp.float32)
  x_t = diffusion.add_noise(true, chunk_noise(inputs.keys, n, 0, true.shape[1:]), level)
  v, aux = model(x_t, level, frames, inputs.context, fc, mode='cached',
                 cache=state.cache.read(cfg.cache_block_size),
                 collect=policy.collect(spec, False), camera=camera)
  masses = [aux['cache_mass']] if 'cache_mass' in aux else []  # h2o: what this pass attended
  cache = rollout.write_chunk(static, model, head, state.cache, true, n, inputs, masses)
  return state.replace(cache=cache, chunk=n + 1), diffusion.predict_x0(x_t, v, level)


teacher_forced_step_jit = jax.jit(teacher_forced_step, static_argnums=0, donate_argnums=2)


def predict(runner: rollout.Rollout, inputs: rollout.RolloutInputs, video,
            noise_level: float) -> rollout.Generated:
  """Teacher-forced predictions of a batch of true videos [B, num_frames, H, W, C]: `videos` holds
  the context frames (true) and then every later chunk's prediction from the true frames before
  it; `chunk_seconds` times each predicted chunk (the first compiles)."""
  rc = runner.rc
  if runner.spec is None:
    raise ValueError("teacher-forced evaluation needs a cache policy; 'recompute' has no cache "
                     "(its teacher-forced score is `full`'s).")
  if not 0.0 < noise_level <= 1.0:
    raise ValueError(f'noise_level must be in (0, 1] (1: from pure noise), got {noise_level}.')
  video = jnp.asarray(video, jnp.float32)
  want = (inputs.cond.shape[0], rc.num_frames, *runner.model_cfg.image_size,
          runner.model_cfg.channels)
  if video.shape != want:
    raise ValueError(f'video must be the whole true clips, shape {want}, got {video.shape}.')
  context = video[:, :rc.context_frames]
  runner.check(inputs, context if rc.context_frames else None)
  state, inputs = runner.init_state(want[0]), runner.encode(inputs)
  first = rc.context_frames // rc.chunk_frames
  for _ in range(first):
    state = rollout.prefill_jit(runner.static, runner.params, state, video, inputs)
  chunks, seconds = ([context] if rc.context_frames else []), []
  t = jnp.float32(noise_level)
  for _ in range(first, rc.num_chunks):
    start = time.perf_counter()
    state, prediction = teacher_forced_step_jit(runner.static, runner.params, state, video,
                                                inputs, t)
    prediction.block_until_ready()
    seconds.append(time.perf_counter() - start)
    chunks.append(prediction)
  return rollout.Generated(jnp.concatenate(chunks, axis=1), state.cache, seconds)
