"""Autoregressive rollout, Self-Forcing style, with a fixed-size KV cache.

Per chunk of F frames: K denoising passes read the cache (read-only), then one pass over the
clean chunk at t = 0 writes its keys/values into the cache through the policy's update. Context
frames, if given, are prefilled through the same clean pass, chunk by chunk. The chunk step is
one jitted function with the cache donated; the chunk index is traced, so a rollout of any
length compiles it once.

`recompute` keeps no cache: for every chunk it runs the block-causal model over a [B, T] video
buffer (finished chunks clean at t = 0, later ones masked out by causality). It is slow and
exact: the cached `full` rollout must match it.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx

from pafukv_jax import diffusion
from pafukv_jax.cache import kv_cache
from pafukv_jax.cache.policies import RECOMPUTE, attention_weight, frame_mean, get_policy
from pafukv_jax.models.salience import TableScorer


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


def _chunk_slice(a, chunk_index, chunk_frames):
  """Frames of chunk n of a [B, T, ...] array (None passes through)."""
  if a is None:
    return None
  return jax.lax.dynamic_slice_in_dim(a, chunk_index * chunk_frames, chunk_frames, axis=1)


def sample_keys(seed: int, sample_ids) -> jax.Array:
  """One PRNG key per sample id: sample i of seed s is the same video in any batch."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(sample_ids, jnp.uint32))


