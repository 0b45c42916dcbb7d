"""Encoding and decoding with the Wan2.1 VAE: the whole video at once, or chunk by chunk.

Whole: `encode(vae, video)` and `decode(vae, latents)` pass every frame through each layer at
once (jitted per video length; their memory grows with it).
Chunked: one jitted step per chunk, a `ChunkState` of fixed shape carried from one to the next
(every causal convolution's last input frames, a few frames of each layer's activations):
  * `encode_chunk_jit` takes 4 frames and gives 1 latent frame; the first chunk is frame 0
    after 3 fillers (it gives latent 0);
  * `decode_chunk_jit` takes 1 latent frame and gives 4 frames; of the first chunk, only the
    last frame is the video's (frame 0), the others are fillers.
Each compiles once per batch and frame size, whatever the video's length, and equals the whole
pass (diffusers' AutoencoderKLWan encodes 1 frame then 4 at a time, and decodes one latent frame
at a time, which is what these steps do). `decode_chunks` yields the frames chunk by chunk:
decoding memory is the weights, one chunk's activations and the state, for any length.
(4 is the temporal factor of Wan2.1's VAE; it is `cfg.temporal_factor` for others.)
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from pafukv_jax.vae.config import VaeConfig
from pafukv_jax.vae.layers import Stream
from pafukv_jax.vae.model import AutoencoderKLWan


@struct.dataclass
class ChunkState:
  """Carried between chunks: each causal layer's cache (in the order the layers run) and
  whether the next chunk is the video's first."""
  caches: tuple
  first: jax.Array  # bool []


def _encode_whole(graphdef, params, video):
  return nnx.merge(graphdef, params).moments(video, Stream())


def _decode_whole(graphdef, params, z, clip):
  return nnx.merge(graphdef, params).decode_frames(z, Stream(), clip)


def encode_chunk(graphdef, params, state: ChunkState, frames):
  """(next state, moments [B, 1, h, w, 2 z_dim]) of `frames` [B, 4, H, W, C]."""
  stream = Stream(state.caches, state.first)
  moments = nnx.merge(graphdef, params).moments(frames, stream)
  stream.check_done()
  return ChunkState(tuple(stream.new), jnp.zeros((), bool)), moments


def decode_chunk(graphdef, params, state: ChunkState, z, clip=True):
  """(next state, frames [B, 4, H, W, C]) of latent frame `z` [B, 1, h, w, z_dim]."""
  stream = Stream(state.caches, state.first)
  frames = nnx.merge(graphdef, params).decode_frames(z, stream, clip)
  stream.check_done()
  return ChunkState(tuple(stream.new), jnp.zeros((), bool)), frames


# Jitted once per VAE structure and input shape (the graphdef is static); the names are what
# CompileCounter counts. The chunk steps donate the state: it is replaced every chunk.
encode_whole_jit = jax.jit(_encode_whole, static_argnums=0)
decode_whole_jit = jax.jit(_decode_whole, static_argnums=(0, 3))
encode_chunk_jit = jax.jit(encode_chunk, static_argnums=0, donate_argnums=2)
decode_chunk_jit = jax.jit(decode_chunk, static_argnums=(0, 4), donate_argnums=2)


def init_state(vae: AutoencoderKLWan, batch: int, height: int, width: int,
               for_decode: bool) -> ChunkState:
  """The state before a video's first chunk: zero caches (the frames before the video). height,
  width: the video's for encoding, the latents' for decoding."""
  graphdef, params = nnx.split(vae)
  cfg = vae.cfg
  channels = cfg.z_dim if for_decode else cfg.in_channels
  one = jax.ShapeDtypeStruct((batch, 1, height, width, channels), vae.dtype)

  def caches(params, x):  # what a one-frame whole pass emits has the chunks' cache shapes
    stream = Stream()
    model = nnx.merge(graphdef, params)
    (model.decode_frames if for_decode else model.moments)(x, stream)
    return tuple(stream.new)

  shapes = jax.eval_shape(caches, params, one)
  return ChunkState(tuple(jnp.zeros(s.shape, s.dtype) for s in shapes), jnp.ones((), bool))


