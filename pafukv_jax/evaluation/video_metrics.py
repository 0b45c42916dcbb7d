"""Per-frame video quality (PSNR, SSIM) and the memory score (PSNR on masked pixels).

Videos are float arrays in [-1, 1], [..., H, W, C]; every metric returns one value per frame
([...]), so a [B, T, H, W, C] pair gives [B, T]. PSNR and SSIM come from dm-pix on the frames
mapped to [0, 1] (data range 1; SSIM's luminance term is not shift-invariant, and [0, 1] is the
convention); SSIM matches skimage's structural_similarity with gaussian_weights=True, sigma=1.5,
use_sample_covariance=False.

The memory score asks whether revisited content comes back as it was: PSNR only on the pixels
where mask [..., H, W] is set. A frame with an empty mask has no score (NaN); average per-frame
scores with `nanmean_over_frames`, or use `pooled_masked_psnr` (one MSE over all masked pixels
of a clip), which is more stable because nearly empty masks and exact matches (inf dB) cannot
dominate it.
"""

import functools

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11  # Gaussian window, sigma 1.5: skimage's gaussian_weights=True with truncate=3.5.


def _to_unit_range(x):
  return (x + 1.0) * 0.5


def _check_pair(a, b, min_side: int = 1):
  a, b = jnp.asarray(a), jnp.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f'a and b must have the same shape [..., H, W, C], got {a.shape} and '
                     f'{b.shape}.')
  if a.ndim < 3:
    raise ValueError(f'expected frames [..., H, W, C], got shape {a.shape}; add a channel axis '
                     'for grey frames (x[..., None]).')
  for name, x in (('a', a), ('b', b)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f'{name} has dtype {x.dtype}; expected floats in [-1, 1] '
                       '(convert uint8 with x / 127.5 - 1).')
  if min(a.shape[-3:-1]) < min_side:
    raise ValueError(f'frames of {a.shape[-3]}x{a.shape[-2]} pixels are smaller than the '
                     f'{min_side}x{min_side} SSIM window; upscale them first.')
  return a, b


def _per_frame(metric, a, b):
  """Applies a dm-pix metric (which takes [N, H, W, C]) to frames [..., H, W, C] -> [...]."""
  lead = a.shape[:-3]
  flat = lambda x: _to_unit_range(x).reshape((-1,) + x.shape[-3:])
  return metric(flat(a), flat(b)).reshape(lead)


# Compiled once per shape: eagerly, dm-pix's SSIM dispatches (and compiles) dozens of small ops.
_psnr_frames = jax.jit(lambda a, b: _per_frame(dm_pix.psnr, a, b))
_ssim_frames = jax.jit(lambda a, b: _per_frame(
    lambda x, y: dm_pix.ssim(x, y, max_val=1.0, filter_size=SSIM_WINDOW, filter_sigma=1.5,
                             k1=0.01, k2=0.03), a, b))


def psnr(a, b):
  """PSNR in dB per frame, [..., H, W, C] -> [...]; inf where the frames are equal."""
  return _psnr_frames(*_check_pair(a, b))


def ssim(a, b):
  """SSIM per frame (mean over pixels and channels), [..., H, W, C] -> [...]; frames >= 11x11."""
  return _ssim_frames(*_check_pair(a, b, min_side=SSIM_WINDOW))


def _check_mask(a, b, mask):
  a, b = _check_pair(a, b)
  mask = jnp.asarray(mask)
  if mask.shape != a.shape[:-1]:
    raise ValueError(f'mask must have the shape [..., H, W] of the frames, {a.shape[:-1]}, '
                     f'got {mask.shape}; broadcast a shared mask first (jnp.broadcast_to).')
  return a, b, mask


@functools.partial(jax.jit, static_argnames='num_axes')
def _masked_psnr(a, b, mask, num_axes: int):
  """PSNR (data range 1) over the masked values of the last `num_axes` axes; NaN if none."""
  keep = jnp.broadcast_to((mask != 0)[..., None], a.shape)  # nonzero counts as set
  axes = tuple(range(-num_axes, 0))
  squared_sum = jnp.where(keep, jnp.square(_to_unit_range(a) - _to_unit_range(b)), 0.0).sum(axes)
  count = keep.sum(axes)
  mse = squared_sum / jnp.maximum(count, 1)
  return jnp.where(count > 0, -10.0 * jnp.log10(mse), jnp.nan)


