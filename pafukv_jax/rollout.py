"""Autoregressive rollout, Self-Forcing style, with a fixed-size KV cache: pure jitted functions
over a state.

Per chunk of F frames, `chunk_step` runs K denoising passes that read the cache (read-only), then
one clean pass at t = 0 whose keys/values enter the cache through the policy (policies.py):
    clean pass -> the policy's keep scores -> kv_cache.update_cache.
Context frames, if given, are written by `prefill` through the same clean pass, chunk by chunk.
Both are jitted once per `Rollout` configuration with the state donated; the chunk index lives
in the state, traced, so a rollout of any length compiles each once.

`recompute` keeps no cache: for every chunk it runs the block-causal model over a [B, T] video
buffer (finished chunks clean at t = 0, later ones hidden by causality). It is slow and exact:
the cached `full` rollout must match it.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx, struct

from pafukv_jax.cache import kv_cache
from pafukv_jax.cache.policies import get_policy
from pafukv_jax.models.dit import CrossKV
from pafukv_jax.models.rope import camera_path
from pafukv_jax.sampling import RolloutConfig, chunk_policy_keys, chunk_slice, denoise_chunk


@struct.dataclass
class RolloutInputs:
  """What a batch's videos are conditioned on; fixed for the whole rollout."""
  keys: jax.Array                        # [B] PRNG keys, one per sample (sampling.sample_keys)
  cond: jax.Array                        # [B] int32 labels, or [B, L, cond_dim] prompt embeddings
  frame_cond: jax.Array | None = None    # [B, num_frames, D] (ignored by a model without one)
  token_scores: jax.Array | None = None  # the oracle's: [B, T*S] or [L, B, T*S]
  cross_kv: CrossKV | None = None        # cond's cross-attention K/V (Rollout.encode sets it)

  @property
  def context(self):
    """What the model is conditioned on: the precomputed cross-attention K/V where set."""
    return self.cond if self.cross_kv is None else self.cross_kv


@struct.dataclass
class RolloutState:
  cache: kv_cache.KVCache  # the cache; for `recompute`, unused (None)
  video: jax.Array | None  # recompute's [B, T, H, W, C] buffer; None for a cached rollout
  chunk: jax.Array         # int32: the chunk the next call writes


@dataclasses.dataclass
class Generated:
  videos: jax.Array                 # [B, num_frames, H, W, C], the context frames first
  cache: kv_cache.KVCache | None    # the final cache (None for recompute)
  chunk_seconds: list[float]        # wall time of every generated chunk (the first compiles)


@dataclasses.dataclass(frozen=True, eq=False)
class Static:
  """Everything the jitted functions close over; a static argument, so equal rollouts share
  compiles. jit hashes it on every call: the hash is computed once (a model's graphdef takes
  about a millisecond), and a rollout's own Static compares equal by identity first."""
  graphdef: nnx.GraphDef
  head_graphdef: nnx.GraphDef | None
  rc: RolloutConfig
  spec: kv_cache.CacheSpec | None

  def __post_init__(self):
    object.__setattr__(self, '_hash', hash(self._key()))

  def _key(self):
    return self.graphdef, self.head_graphdef, self.rc, self.spec

  def __hash__(self):
    return self._hash

  def __eq__(self, other):
    return self is other or (isinstance(other, Static) and hash(self) == hash(other)
                             and self._key() == other._key())


def chunk_conditioning(static, cfg, inputs, n):
  """Chunk n's frame indices [F], frame_cond [B, F, D] (or None) and, with world positions, the
  camera's position at its frames [B, F, 2], from the whole video's path (else None)."""
  f = static.rc.chunk_frames
  frames = n * f + jnp.arange(f)
  fc = chunk_slice(inputs.frame_cond, n, f)
  camera = (chunk_slice(camera_path(inputs.frame_cond), n, f)
            if cfg.rope_positions == 'world' else None)
  return frames, fc, camera


