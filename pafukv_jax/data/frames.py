"""Frame conversions shared by the user-video sources: to RGB uint8, centre crop and resize."""

import numpy as np
from PIL import Image


def to_rgb_uint8(frame: np.ndarray) -> np.ndarray:
  """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (values 0..255, or bool) -> uint8 [H, W, 3]."""
  frame = np.asarray(frame)
  if frame.dtype == bool:
    frame = frame.astype(np.uint8) * 255
  elif frame.dtype != np.uint8:   # e.g. 16-bit decoders: clip to 0..255
    frame = np.clip(np.round(frame), 0, 255).astype(np.uint8)
  if frame.ndim == 2:
    frame = frame[..., None]
  if frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4):
    raise ValueError(f'Expected a frame [H, W] or [H, W, 1|3|4]; got shape {frame.shape}.')
  if frame.shape[-1] == 1:
    frame = np.repeat(frame, 3, axis=-1)
  return frame[..., :3]


def crop_resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 [h, w, 3] -> [H, W, 3]: the largest centred crop with the target aspect ratio, resized
  (antialiased bilinear), so that nothing is stretched."""
  height, width = size
  h, w = frame.shape[:2]
  if (h, w) == (height, width):
    return frame
  crop_h, crop_w = min(h, round(w * height / width)), min(w, round(h * width / height))
  top, left = (h - crop_h) // 2, (w - crop_w) // 2
  image = Image.fromarray(np.ascontiguousarray(frame[top:top + crop_h, left:left + crop_w]))
  return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def resize_video(frames, size: tuple[int, int]) -> np.ndarray:
  """Iterable of frames (any of to_rgb_uint8's layouts) -> uint8 [T, H, W, 3]."""
  return np.stack([crop_resize(to_rgb_uint8(f), size) for f in frames])
