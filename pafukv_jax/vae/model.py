"""AutoencoderKLWan in Flax NNX: the Wan2.1 VAE's encoder and decoder, named as diffusers names
them (so its weights map by name: `encoder.down_blocks.3.conv1.weight` is this module's
`encoder.down_blocks[3].conv1.kernel`).

Videos are [B, T, H, W, C] in [-1, 1], T = 1 + 4k; latents [B, 1 + k, H/8, W/8, z_dim] (channels
last, as the DiT takes them). The module's methods run on a `layers.Stream`: whole video or one
chunk; `pafukv_jax.vae.codec` has the jitted whole and chunked passes built on them.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pafukv_jax.vae.config import VaeConfig
from pafukv_jax.vae.layers import (CausalConv3d, MidBlock, Resample, ResidualBlock, RMSNorm,
                                   Stream)


class Encoder3d(nnx.Module):
  """diffusers' WanEncoder3d: conv_in, per level num_res_blocks residual blocks and (but the
  last level) a downsampling, the middle block, then RMS norm, SiLU and conv_out to 2 z_dim
  channels (the mean and log-variance)."""

  def __init__(self, cfg: VaeConfig, *, rngs: nnx.Rngs):
    dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
    self.conv_in = CausalConv3d(cfg.in_channels, dims[0], rngs=rngs)
    blocks = []
    for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResidualBlock(din, dout, rngs=rngs))
        din = dout
      if i != len(cfg.dim_mult) - 1:
        mode = 'downsample3d' if cfg.temperal_downsample[i] else 'downsample2d'
        blocks.append(Resample(dout, mode, rngs=rngs))
    self.down_blocks = nnx.List(blocks)
    self.mid_block = MidBlock(dims[-1], rngs=rngs)
    self.norm_out = RMSNorm(dims[-1], rngs=rngs)
    self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, rngs=rngs)

  def __call__(self, x, stream: Stream):
    x = self.conv_in(x, stream)
    for block in self.down_blocks:
      x = block(x, stream)
    x = self.mid_block(x, stream)
    return self.conv_out(jax.nn.silu(self.norm_out(x)), stream)


class UpBlock(nnx.Module):
  """diffusers' WanUpBlock: num_res_blocks + 1 residual blocks, then an upsampling (or none)."""

  def __init__(self, din: int, dout: int, num_res_blocks: int, mode: str | None, *,
               rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(din if i == 0 else dout, dout, rngs=rngs)
                             for i in range(num_res_blocks + 1)])
    self.upsamplers = nnx.List([Resample(dout, mode, rngs=rngs)]) if mode else None

  def __call__(self, x, stream: Stream):
    for resnet in self.resnets:
      x = resnet(x, stream)
    if self.upsamplers is not None:
      x = self.upsamplers[0](x, stream)
    return x


class Decoder3d(nnx.Module):
  """diffusers' WanDecoder3d: conv_in, the middle block, up blocks from the coarsest level
  (every upsampling halves the channels, so a level after one starts at half its width), then
  RMS norm, SiLU and conv_out to the video's channels."""

  def __init__(self, cfg: VaeConfig, *, rngs: nnx.Rngs):
    mult = cfg.dim_mult
    dims = [cfg.decoder_dim * m for m in (mult[-1], *mult[::-1])]
    temporal = cfg.temperal_downsample[::-1]
    self.conv_in = CausalConv3d(cfg.z_dim, dims[0], rngs=rngs)
    self.mid_block = MidBlock(dims[0], rngs=rngs)
    blocks = []
    for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
      mode = None
      if i != len(mult) - 1:
        mode = 'upsample3d' if temporal[i] else 'upsample2d'
      blocks.append(UpBlock(din // 2 if i > 0 else din, dout, cfg.num_res_blocks, mode,
                            rngs=rngs))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = RMSNorm(dims[-1], rngs=rngs)
    self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, rngs=rngs)

  def __call__(self, x, stream: Stream):
    x = self.conv_in(x, stream)
    x = self.mid_block(x, stream)
    for block in self.up_blocks:
      x = block(x, stream)
    return self.conv_out(jax.nn.silu(self.norm_out(x)), stream)


def _output_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)  # float32, or float64 where computed in it


class AutoencoderKLWan(nnx.Module):
  """The Wan2.1 VAE: encoder + quant_conv (to the Gaussian's moments), post_quant_conv +
  decoder. Inference only, float32 weights; `dtype` is the activations' (float32 matches
  diffusers to 1e-4 on the fixtures; bfloat16 halves the memory)."""

  def __init__(self, cfg: VaeConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.cfg = cfg.validate()
    self.dtype = dtype
    self.encoder = Encoder3d(cfg, rngs=rngs)
    self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1), rngs=rngs)
    self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, (1, 1, 1), rngs=rngs)
    self.decoder = Decoder3d(cfg, rngs=rngs)

  def moments(self, video, stream: Stream):
    """[B, T', h, w, 2 z_dim] (float32 at least): the posterior's mean (first z_dim channels) and
    log-variance (unclamped: diffusers' DiagonalGaussianDistribution clamps it to [-30, 20])."""
    x = self.encoder(video.astype(self.dtype), stream)
    return self.quant_conv(x).astype(_output_dtype(self.dtype))

  def decode_frames(self, z, stream: Stream, clip: bool = True):
    """Video [B, T, H, W, out_channels] (float32 at least) of (unnormalised) latents z; `clip`:
    to [-1, 1], as diffusers' decode does."""
    x = self.decoder(self.post_quant_conv(z.astype(self.dtype)), stream)
    x = x.astype(_output_dtype(self.dtype))
    return jnp.clip(x, -1.0, 1.0) if clip else x


def init_vae(cfg: VaeConfig, seed: int = 0, dtype=jnp.float32) -> AutoencoderKLWan:
  """A randomly initialised VAE (the weights loaders replace every parameter)."""
  return AutoencoderKLWan(cfg, rngs=nnx.Rngs(seed), dtype=dtype)


def abstract_vae(cfg: VaeConfig, dtype=jnp.float32) -> AutoencoderKLWan:
  """The VAE's structure and parameter shapes, without computing any weights."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: AutoencoderKLWan(cfg, rngs=nnx.Rngs(0), dtype=dtype))
