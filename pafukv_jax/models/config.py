"""DiTConfig: the static description of a VideoDiT, validated once where a config is parsed."""

import dataclasses

import jax.numpy as jnp

from pafukv_jax.models.attention import ATTENTION_IMPLS
from pafukv_jax.models.rope import ROPE_POSITIONS


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Static model description; `DiTConfig.from_config(config.model)` validates a config."""
  image_size: tuple[int, int] = (32, 32)
  channels: int = 3
  patch_size: int = 4
  dim: int = 128
  ffn_dim: int = 512
  num_heads: int = 4
  num_layers: int = 4
  freq_dim: int = 256
  cond_dim: int = 64
  num_cond_tokens: int = 4
  num_classes: int = 10      # 0: no label table; the model takes prompt embeddings only
  frame_cond_dim: int = 0
  # frame_cond is multiplied by this before its (linear) embedding, which is added to the time
  # embedding: values far above 1 (camera motion in pixels) drown the noise level there
  frame_cond_scale: float = 1.0
  eps: float = 1e-6
  rope_theta: float = 10000.0
  # 'grid': RoPE's (row, col) is the patch's place in the frame; 'world': its place in the scene,
  # the patch plus the camera's displacement since frame 0 (frame_cond's first two fields, dx and
  # dy in pixels), so revisited content sits at the position it had when first seen
  rope_positions: str = 'grid'
  dtype: str = 'float32'
  scan_layers: bool = True
  attention_impl: str = 'auto'  # auto | blockwise | masked | xla | cudnn (models/attention.py)
  cache_block_size: int = 512        # slots per block of the blockwise cache attention
  # self- and cross-attention without a cache build logits for at most this many queries at a
  # time (0: all at once); the result is the same, the memory query_chunk x keys, not N x N
  attention_query_chunk: int = 1024

  @classmethod
  def from_config(cls, config) -> 'DiTConfig':
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(config)
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f'Unknown model fields {unknown}; known fields: {sorted(fields)}.')
    if 'image_size' in values:
      values['image_size'] = tuple(values['image_size'])
    cfg = cls(**values)
    cfg.validate()
    return cfg

  def validate(self):
    h, w = self.image_size
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(
          f'model.image_size {self.image_size} is not divisible by model.patch_size '
          f'{self.patch_size}: choose a patch size that divides both sides, or resize the frames.')
    if self.num_classes < 0 or self.num_cond_tokens < 1:
      raise ValueError(f'model.num_classes must be >= 0 (0: prompt embeddings only) and '
                       f'model.num_cond_tokens >= 1, got {self.num_classes}, {self.num_cond_tokens}.')
    if self.dim % self.num_heads:
      raise ValueError(f'model.dim {self.dim} is not divisible by model.num_heads {self.num_heads}.')
    if self.head_dim % 2 or self.head_dim < 6:
      raise ValueError(f'head dim {self.head_dim} must be even and >= 6 for 3D RoPE.')
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f'model.attention_impl must be one of {ATTENTION_IMPLS}, '
                       f'got {self.attention_impl!r}.')
    if self.rope_positions not in ROPE_POSITIONS:
      raise ValueError(f'model.rope_positions must be one of {ROPE_POSITIONS}, '
                       f'got {self.rope_positions!r}.')
    if self.rope_positions == 'world' and self.frame_cond_dim < 2:
      raise ValueError("model.rope_positions='world' reads the camera motion (dx, dy) from "
                       f'frame_cond: it needs model.frame_cond_dim >= 2, got {self.frame_cond_dim}.')
    if self.attention_query_chunk < 0:
      raise ValueError('model.attention_query_chunk must be >= 0 (0: all queries at once), '
                       f'got {self.attention_query_chunk}.')
    if self.cache_block_size < 1:
      raise ValueError(f'model.cache_block_size must be >= 1, got {self.cache_block_size}.')
    if self.dtype not in ('float32', 'bfloat16', 'float16'):
      raise ValueError(f"model.dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}.")

  @property
  def grid(self) -> tuple[int, int]:
    return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

  @property
  def tokens_per_frame(self) -> int:
    return self.grid[0] * self.grid[1]

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)