def write_chunk(static, model, head, cache, clean, n, inputs, masses=()):
  """The clean pass at t = 0 over chunk n, then its K/V enter the cache through the policy."""
  policy, spec, cfg = get_policy(static.spec.policy), static.spec, model.cfg
  b, f = clean.shape[:2]
  frames, fc, camera = chunk_conditioning(static, cfg, inputs, n)
  _, aux = model(clean, jnp.zeros((b, f)), frames, inputs.context, fc, mode='cached',
                 cache=cache.read(cfg.cache_block_size), collect=policy.collect(spec, True),
                 camera=camera, velocity=False)
  if 'cache_mass' in aux:
    masses = [*masses, aux['cache_mass']]
  cache = policy.receive(spec, cache, masses)
  s = cfg.tokens_per_frame
  token_frames = jnp.broadcast_to(jnp.repeat(frames, s), (b, f * s))
  token_index = token_frames * s + jnp.tile(jnp.arange(s), f)[None]
  incoming = policy.incoming_score(spec, aux, token_index, cfg.num_layers, head, inputs.token_scores)
  keep = policy.keep_score(spec, cache, token_frames, incoming, chunk_policy_keys(inputs.keys, n))
  return kv_cache.update_cache(cache, aux['k'], aux['v'], token_frames, incoming, keep,
                               sink_frames=spec.sink_frames, recent_frames=spec.recent_frames)


def merge_modules(static, params):
  model = nnx.merge(static.graphdef, params['model'])
  head = nnx.merge(static.head_graphdef, params['head']) if static.head_graphdef else None
  return model, head


def prefill(static: Static, params, state: RolloutState, context, inputs: RolloutInputs):
  """Writes context chunk `state.chunk` (of context [B, context_frames, ...]) into the cache."""
  model, head = merge_modules(static, params)
  n = state.chunk
  clean = chunk_slice(context, n, static.rc.chunk_frames)
  cache = write_chunk(static, model, head, state.cache, clean, n, inputs)
  return state.replace(cache=cache, chunk=n + 1)


def chunk_step(static: Static, params, state: RolloutState, inputs: RolloutInputs):
  """Generates chunk `state.chunk`: returns (state with it in the cache, clean chunk)."""
  model, head = merge_modules(static, params)
  policy, spec, cfg = get_policy(static.spec.policy), static.spec, model.cfg
  n, f = state.chunk, static.rc.chunk_frames
  frames, fc, camera = chunk_conditioning(static, cfg, inputs, n)
  read = state.cache.read(cfg.cache_block_size)
  collect, masses = policy.collect(spec, False), []

  def velocity(x, t):
    v, aux = model(x, t, frames, inputs.context, fc, mode='cached', cache=read, collect=collect,
                   camera=camera)
    if 'cache_mass' in aux:
      masses.append(aux['cache_mass'])
    return v

  b = inputs.cond.shape[0]
  clean = denoise_chunk(velocity, inputs.keys, n, (b, f, *cfg.image_size, cfg.channels), static.rc)
  cache = write_chunk(static, model, head, state.cache, clean, n, inputs, masses)
  return state.replace(cache=cache, chunk=n + 1), clean


def recompute_step(static: Static, params, state: RolloutState, inputs: RolloutInputs):
  """Generates chunk `state.chunk` by the block-causal model over the whole video buffer, whose
  frames before it are final; returns (state with the chunk in the buffer, clean chunk)."""
  model, _ = merge_modules(static, params)
  video, n = state.video, state.chunk
  f, num_frames = static.rc.chunk_frames, static.rc.num_frames
  b, start = video.shape[0], n * f

  def velocity(x, t):
    # finished frames are clean (t = 0); later ones are zeros that causality hides
    buf = jax.lax.dynamic_update_slice_in_dim(video, x.astype(video.dtype), start, axis=1)
    t_all = jax.lax.dynamic_update_slice_in_dim(jnp.zeros((b, num_frames)), t, start, axis=1)
    v, _ = model(buf, t_all, jnp.arange(num_frames), inputs.context, inputs.frame_cond,
                 mode='block_causal', chunk_frames=f)
    return chunk_slice(v, n, f)

  clean = denoise_chunk(velocity, inputs.keys, n, (b, f, *video.shape[2:]), static.rc)
  video = jax.lax.dynamic_update_slice_in_dim(video, clean, start, axis=1)
  return state.replace(video=video, chunk=n + 1), clean


