"""3D rotary position embedding split over (time, height, width), Wan2.1 layout.

The head dimension is read as Dh/2 complex pairs of adjacent channels (x[2i], x[2i+1]).
Of the c = Dh/2 pairs, time gets c - 2*(c//3), height and width c//3 each: the split
Wan2.1 uses, so its attention weights load unchanged. Positions are absolute integers:
frames carry their index in the whole video, so a key rotated when it enters the cache
stays valid for every later query (logits depend only on the position difference).
"""

import jax
import jax.numpy as jnp


def rope_split(head_dim: int) -> tuple[int, int, int]:
  """Number of rotated pairs given to (t, h, w)."""
  if head_dim % 2:
    raise ValueError(f'RoPE needs an even head dimension, got {head_dim}.')
  c = head_dim // 2
  return c - 2 * (c // 3), c // 3, c // 3


def _inv_freq(num_pairs: int, theta: float) -> jax.Array:
  dim = 2 * num_pairs
  return 1.0 / theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)


def rope_angles(positions: jax.Array, head_dim: int, theta: float = 10000.0) -> jax.Array:
  """Rotation angles [..., Dh/2] for positions [..., 3] = (frame, row, col) (integers, or
  fractional rows and columns with world positions)."""
  pos = positions.astype(jnp.float32)
  parts = [pos[..., i, None] * _inv_freq(n, theta) for i, n in enumerate(rope_split(head_dim))]
  return jnp.concatenate(parts, axis=-1)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates head-major x [B, H, N, Dh] by angles [B or 1, N, Dh/2] (computed in float32)."""
  dtype = x.dtype
  x = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  cos = jnp.cos(angles)[:, None]
  sin = jnp.sin(angles)[:, None]
  x0, x1 = x[..., 0], x[..., 1]
  out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return out.reshape(*out.shape[:-2], -1).astype(dtype)


ROPE_POSITIONS = ('grid', 'world')


def camera_path(frame_cond: jax.Array) -> jax.Array:
  """The camera's position [B, T, 2] = (x, y) in pixels relative to frame 0, from per-frame
  displacements frame_cond [B, T, >= 2] = (dx, dy, ...) of a whole video (frame 0's is 0)."""
  return jnp.cumsum(frame_cond[..., :2].astype(jnp.float32), axis=1)


def token_positions(frame_index: jax.Array, grid_h: int, grid_w: int, camera=None,
                    patch_size: int = 1) -> jax.Array:
  """Positions [B, T*gh*gw, 3] = (frame, row, col) of the patch tokens of frames frame_index
  [B, T]: the patch grid ('grid'), or with camera [B, T, 2] (camera_path, pixels) the scene
  position of each patch ('world'): patch + camera / patch_size, fractional. A point of the scene
  then has the same (row, col) in every frame that shows it, so attention can find revisited
  content by position; logits still depend only on position differences."""
  b, t = frame_index.shape
  rows, cols = jnp.meshgrid(jnp.arange(grid_h), jnp.arange(grid_w), indexing='ij')
  f = jnp.broadcast_to(frame_index[:, :, None, None], (b, t, grid_h, grid_w))
  r = jnp.broadcast_to(rows, (b, t, grid_h, grid_w))
  c = jnp.broadcast_to(cols, (b, t, grid_h, grid_w))
  if camera is not None:
    shift = camera.astype(jnp.float32) / patch_size  # [B, T, 2] = (x, y) in patches
    r = r + shift[:, :, None, None, 1]
    c = c + shift[:, :, None, None, 0]
    f = f.astype(jnp.float32)
  return jnp.stack([f, r, c], axis=-1).reshape(b, t * grid_h * grid_w, 3)