class Sampler:
  """Generates videos with one policy; holds the jitted steps, so reuse it across batches."""

  def __init__(self, model: nnx.Module, rollout: RolloutConfig, policy: str, cache_config=None,
               head: nnx.Module | None = None):
    """head: the salience head that scores incoming tokens, for policy='pafu'."""
    rollout.validate()
    self.rc = rollout
    self.model_cfg = model.cfg
    self.graphdef, self.params = nnx.split(model)
    if policy == RECOMPUTE:
      self.policy, self.spec = None, None
      self._step = jax.jit(self._recompute_step, donate_argnums=(1,))
    else:
      self.policy = get_policy(policy)
      self.spec = kv_cache.CacheSpec.from_config(
          self.policy, cache_config, num_frames=rollout.num_frames,
          chunk_frames=rollout.chunk_frames, tokens_per_frame=model.cfg.tokens_per_frame)
      self.weight = attention_weight(self.policy, cache_config)
      self.scorer_graphdef = self.scorer_state = None
      if self.policy.scorer == 'head':
        if head is None:
          raise ValueError(f"policy={policy!r} needs a salience head (set the head checkpoint).")
        self.scorer_graphdef, self.scorer_state = nnx.split(head)
      elif self.policy.scorer == 'table':
        self.scorer_graphdef = nnx.graphdef(TableScorer(jnp.zeros((1, 1))))
      self._step = jax.jit(self._cached_step, donate_argnums=(1,))
      self._prefill = jax.jit(self._prefill_step, donate_argnums=(1,))
    self.chunk_seconds: list[float] = []

  # -- cache ----------------------------------------------------------------------------------

  def init_cache(self, batch: int) -> kv_cache.KVCache:
    cfg = self.model_cfg
    return kv_cache.init_cache(cfg.num_layers, batch, self.spec.capacity, cfg.num_heads,
                               cfg.head_dim, cfg.compute_dtype)

  def cache_bytes(self, batch: int) -> int:
    if self.spec is None:
      return 0
    return jax.eval_shape(lambda: self.init_cache(batch)).nbytes

  def _read(self, cache):
    return cache.read(self.model_cfg.cache_block_size)

  @property
  def _tracks_attention(self):
    return self.weight > 0

  def _receive(self, cache, masses):
    """Adds the attention the slots received in these passes, times the policy's weight, to
    their carried score: averaged over layers (one selection shared by all layers), or each
    layer's own with cache.per_layer."""
    if not masses:
      return cache
    received = sum(masses)  # [L, B, C]
    if not self.spec.per_layer:
      received = jnp.mean(received, axis=0, keepdims=True)
    return cache.replace(score=cache.score + self.weight * received)

  def _write(self, model, cache, clean, frames, label, frame_cond, keys, scorer_state, masses=()):
    """Clean pass at t = 0 over a chunk; its K/V enter the cache through the policy."""
    b, f = clean.shape[:2]
    track, scored = self._tracks_attention, bool(self.policy.scorer)
    out = model(clean, jnp.zeros((b, f)), frames, label, frame_cond, mode='cached',
                cache=self._read(cache), return_kv=True, return_cache_mass=track,
                return_hidden=scored)
    k, v = out[1]
    cache = self._receive(cache, [*masses, out[2]] if track else [])
    s = self.model_cfg.tokens_per_frame
    token_frames = jnp.broadcast_to(jnp.repeat(frames, s), (b, f * s))
    incoming = jnp.zeros((b, f * s))
    if scored:  # pafu / oracle: the head's (or the table's) score of every incoming token
      token_index = token_frames * s + jnp.tile(jnp.arange(s), f)[None]
      scorer = nnx.merge(self.scorer_graphdef, scorer_state)
      incoming = scorer(out[-1], token_index).astype(jnp.float32)  # [B, N] or per layer [L, B, N]
      if incoming.ndim == 3 and not self.spec.per_layer:
        incoming = incoming.mean(axis=0)  # a per-layer head, one shared selection
    new_score = jnp.broadcast_to((1.0 - self.weight) * incoming, (k.shape[0], b, f * s))
    all_frames = jnp.concatenate(
        [cache.frame, jnp.broadcast_to(token_frames, new_score.shape)], axis=-1)
    all_scores = jnp.concatenate([cache.score, new_score], axis=-1)
    score_fn = (self.policy.per_layer_score if self.spec.per_layer else None) or self.policy.score
    keep = score_fn(all_frames, all_scores, keys)
    if self.spec.granularity == 'frame':
      keep = frame_mean(keep, all_frames, self.rc.num_frames)
    return kv_cache.update_cache(cache, k, v, token_frames, new_score, keep,
                                 sink_frames=self.spec.sink_frames,
                                 recent_frames=self.spec.recent_frames)

  def _prefill_step(self, params, cache, chunk_index, context, label, frame_cond, keys,
                    scorer_state):
    model = nnx.merge(self.graphdef, params)
    f = self.rc.chunk_frames
    frames = chunk_index * f + jnp.arange(f)
    clean = _chunk_slice(context, chunk_index, f)
    fc = _chunk_slice(frame_cond, chunk_index, f)
    return self._write(model, cache, clean, frames, label, fc, chunk_policy_keys(keys, chunk_index),
                       scorer_state)

  def _cached_step(self, params, cache, chunk_index, label, frame_cond, keys, scorer_state):
    model = nnx.merge(self.graphdef, params)
    f = self.rc.chunk_frames
    frames = chunk_index * f + jnp.arange(f)
    fc = _chunk_slice(frame_cond, chunk_index, f)
    b = label.shape[0]
    shape = (b, f, *self.model_cfg.image_size, self.model_cfg.channels)
    read = self._read(cache)
    needs, masses = self._tracks_attention, []

    def velocity(x, t):
      out = model(x, t, frames, label, fc, mode='cached', cache=read, return_cache_mass=needs)
      if not needs:
        return out
      masses.append(out[1])
      return out[0]

    clean = denoise_chunk(velocity, keys, chunk_index, shape, self.rc)
    cache = self._write(model, cache, clean, frames, label, fc,
                        chunk_policy_keys(keys, chunk_index), scorer_state, masses)
    return cache, clean

  # -- recompute ------------------------------------------------------------------------------

  def _recompute_step(self, params, video, chunk_index, label, frame_cond, keys, scorer_state):
    """video [B, T, ...]: frames before chunk n are final; returns it with chunk n filled."""
    model = nnx.merge(self.graphdef, params)
    f, num_frames = self.rc.chunk_frames, self.rc.num_frames
    b = video.shape[0]
    all_frames = jnp.arange(num_frames)
    start = chunk_index * f

    def velocity(x, t):
      # finished frames are clean (t = 0); later ones are zeros that causality hides
      buf = jax.lax.dynamic_update_slice_in_dim(video, x.astype(video.dtype), start, axis=1)
      t_all = jax.lax.dynamic_update_slice_in_dim(jnp.zeros((b, num_frames)), t, start, axis=1)
      v = model(buf, t_all, all_frames, label, frame_cond, mode='block_causal', chunk_frames=f)
      return _chunk_slice(v, chunk_index, f)

    shape = (b, f, *video.shape[2:])
    clean = denoise_chunk(velocity, keys, chunk_index, shape, self.rc)
    return jax.lax.dynamic_update_slice_in_dim(video, clean, start, axis=1), clean

  # -- driver ---------------------------------------------------------------------------------

  def _commit(self, state):
    """Puts the first step's state where the weights are: the steps' outputs are committed to
    that device, and a first call with an uncommitted state would compile the step twice."""
    leaf = jax.tree.leaves(self.params)[0]
    devices = leaf.devices() if isinstance(leaf, jax.Array) else set()  # host arrays: no device
    return jax.device_put(state, next(iter(devices))) if len(devices) == 1 else state

  def generate(self, keys, label, context=None, frame_cond=None, progress=None,
               token_scores=None) -> jax.Array:
    """Returns videos [B, num_frames, H, W, C] (the context frames first, as given).

    keys: [B] PRNG keys, one per sample (see `sample_keys`); label [B] int;
    context: [B, context_frames, H, W, C] or None; frame_cond: [B, num_frames, frame_cond_dim]
    or None; progress: a callable(n) called after each chunk; token_scores: [B, num_frames *
    tokens_per_frame] (or [L, B, ...] per layer) scores of every token, for policy='oracle'.
    Wall time of each generated chunk (blocked until ready) goes to `self.chunk_seconds`.
    """
    rc, cfg = self.rc, self.model_cfg
    label = jnp.asarray(label, jnp.int32)
    b = label.shape[0]
    if keys.shape != (b,):
      raise ValueError(f'keys must be one PRNG key per sample, shape ({b},), got {keys.shape}.')
    frame_shape = (*cfg.image_size, cfg.channels)
    if rc.context_frames:
      if context is None or context.shape != (b, rc.context_frames, *frame_shape):
        got = None if context is None else context.shape
        raise ValueError(f'context must have shape {(b, rc.context_frames, *frame_shape)}, got {got}.')
      context = jnp.asarray(context, jnp.float32)
    if (frame_cond is None) != (cfg.frame_cond_dim == 0):
      raise ValueError(f'frame_cond [B, {rc.num_frames}, {cfg.frame_cond_dim}] is required exactly '
                       'when model.frame_cond_dim > 0.')
    scorer_state = self.scorer_state if self.spec is not None else None
    if self.policy is not None and self.policy.scorer == 'table':
      want = (b, rc.num_frames * cfg.tokens_per_frame)
      got = None if token_scores is None else tuple(token_scores.shape)
      if got not in (want, (cfg.num_layers, *want)):
        raise ValueError(f'policy={self.policy.name!r} needs token_scores of shape {want} (or '
                         f'{(cfg.num_layers, *want)}, one row per layer), got {got}.')
      scorer_state = nnx.state(TableScorer(token_scores))
    first = rc.context_frames // rc.chunk_frames
    self.chunk_seconds = []
    if self.spec is None:
      state = jnp.zeros((b, rc.num_frames, *frame_shape), jnp.float32)
      if rc.context_frames:
        state = state.at[:, :rc.context_frames].set(context)
      state = self._commit(state)
    else:
      state = self._commit(self.init_cache(b))
      for n in range(first):
        state = self._prefill(self.params, state, jnp.int32(n), context, label, frame_cond, keys,
                              scorer_state)
    chunks = [context] if rc.context_frames else []
    for n in range(first, rc.num_chunks):
      start = time.perf_counter()
      state, clean = self._step(self.params, state, jnp.int32(n), label, frame_cond, keys,
                                scorer_state)
      clean.block_until_ready()
      self.chunk_seconds.append(time.perf_counter() - start)
      chunks.append(clean)
      if progress is not None:
        progress(1)
    self.final_state = state
    return jnp.concatenate(chunks, axis=1)


def sample_clip(model, keys, label, frame_cond, num_frames, rc: RolloutConfig):
  """The bidirectional teacher's sampler: all frames of a clip denoised together (no cache)."""
  cfg = model.cfg
  shape = (label.shape[0], num_frames, *cfg.image_size, cfg.channels)
  frames = jnp.arange(num_frames)

  def velocity(x, t):
    return model(x, t, frames, label, frame_cond if cfg.frame_cond_dim else None)

  return denoise_chunk(velocity, keys, 0, shape, rc)