def encode_condition(static: Static, params, inputs: RolloutInputs) -> RolloutInputs:
  """inputs with the cross-attention K/V of their conditioning, computed once per video (about
  150 GFLOP a forward at Wan2.1-1.3B's 512 prompt tokens) instead of in every pass."""
  model, _ = merge_modules(static, params)
  return inputs.replace(cross_kv=model.cross_kv(inputs.cond))


# Jitted once for all rollouts: `static` is hashed, so equal configurations share one compile.
# Their names are what CompileCounter counts.
prefill_jit = jax.jit(prefill, static_argnums=0, donate_argnums=2)
chunk_step_jit = jax.jit(chunk_step, static_argnums=0, donate_argnums=2)
recompute_step_jit = jax.jit(recompute_step, static_argnums=0, donate_argnums=2)
encode_condition_jit = jax.jit(encode_condition, static_argnums=0)
JITTED = (prefill_jit, chunk_step_jit, recompute_step_jit, encode_condition_jit)


def inputs(keys, cond, frame_cond=None, token_scores=None) -> RolloutInputs:
  """RolloutInputs from arrays or lists: integer labels as int32, prompt embeddings and the rest
  as float32."""
  as_f32 = lambda a: None if a is None else jnp.asarray(a, jnp.float32)
  cond = jnp.asarray(cond)
  cond = cond.astype(jnp.int32 if jnp.issubdtype(cond.dtype, jnp.integer) else jnp.float32)
  return RolloutInputs(keys=keys, cond=cond, frame_cond=as_f32(frame_cond),
                       token_scores=as_f32(token_scores))


def full_cache_spec(rc: RolloutConfig, model_cfg) -> kv_cache.CacheSpec:
  """The `full` policy's cache: the whole video, nothing evicted."""
  return kv_cache.CacheSpec('full', rc.num_frames, model_cfg.tokens_per_frame,
                            num_frames=rc.num_frames)


