"""VideoDiT: a Wan2.1-style diffusion transformer over videos [B, T, H, W, C].

Per block (as in Wan2.1, the base of Self-Forcing, LongLive and PaFu-KV): adaLN-modulated
self-attention with 3D RoPE and RMS QK-norm, cross-attention to conditioning tokens, and a GELU
feed-forward; a per-block modulation table [6, dim] is added to the projected timestep
embedding. The timestep is per frame, so every frame of a chunk or of a clip can carry its own
noise level, and RoPE takes each token's absolute frame index. Parameter names follow Wan2.1's
(`patch_embedding`, `text_embedding`, `time_embedding`, `time_projection`, `blocks.*.self_attn.q`,
`...cross_attn`, `ffn`, `modulation`, `head`) so its checkpoints can be mapped onto this module.

Layers are stacked (leading axis 'layers') and run with `lax.scan`, or unrolled with
`scan_layers=False`; the parameter layout is the same either way.
"""

import math

import einops
import jax
import jax.numpy as jnp
from flax import nnx, struct

from pafukv_jax import parallel
from pafukv_jax.models.attention import CrossAttention, SelfAttention, block_causal_mask
from pafukv_jax.models.config import DiTConfig  # noqa: F401  (models.dit.DiTConfig too)
from pafukv_jax.models.layers import MLP, dense, gelu_tanh, layer_norm
from pafukv_jax.models.rope import camera_path, rope_angles, token_positions

ATTENTION_MODES = ('bidirectional', 'block_causal', 'cached')
# What a forward can also return in its `aux` dict (each stacked over layers):
#   q, k [L, B, H, N, Dh]  the self-attention's queries and keys, rotated by RoPE (as cached);
#   v    [L, B, H, N, Dh];
#   cache_mass [L, B, C]   the attention each cache slot received (mode='cached'; a second pass
#                          over the cache);
#   hidden [L, B, N, dim]  every block's output per token (the salience head's features).
COLLECTABLE = ('q', 'k', 'v', 'cache_mass', 'hidden')


