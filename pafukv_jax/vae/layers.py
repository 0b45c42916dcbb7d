"""The Wan2.1 VAE's layers (diffusers' AutoencoderKLWan ported, channels last): causal 3D
convolutions, Wan's RMS norm, 2D/3D resampling, residual blocks, the middle blocks' attention.

Activations are [B, T, H, W, C]. Time is causal everywhere: an output frame depends on its input
frame and earlier ones only. A `Stream` says how a pass sees time:
  * `Stream()`, the whole video at once: every causal convolution pads with zeros in front;
  * `Stream(caches, first)`, one chunk of a video: every causal convolution prepends the last
    frames of its input in the previous chunk (its cache, of fixed shape), so chunk after chunk
    computes what the whole-video pass does, in memory that does not grow with the video.
Both modes emit the caches (`stream.new`), in the order the layers run, for the next chunk.

Wan treats a video's first frame alone (1 + 4k frames -> 1 + k latents): the temporal down- and
upsampling pass it through unchanged. A chunked pass keeps one shape for every chunk (so it
compiles once): the first chunk is a steady-shape chunk whose frames but the last are fillers.
`Stream.mask` zeroes the fillers in front of every temporal convolution, where zeros are what
the whole-video pass pads with; the resampling layers treat the first chunk as the whole-video
pass treats the first frame. Everything else (norms, attention, spatial convolutions) works frame
by frame, so the fillers never reach a real frame.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

_DIMS = ('NDHWC', 'DHWIO', 'NDHWC')


class Stream:
  """A pass's view of time: the caches it reads (chunked) and those it writes (both modes)."""

  def __init__(self, caches=None, first=None):
    self.chunked = caches is not None
    self.first = first  # chunked: a traced bool, whether this chunk is the video's first
    self._caches = list(caches)[::-1] if self.chunked else []
    self.new = []

  def take(self):
    """The next layer's cache (None in a whole-video pass: zeros, the frames before the video)."""
    if not self.chunked:
      return None
    if not self._caches:
      raise ValueError("the state holds fewer caches than this model's layers: not its state.")
    return self._caches.pop()

  def put(self, cache):
    self.new.append(cache)

  def mask(self, x):
    """x with its fillers zeroed: in the first chunk, every frame but the last."""
    if not self.chunked:
      return x
    t = x.shape[1]
    filler = jnp.logical_and(self.first, jnp.arange(t) < t - 1)[None, :, None, None, None]
    return jnp.where(filler, jnp.zeros((), x.dtype), x)

  def check_done(self):
    if self._caches:
      raise ValueError(f'{len(self._caches)} caches were left unread: the state is not this '
                       "model's.")


class Conv(nnx.Module):
  """A convolution's weights: kernel [*window, in, out] with a window over (T, H, W), or over
  (H, W) of each frame; bias [out]."""

  def __init__(self, din: int, dout: int, window: tuple[int, ...], *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (*window, din, dout)))
    self.bias = nnx.Param(jnp.zeros((dout,)))

  def __call__(self, x, stride=(1, 1, 1), padding=((0, 0), (0, 0), (0, 0))):
    """x [B, T, H, W, in]; padding ((t0, t1), (h0, h1), (w0, w1)); stride (t, h, w)."""
    kernel, bias = self.kernel[...].astype(x.dtype), self.bias[...].astype(x.dtype)
    if kernel.ndim == 4:  # a 2D convolution: one frame at a time
      kernel = kernel[None]
    if kernel.shape[:3] == (1, 1, 1) and stride == (1, 1, 1) and not any(map(any, padding)):
      return jnp.einsum('...i,io->...o', x, kernel[0, 0, 0]) + bias
    y = jax.lax.conv_general_dilated(x, kernel, stride, padding, dimension_numbers=_DIMS)
    return y + bias


class CausalConv3d(Conv):
  """diffusers' WanCausalConv3d: 'same' spatial padding, causal in time (an output frame sees
  its own input frame and the window[0] - 1 before it, zeros before the video)."""

  def __init__(self, din: int, dout: int, window=(3, 3, 3), *, rngs: nnx.Rngs):
    super().__init__(din, dout, window, rngs=rngs)
    self.past = window[0] - 1
    self.pad = window[1] // 2

  def step(self, x, prev=None):
    """(y, cache): the convolution of x after `prev`, its past frames [B, past, ...] (None:
    zeros); cache is the last `past` frames of that input, the next chunk's `prev`."""
    if prev is None:
      prev = jnp.zeros((x.shape[0], self.past, *x.shape[2:]), x.dtype)
    x = jnp.concatenate([prev.astype(x.dtype), x], axis=1)
    p = self.pad
    return super().__call__(x, padding=((0, 0), (p, p), (p, p))), x[:, x.shape[1] - self.past:]

  def __call__(self, x, stream: Stream | None = None):
    if self.past == 0:  # 1x1x1: per frame, nothing to cache
      return super().__call__(x)
    y, cache = self.step(stream.mask(x), stream.take())
    stream.put(cache)
    return y