def masked_psnr(a, b, mask):
  """Memory score per frame: PSNR over the pixels where mask [..., H, W] is set (all channels).

  a, b: [..., H, W, C] in [-1, 1]; returns [...]. Frames whose mask is empty give NaN, so that
  `nanmean_over_frames` skips them; frames reproduced exactly on the mask give inf.
  """
  return _masked_psnr(*_check_mask(a, b, mask), num_axes=3)


def pooled_masked_psnr(a, b, mask):
  """Memory score per clip: one MSE over all masked pixels of all frames, then PSNR.

  a, b: [..., T, H, W, C] in [-1, 1], mask [..., T, H, W]; returns [...]. Each masked pixel
  weighs the same, so frames with empty masks add nothing; NaN if the whole clip's mask is empty.
  """
  a, b, mask = _check_mask(a, b, mask)
  if a.ndim < 4:
    raise ValueError(f'expected clips [..., T, H, W, C], got shape {a.shape}; '
                     'use masked_psnr for single frames.')
  return _masked_psnr(a, b, mask, num_axes=4)


def nanmean_over_frames(per_frame, axis: int = -1):
  """Mean of per-frame scores that skips NaN (frames without a score), e.g. [B, T] -> [B].

  NaN where no frame has a score. Note that one inf (an exact frame) makes the mean inf; report
  `pooled_masked_psnr` next to it when that can happen.
  """
  return jnp.nanmean(jnp.asarray(per_frame), axis=axis)


def revisit_references(camera, mask):
  """For a static scene seen through a moving camera, the frame that last showed each revisited
  pixel's scene point before its return: [T, H, W] int, -1 where mask is False.

  camera [T, 2] integer (x, y) positions of frame t's top-left corner in the scene (the cumulative
  frame_cond); mask [T, H, W] the revisit mask, whose runs begin where a scene point returns after
  a gap. Pixel (t, y, x) shows scene point (y + cam_y[t], x + cam_x[t]).
  """
  camera = np.asarray(camera, np.int64)
  t_len, h, w = np.shape(mask)
  low = camera.min(0)
  cam = camera - low                            # >= 0: canvas coordinates
  span = cam.max(0) + (w, h)
  last_seen = np.full((span[1], span[0]), -1, np.int64)
  run_ref = np.full_like(last_seen, -1)         # the sighting before each point's current run
  out = np.full((t_len, h, w), -1, np.int64)
  for t in range(t_len):
    x, y = cam[t]
    view = (slice(y, y + h), slice(x, x + w))
    starts = last_seen[view] != t - 1
    run_ref[view] = np.where(starts, last_seen[view], run_ref[view])
    last_seen[view] = t
    out[t] = np.where(np.asarray(mask[t], bool), run_ref[view], -1)
  return out


def revisit_consistency(video, camera, mask, frames=None):
  """PSNR of a video's revisited pixels against the same scene points in the video's own frame
  that last showed them (`revisit_references`): does what comes back match what it showed
  before? It needs no ground truth, so it scores generated content too (world-model work
  measures this). video [T, H, W, C] in [-1, 1]; camera [T, 2]; mask [T, H, W]; `frames`: only
  these frame indices count (e.g. the generated ones). NaN without a revisited pixel."""
  video = np.asarray(video, np.float64)
  ref = revisit_references(camera, mask)
  if frames is not None:
    keep = np.zeros(len(ref), bool)
    keep[np.asarray(frames)] = True
    ref = np.where(keep[:, None, None], ref, -1)
  t, y, x = np.nonzero(ref >= 0)
  if not t.size:
    return np.nan
  a = ref[t, y, x]
  camera = np.asarray(camera, np.int64)
  ya = y + camera[t, 1] - camera[a, 1]
  xa = x + camera[t, 0] - camera[a, 0]
  mse = np.mean((video[t, y, x] - video[a, ya, xa]) ** 2)
  return float(10 * np.log10(4.0 / mse)) if mse > 0 else np.inf  # peak-to-peak 2 in [-1, 1]