@struct.dataclass
class CrossKV:
  """Every layer's cross-attention keys and values [L, B, H, Lc, Dh] for one batch's conditioning
  (`VideoDiT.cross_kv`): passed as `cond`, the forward skips the text embedding and the K/V
  projections, which are the same for every chunk and denoising pass of a video."""
  k: jax.Array
  v: jax.Array


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding [..., dim] of timesteps on Wan's 0..1000 scale (cos first)."""
  half = dim // 2
  freqs = jnp.power(10000.0, -jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class DiTBlock(nnx.Module):
  """One transformer block; activations are [B, T, S, dim] (S tokens per frame)."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    self.norm1 = layer_norm(cfg, cfg.dim, rngs)
    self.self_attn = SelfAttention(cfg, rngs=rngs)
    self.norm3 = layer_norm(cfg, cfg.dim, rngs, affine=True)
    self.cross_attn = CrossAttention(cfg, rngs=rngs)
    self.norm2 = layer_norm(cfg, cfg.dim, rngs)
    self.ffn = MLP(cfg, cfg.dim, cfg.ffn_dim, cfg.dim, gelu_tanh, rngs=rngs)
    init = nnx.initializers.normal(1.0 / math.sqrt(cfg.dim))
    self.modulation = nnx.Param(
        nnx.with_partitioning(init, (None, 'embed'))(rngs.params(), (6, cfg.dim)))

  def __call__(self, x, e, context, angles, mask=None, cache=None, layer=None, with_mass=False):
    """x [B, T, S, dim]; e [B, T, 6, dim] per-frame modulation.

    Returns (x, internals: the self-attention's q, k, v (and, with_mass, the cache mass) and the
    block's output per token, `hidden` [B, T*S, dim])."""
    b, t, s, d = x.shape
    mod, h = self._attention_input(x, e)
    _, _, gate_sa, shift_ff, scale_ff, gate_ff = [mod[:, :, i] for i in range(6)]
    flat = lambda y: y.reshape(b, t * s, d)
    y, internals = self.self_attn(h, angles, mask, cache, layer, with_mass)
    x = x + (y.reshape(x.shape) * gate_sa).astype(x.dtype)
    x = x + self.cross_attn(flat(self.norm3(x)), context).reshape(x.shape)
    h = self.norm2(x) * (1 + scale_ff) + shift_ff
    x = x + (self.ffn(h.astype(x.dtype)) * gate_ff).astype(x.dtype)
    internals['hidden'] = x.reshape(b, t * s, d)  # the block's output, per token
    return x, internals

  def _attention_input(self, x, e):
    """The modulation [B, T, 6, 1, dim] and the self-attention's input [B, T*S, dim]."""
    b, t, s, d = x.shape
    mod = (self.modulation[...] + e.astype(jnp.float32))[:, :, :, None, :]
    h = self.norm1(x) * (1 + mod[:, :, 1]) + mod[:, :, 0]   # scale and shift of attention
    return mod, h.reshape(b, t * s, d).astype(x.dtype)

  def qkv(self, x, e, angles):
    """The self-attention's q, k, v of this block's input, as __call__ computes them, and no
    more: a pass that only writes the cache needs nothing else of the last block."""
    q, k, v = self.self_attn.qkv(self._attention_input(x, e)[1], angles)
    return dict(q=q, k=k, v=v)


class Head(nnx.Module):
  """Output head: modulated LayerNorm and a linear map to patch pixels."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    out = cfg.patch_size ** 2 * cfg.channels
    self.norm = layer_norm(cfg, cfg.dim, rngs)
    self.head = dense(cfg, cfg.dim, out, ('embed', None), rngs)
    init = nnx.initializers.normal(1.0 / math.sqrt(cfg.dim))
    self.modulation = nnx.Param(
        nnx.with_partitioning(init, (None, 'embed'))(rngs.params(), (2, cfg.dim)))

  def __call__(self, x, e):
    """x [B, T, S, dim], e [B, T, dim] (the unprojected time embedding)."""
    mod = self.modulation[...] + e.astype(jnp.float32)[:, :, None, :]  # [B, T, 2, dim]
    shift, scale = mod[:, :, None, 0], mod[:, :, None, 1]
    return self.head((self.norm(x) * (1 + scale) + shift).astype(x.dtype))


class VideoDiT(nnx.Module):
  """Flow-matching velocity model v(x_t, t) for videos; see the module docstring."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    patch_pixels = cfg.patch_size ** 2 * cfg.channels
    self.patch_embedding = dense(cfg, patch_pixels, cfg.dim, (None, 'embed'), rngs)
    # Prompts come as embeddings [B, L, cond_dim] (umT5's for Wan) into Wan's text_embedding;
    # class labels, where num_classes > 0, stand in for them: each label is a learnt sequence of
    # num_cond_tokens such embeddings. Index num_classes is the null label.
    if cfg.num_classes:
      self.label_embedding = nnx.Embed(
          cfg.num_classes + 1, cfg.num_cond_tokens * cfg.cond_dim,
          embedding_init=nnx.with_partitioning(nnx.initializers.normal(1.0), ('vocab', 'embed')),
          rngs=rngs)
    self.text_embedding = MLP(cfg, cfg.cond_dim, cfg.dim, cfg.dim, gelu_tanh, rngs=rngs)
    self.time_embedding = MLP(cfg, cfg.freq_dim, cfg.dim, cfg.dim, jax.nn.silu, rngs=rngs)
    self.time_projection = dense(cfg, cfg.dim, 6 * cfg.dim, ('embed', 'mlp'), rngs)
    if cfg.frame_cond_dim:
      self.frame_cond_embedding = dense(cfg, cfg.frame_cond_dim, cfg.dim, (None, 'embed'), rngs)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
    def make_blocks(rngs):
      return DiTBlock(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.head = Head(cfg, rngs=rngs)

  # -- pieces ---------------------------------------------------------------------------------

  def patchify(self, video):
    p = self.cfg.patch_size
    return einops.rearrange(video, 'b t (h p) (w q) c -> b t (h w) (c p q)', p=p, q=p)

  def unpatchify(self, tokens):
    p, (gh, gw) = self.cfg.patch_size, self.cfg.grid
    return einops.rearrange(tokens, 'b t (h w) (p q c) -> b t (h p) (w q) c', h=gh, w=gw, p=p, q=p)

  def condition(self, cond):
    """Conditioning tokens [B, L, dim] from integer class labels cond [B] (L = num_cond_tokens)
    or from prompt embeddings cond [B, L, cond_dim] (float; Wan's are umT5's, zero-padded to 512)."""
    cfg = self.cfg
    if jnp.issubdtype(cond.dtype, jnp.integer):
      if not cfg.num_classes:
        raise ValueError('This model has num_classes=0: condition it on prompt embeddings '
                         f'[B, L, {cfg.cond_dim}] (floats), not on integer labels {cond.shape}.')
      cond = self.label_embedding(cond).reshape(cond.shape[0], cfg.num_cond_tokens, cfg.cond_dim)
    elif cond.ndim != 3 or cond.shape[-1] != cfg.cond_dim:
      raise ValueError(f'Prompt embeddings must be [B, L, {cfg.cond_dim}] (model.cond_dim), '
                       f'got {cond.shape}.')
    return self.text_embedding(cond.astype(cfg.compute_dtype))

  def cross_kv(self, cond) -> CrossKV:
    """The cross-attention K/V of conditioning `cond` (labels or prompt embeddings) in every
    layer, to pass as `cond` to many forwards of the same batch."""
    if isinstance(cond, CrossKV):
      return cond
    context = self.condition(cond)
    graphdef, state = nnx.split(self.blocks)
    kv = lambda layer_state: nnx.merge(graphdef, layer_state).cross_attn.kv(context)
    return CrossKV(*jax.lax.map(kv, state))

  def time_condition(self, t, frame_cond=None):
    """Per-frame (e [B, T, dim], e0 [B, T, 6, dim]) for noise levels t [B, T] in [0, 1]."""
    e = self.time_embedding(timestep_embedding(1000.0 * t, self.cfg.freq_dim))
    if self.cfg.frame_cond_dim:  # a model without one ignores frame_cond
      if frame_cond is None:
        raise ValueError('This model has frame_cond_dim > 0: pass frame_cond [B, T, frame_cond_dim].')
      e = e + self.frame_cond_embedding(frame_cond.astype(e.dtype) * self.cfg.frame_cond_scale)
    e0 = self.time_projection(jax.nn.silu(e))
    return e, e0.reshape(*e0.shape[:2], 6, self.cfg.dim)

  def run_blocks(self, x, e0, context, angles, mask, cache, keep=(), reduce=None,
                 kv_only_last=False):
    """All blocks (context: conditioning tokens [B, Lc, dim] or a CrossKV); returns
    (x, {name: [L, ...]}) with the internals named in `keep` (of COLLECTABLE) stacked over
    layers, or what `reduce` makes of each layer's {name: internal}. Only those are kept, so the
    layer loop carries nothing it does not return.

    The cache is closed over whole and every layer slices its own blocks out of it: passing
    per-layer slices as scan inputs would copy a layer's whole capacity on every call.

    kv_only_last (keep of q, k, v only): the last block computes its q, k, v and stops; the
    returned x is then its input, not its output."""
    graphdef, state = nnx.split(self.blocks)
    last = self.cfg.num_layers - 1

    per_layer = (state, (context.k, context.v)) if isinstance(context, CrossKV) else state

    def layer(x, layer_inputs, index):
      layer_state, layer_context = layer_inputs if isinstance(context, CrossKV) else (
          layer_inputs, context)
      block = nnx.merge(graphdef, layer_state)
      full = lambda x: block(x, e0, layer_context, angles, mask, cache, index,
                             'cache_mass' in keep)
      if not kv_only_last:
        x, internals = full(x)
      elif isinstance(index, int):  # unrolled
        x, internals = (x, block.qkv(x, e0, angles)) if index == last else full(x)
      else:  # scanned: both branches return the same structure
        def whole(x):
          y, internals = full(x)
          return y, {n: internals[n] for n in ('q', 'k', 'v')}
        x, internals = jax.lax.cond(index == last, lambda x: (x, block.qkv(x, e0, angles)),
                                    whole, x)
      x = parallel.constrain_batch(x)
      kept = {name: internals[name] for name in keep}
      return x, (reduce(kept) if reduce else kept)

    if self.cfg.scan_layers:
      return jax.lax.scan(lambda x, xs: layer(x, *xs), x,
                          (per_layer, jnp.arange(self.cfg.num_layers)))
    outs = []
    for i in range(self.cfg.num_layers):
      x, out = layer(x, jax.tree.map(lambda a: a[i], per_layer), i)
      outs.append(out)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *outs)

  # -- forward --------------------------------------------------------------------------------

  def __call__(self, video, t, frame_index, cond, frame_cond=None, *, mode='bidirectional',
               chunk_frames=1, cache=None, collect=(), reduce=None, camera=None,
               velocity=True):
    """Predicts the flow velocity for `video` [B, T, H, W, C]; returns (velocity, aux).

    t: [B, T] noise level of every frame in [0, 1] (0 = clean).
    frame_index: [B, T] or [T] absolute frame indices (RoPE positions and chunk membership).
    cond: [B] int class labels (num_classes = unconditional), prompt embeddings
      [B, L, cond_dim] (floats; all zeros = unconditional), or their `cross_kv`.
    frame_cond: [B, T, frame_cond_dim] per-frame conditioning (camera motion); ignored by a model
      with frame_cond_dim = 0.
    mode: 'bidirectional' | 'block_causal' (chunks of `chunk_frames` frames) | 'cached'.
    cache: for 'cached', the `KVCache.read()` every block attends to.
    collect: names of COLLECTABLE internals to return in `aux` (only those are kept).
    reduce: a function of one layer's collected {name: array} to a dict of smaller arrays,
      computed inside the layer loop: aux then holds those, stacked over layers, and no layer's
      q, k, ... outlive it (the salience targets of a 1.3B teacher: 6 GB of q and k less).
    camera: with rope_positions='world', the camera's position [B, T, 2] at these frames
      (rope.camera_path of the whole video, sliced); default: the path of frame_cond, which is
      right when these frames are a whole video from frame 0.
    velocity: False when only `aux` is wanted (the pass that writes the cache): the velocity is
      None, and with collect of q, k, v only the last block stops at its K/V.
    Returns velocity [B, T, H, W, C] (float32) and aux {name: array} for the names collected.
    """
    if mode not in ATTENTION_MODES:
      raise ValueError(f'Unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}.')
    if (mode == 'cached') != (cache is not None):
      raise ValueError("cache is required by mode='cached' and only by it.")
    unknown = sorted(set(collect) - set(COLLECTABLE))
    if unknown:
      raise ValueError(f'Cannot collect {unknown}; choose from {COLLECTABLE}.')
    if 'cache_mass' in collect and cache is None:
      raise ValueError("collect='cache_mass' needs a cache (mode='cached').")
    cfg = self.cfg
    b, nt = video.shape[:2]
    frame_index = jnp.broadcast_to(frame_index, (b, nt))
    x = parallel.constrain_batch(  # [B, T, S, dim]
        self.patch_embedding(self.patchify(video.astype(cfg.compute_dtype))))
    e, e0 = self.time_condition(t, frame_cond)
    context = cond if isinstance(cond, CrossKV) else self.condition(cond)
    if cfg.rope_positions == 'world' and camera is None:
      if frame_cond is None:
        raise ValueError("rope_positions='world' needs frame_cond (or camera) [B, T, 2].")
      camera = camera_path(frame_cond)
    positions = token_positions(frame_index, *cfg.grid,
                                camera if cfg.rope_positions == 'world' else None, cfg.patch_size)
    angles = rope_angles(positions, cfg.head_dim, cfg.rope_theta)
    mask = None
    if mode == 'block_causal':
      mask = block_causal_mask(positions[..., 0].astype(jnp.int32), chunk_frames)
    keep = tuple(sorted(set(collect)))
    x, aux = self.run_blocks(x, e0, context, angles, mask, cache, keep, reduce,
                             kv_only_last=not velocity and set(keep) <= {'q', 'k', 'v'})
    if not velocity:
      return None, aux
    return self.unpatchify(self.head(x, e)).astype(jnp.float32), aux


def init_model(cfg: DiTConfig, seed: int = 0) -> VideoDiT:
  """Builds the model with random weights; sharding annotations stay metadata until a mesh is set."""
  with nnx.use_eager_sharding(False):
    return VideoDiT(cfg, rngs=nnx.Rngs(seed))