def _check_video(cfg: VaeConfig, video):
  b, t, h, w, c = video.shape
  f, s = cfg.temporal_factor, cfg.spatial_factor
  if (t - 1) % f or h % s or w % s or c != cfg.in_channels:
    raise ValueError(f'video {video.shape}: the VAE takes [B, 1 + {f}k, H, W, {cfg.in_channels}] '
                     f'with H and W multiples of {s}.')


def _check_latents(cfg: VaeConfig, latents):
  if latents.ndim != 5 or latents.shape[-1] != cfg.z_dim or latents.shape[1] < 1:
    raise ValueError(f'latents {latents.shape}: the VAE decodes [B, n >= 1, h, w, {cfg.z_dim}].')


def encode_moments(vae: AutoencoderKLWan, video, chunked: bool = False):
  """The posterior's moments [B, 1 + k, H/8, W/8, 2 z_dim] of video [B, 1 + 4k, H, W, C]."""
  cfg = vae.cfg
  _check_video(cfg, video)
  graphdef, params = nnx.split(vae)
  if not chunked:
    return encode_whole_jit(graphdef, params, video)
  b, t, h, w, c = video.shape
  f = cfg.temporal_factor
  state = init_state(vae, b, h, w, for_decode=False)
  fillers = jnp.zeros((b, f - 1, h, w, c), video.dtype)
  out = []
  for start in range(-(f - 1), t, f):  # the first chunk: fillers, then frame 0
    frames = video[:, max(start, 0):start + f]
    if start < 0:
      frames = jnp.concatenate([fillers, frames], axis=1)
    state, moments = encode_chunk_jit(graphdef, params, state, frames)
    out.append(moments)
  return jnp.concatenate(out, axis=1)


def encode(vae: AutoencoderKLWan, video, chunked: bool = False, normalized: bool = False):
  """The posterior's mean [B, 1 + k, H/8, W/8, z_dim] (diffusers' `latent_dist.mode()`), or with
  `normalized` the DiT's latents, (mean - latents_mean) / latents_std."""
  mean = encode_moments(vae, video, chunked)[..., :vae.cfg.z_dim]
  return normalize(vae.cfg, mean) if normalized else mean


def decode_chunks(vae: AutoencoderKLWan, latents, normalized: bool = False, clip: bool = True):
  """Yields the video of latents [B, n, h, w, z_dim] chunk by chunk: frame 0 [B, 1, H, W, C],
  then [B, 4, H, W, C] per latent frame (one compile for all). `normalized`: the latents are
  the DiT's (normalised), and are denormalised first."""
  _check_latents(vae.cfg, latents)
  z = denormalize(vae.cfg, latents) if normalized else latents
  graphdef, params = nnx.split(vae)
  state = init_state(vae, z.shape[0], z.shape[2], z.shape[3], for_decode=True)
  for i in range(z.shape[1]):
    state, frames = decode_chunk_jit(graphdef, params, state, z[:, i:i + 1], clip)
    yield frames[:, -1:] if i == 0 else frames


def decode(vae: AutoencoderKLWan, latents, chunked: bool = False, normalized: bool = False,
           clip: bool = True):
  """Video [B, 1 + 4(n - 1), H, W, C] in [-1, 1] (unclipped if not `clip`) of latents
  [B, n, h, w, z_dim]; `normalized` as in `decode_chunks`."""
  if chunked:
    return jnp.concatenate(list(decode_chunks(vae, latents, normalized, clip)), axis=1)
  _check_latents(vae.cfg, latents)
  z = denormalize(vae.cfg, latents) if normalized else latents
  graphdef, params = nnx.split(vae)
  return decode_whole_jit(graphdef, params, z, clip)


def normalize(cfg: VaeConfig, mean):
  """The DiT's latents of the posterior mean (channels last), as Wan's pipelines scale them:
  (mean - latents_mean) * (1 / latents_std)."""
  m = jnp.asarray(np.asarray(cfg.latents_mean, np.float32))
  inv_std = 1.0 / jnp.asarray(np.asarray(cfg.latents_std, np.float32))
  return (mean - m) * inv_std


def denormalize(cfg: VaeConfig, latents):
  """The VAE's latents of the DiT's: latents / (1 / latents_std) + latents_mean (as diffusers'
  WanPipeline before decoding)."""
  m = jnp.asarray(np.asarray(cfg.latents_mean, np.float32))
  inv_std = 1.0 / jnp.asarray(np.asarray(cfg.latents_std, np.float32))
  return latents / inv_std + m
