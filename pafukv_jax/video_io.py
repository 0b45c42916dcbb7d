"""Writing videos in [-1, 1] as GIFs."""

import numpy as np
from PIL import Image


def to_uint8(video: np.ndarray) -> np.ndarray:
  return np.round((np.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def write_gif(path: str, video: np.ndarray, fps: int = 8, scale: int = 1) -> None:
  """video [T, H, W, C] float in [-1, 1] (C = 1 or 3); nearest-neighbour upscaling by `scale`."""
  frames = to_uint8(np.asarray(video))
  if scale > 1:
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
  if frames.shape[-1] == 1:
    frames = frames[..., 0]
  images = [Image.fromarray(f) for f in frames]
  images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