class RMSNorm(nnx.Module):
  """diffusers' WanRMS_norm over channels: x / max(|x|, 1e-12) * sqrt(C) * scale (no bias, as
  in every Wan2.1 VAE layer); computed in float32 at least."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    del rngs
    self.scale = nnx.Param(jnp.ones((dim,)))

  def __call__(self, x):
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
    out = x32 / jnp.maximum(norm, 1e-12) * math.sqrt(x.shape[-1]) * self.scale[...]
    return out.astype(x.dtype)


class ResidualBlock(nnx.Module):
  """diffusers' WanResidualBlock: (RMS norm, SiLU, causal conv) twice, plus the input (through a
  1x1x1 conv where the channels change). Dropout is training's only: none here."""

  def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(din, rngs=rngs)
    self.conv1 = CausalConv3d(din, dout, rngs=rngs)
    self.norm2 = RMSNorm(dout, rngs=rngs)
    self.conv2 = CausalConv3d(dout, dout, rngs=rngs)
    self.conv_shortcut = CausalConv3d(din, dout, (1, 1, 1), rngs=rngs) if din != dout else None

  def __call__(self, x, stream: Stream):
    h = x if self.conv_shortcut is None else self.conv_shortcut(x)
    x = self.conv1(jax.nn.silu(self.norm1(x)), stream)
    x = self.conv2(jax.nn.silu(self.norm2(x)), stream)
    return x + h


class AttentionBlock(nnx.Module):
  """diffusers' WanAttentionBlock: one-head self-attention over each frame's pixels (no mixing
  across frames), after an RMS norm, added to the input."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.norm = RMSNorm(dim, rngs=rngs)
    self.to_qkv = Conv(dim, 3 * dim, (1, 1), rngs=rngs)
    self.proj = Conv(dim, dim, (1, 1), rngs=rngs)

  def __call__(self, x, stream: Stream | None = None):
    del stream
    b, t, h, w, c = x.shape
    q, k, v = jnp.split(self.to_qkv(self.norm(x)).reshape(b, t, h * w, 3 * c), 3, axis=-1)
    logits = jnp.einsum('btqc,btkc->btqk', q, k) / math.sqrt(c)
    out = jnp.einsum('btqk,btkc->btqc', jax.nn.softmax(logits, axis=-1), v)
    return x + self.proj(out.reshape(b, t, h, w, c))


class MidBlock(nnx.Module):
  """diffusers' WanMidBlock: residual block, attention, residual block."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(dim, dim, rngs=rngs) for _ in range(2)])
    self.attentions = nnx.List([AttentionBlock(dim, rngs=rngs)])

  def __call__(self, x, stream: Stream):
    x = self.resnets[0](x, stream)
    return self.resnets[1](self.attentions[0](x), stream)


def _interleave(y):
  """[B, T, H, W, 2C] -> [B, 2T, H, W, C]: channel half s of frame t becomes frame 2t + s."""
  b, t, h, w, c2 = y.shape
  y = y.reshape(b, t, h, w, 2, c2 // 2)
  return jnp.moveaxis(y, 4, 2).reshape(b, 2 * t, h, w, c2 // 2)


class Resample(nnx.Module):
  """diffusers' WanResample. 'downsample2d'/'upsample2d': a 3x3 conv per frame at half / twice
  the size (nearest-neighbour upsampling; upsampling halves the channels). The 3d modes also
  halve / double the frames after the first: 'downsample3d' with a stride-2 temporal conv after
  the spatial one, 'upsample3d' with a causal temporal conv to 2C channels, one C per frame,
  before it."""

  MODES = ('downsample2d', 'downsample3d', 'upsample2d', 'upsample3d')

  def __init__(self, dim: int, mode: str, *, rngs: nnx.Rngs):
    if mode not in self.MODES:
      raise ValueError(f'Resample mode {mode!r} is not one of {self.MODES}.')
    self.mode = mode
    self.resample = Conv(dim, dim // 2 if mode.startswith('up') else dim, (3, 3), rngs=rngs)
    time_out = {'upsample3d': 2 * dim, 'downsample3d': dim}.get(mode)
    self.time_conv = CausalConv3d(dim, time_out, (3, 1, 1), rngs=rngs) if time_out else None

  def __call__(self, x, stream: Stream):
    if self.mode == 'upsample3d':
      x = self._time_up(x, stream)
    if self.mode.startswith('up'):
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
      x = self.resample(x, padding=((0, 0), (1, 1), (1, 1)))
    else:  # torch's ZeroPad2d((0, 1, 0, 1)) then a stride-2 3x3 conv
      x = self.resample(x, stride=(1, 2, 2), padding=((0, 0), (0, 1), (0, 1)))
    if self.mode == 'downsample3d':
      x = self._time_down(x, stream)
    return x

  def _time_up(self, x, stream):
    # Frame 0 stays one frame and is not in the temporal conv's past (diffusers caches 'Rep'
    # for it: the conv's first input, the second latent frame, sees zeros before it).
    prev = stream.take()
    if stream.chunked:
      y, cache = self.time_conv.step(x, prev)
      first = stream.first
      y = jnp.where(first, jnp.repeat(x, 2, axis=1), _interleave(y))  # first: fillers, then x
      cache = jnp.where(first, prev, cache)
    elif x.shape[1] == 1:
      y, cache = x, jnp.zeros((x.shape[0], self.time_conv.past, *x.shape[2:]), x.dtype)
    else:
      y, cache = self.time_conv.step(x[:, 1:], prev)
      y = jnp.concatenate([x[:, :1], _interleave(y)], axis=1)
    stream.put(cache)
    return y

  def _time_down(self, x, stream):
    # Output 0 is frame 0; output j >= 1 is the conv of frames 2j-2, 2j-1, 2j. A chunk (of even
    # length) continues from the previous chunk's last frame.
    conv = lambda frames: Conv.__call__(self.time_conv, frames, stride=(2, 1, 1))
    prev = stream.take()
    if stream.chunked:
      y = conv(jnp.concatenate([prev.astype(x.dtype), x], axis=1))
      y = jnp.where(stream.first, x[:, 1::2], y)  # first: fillers, then frame 0
    elif x.shape[1] == 1:
      y = x
    else:
      y = jnp.concatenate([x[:, :1], conv(x)], axis=1)
    stream.put(x[:, -1:])
    return y