class Rollout:
  """Generates videos with one cache (spec None: `recompute`); reuse it across batches.

  `generate` drives `prefill` / `chunk_step` (or `recompute_step`) chunk by chunk; the pieces
  are public, so a caller may drive them itself (the tests read the cache after every chunk)."""

  def __init__(self, model: nnx.Module, rc: RolloutConfig, spec: kv_cache.CacheSpec | None,
               head: nnx.Module | None = None):
    """head: the salience head that scores incoming tokens, for a policy with incoming='head'."""
    rc.validate()
    self.rc, self.spec, self.model_cfg = rc, spec, model.cfg
    self.policy = get_policy(spec.policy) if spec is not None else None
    graphdef, model_params = nnx.split(model)
    head_graphdef = head_params = None
    if self.policy is not None and self.policy.incoming == 'head':
      if head is None:
        raise ValueError(f'policy={spec.policy!r} needs a salience head (set the head checkpoint).')
      head_graphdef, head_params = nnx.split(head)
    self.static = Static(graphdef, head_graphdef, rc, spec)
    self.params = dict(model=model_params, head=head_params)

  def init_state(self, batch: int, context=None) -> RolloutState:
    """The state before the first call: an empty cache (or recompute's buffer with the context)."""
    cfg, rc = self.model_cfg, self.rc
    if self.spec is None:
      video = jnp.zeros((batch, rc.num_frames, *cfg.image_size, cfg.channels), jnp.float32)
      if rc.context_frames:
        video = video.at[:, :rc.context_frames].set(context)
      state = RolloutState(cache=None, video=video,
                           chunk=jnp.int32(rc.context_frames // rc.chunk_frames))
    else:
      cache = kv_cache.init_cache(cfg.num_layers, batch, self.spec.capacity, cfg.num_heads,
                                  cfg.head_dim, cfg.compute_dtype)
      state = RolloutState(cache=cache, video=None, chunk=jnp.int32(0))
    return self._commit(state)

  def cache_bytes(self, batch: int) -> int:
    if self.spec is None:
      return 0
    return jax.eval_shape(lambda: self.init_state(batch).cache).nbytes

  def _commit(self, state):
    """Puts the first call's state where the weights are: the steps' outputs are committed to
    that device, and a first call with an uncommitted state would compile the step twice."""
    leaf = jax.tree.leaves(self.params)[0]
    devices = leaf.devices() if isinstance(leaf, jax.Array) else set()  # host arrays: no device
    return jax.device_put(state, next(iter(devices))) if len(devices) == 1 else state

  def encode(self, inputs: RolloutInputs) -> RolloutInputs:
    """inputs with their conditioning's cross-attention K/V (computed once; kept if set). A
    caller driving the steps itself passes these, as `generate` does, so both share compiles."""
    if inputs.cross_kv is not None:
      return inputs
    return encode_condition_jit(self.static, self.params, inputs)

  def check(self, inputs: RolloutInputs, context):
    """Refuses inputs of the wrong shapes for this rollout, naming the shape it wants."""
    rc, cfg = self.rc, self.model_cfg
    b = inputs.cond.shape[0]
    if inputs.keys.shape != (b,):
      raise ValueError(f'keys must be one PRNG key per sample, shape ({b},), got {inputs.keys.shape}.')
    frame_shape = (*cfg.image_size, cfg.channels)
    if rc.context_frames:
      if context is None or context.shape != (b, rc.context_frames, *frame_shape):
        got = None if context is None else context.shape
        raise ValueError(f'context must have shape {(b, rc.context_frames, *frame_shape)}, got {got}.')
    want_cond = (b, rc.num_frames, cfg.frame_cond_dim)
    if cfg.frame_cond_dim and (inputs.frame_cond is None or inputs.frame_cond.shape != want_cond):
      got = None if inputs.frame_cond is None else inputs.frame_cond.shape
      raise ValueError(f'This model has frame_cond_dim > 0: frame_cond must have shape '
                       f'{want_cond}, got {got}.')
    if self.policy is not None and self.policy.incoming == 'table':
      want = (b, rc.num_frames * cfg.tokens_per_frame)
      got = None if inputs.token_scores is None else tuple(inputs.token_scores.shape)
      if got not in (want, (cfg.num_layers, *want)):
        raise ValueError(f'policy={self.policy.name!r} needs token_scores of shape {want} (or '
                         f'{(cfg.num_layers, *want)}, one row per layer), got {got}.')

  def generate(self, inputs: RolloutInputs, context=None, progress=None) -> Generated:
    """Videos of the batch `inputs` (see `inputs()`); context [B, context_frames, H, W, C] or
    None; progress: a callable(n) called after each generated chunk."""
    self.check(inputs, context)
    rc, static = self.rc, self.static
    if rc.context_frames:
      context = jnp.asarray(context, jnp.float32)
    state = self.init_state(inputs.cond.shape[0], context)
    inputs = self.encode(inputs)
    first = rc.context_frames // rc.chunk_frames
    if self.spec is not None:
      for _ in range(first):
        state = prefill_jit(static, self.params, state, context, inputs)
    step = chunk_step_jit if self.spec is not None else recompute_step_jit
    chunks, seconds = ([context] if rc.context_frames else []), []
    for _ in range(first, rc.num_chunks):
      start = time.perf_counter()
      state, clean = step(static, self.params, state, inputs)
      clean.block_until_ready()
      seconds.append(time.perf_counter() - start)
      chunks.append(clean)
      if progress is not None:
        progress(1)
    return Generated(jnp.concatenate(chunks, axis=1), state.cache, seconds)

