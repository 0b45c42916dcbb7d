"""Writing videos in [-1, 1]: GIFs, labelled side-by-side comparisons, and .gif/.mp4 files."""

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_MARGIN = 2  # pixels around a label's text in its strip
SEPARATOR_WIDTH = 2  # white pixels between the panels of side_by_side


def to_uint8(video: np.ndarray) -> np.ndarray:
  return np.round((np.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


PIXEL_CHANNELS = (1, 3)  # videos of other widths are latents


def viewable(video: np.ndarray) -> np.ndarray:
  """video [T, H, W, C] as pixels in [-1, 1]: itself for 1 or 3 channels; for latents (any other
  C), a preview of their first 3 channels, each stretched from its 1st to 99th percentile over the
  video. Not a decoding (that needs the VAE): it shows where content is and how it moves."""
  video = np.asarray(video, np.float32)
  if video.shape[-1] in PIXEL_CHANNELS:
    return video
  first = video[..., :3]
  if first.shape[-1] < 3:
    first = np.concatenate([first] + [first[..., -1:]] * (3 - first.shape[-1]), axis=-1)
  lo, hi = np.percentile(first, [1, 99], axis=(0, 1, 2), keepdims=True)
  return np.clip(2 * (first - lo) / np.maximum(hi - lo, 1e-6) - 1, -1, 1)


def write_gif(path: str, video: np.ndarray, fps: int = 8, scale: int = 1) -> None:
  """video [T, H, W, C] float in [-1, 1] (C = 1 or 3); nearest-neighbour upscaling by `scale`."""
  frames = to_uint8(np.asarray(video))
  if scale > 1:
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
  if frames.shape[-1] == 1:
    frames = frames[..., 0]
  images = [Image.fromarray(f) for f in frames]
  images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


GIVEN_COLOUR, GENERATED_COLOUR = (200, 200, 200), (255, 150, 40)  # the frame strip's text


def side_by_side(videos: dict, scale: int = 1, given_frames: int | None = None) -> np.ndarray:
  """Panels left to right in dict order, each labelled with its name: uint8 [T, H', W', 3].

  given_frames: with a number, a strip under the panels says of every frame whether it was
  given (the context, grey) or generated (orange), and its index.

  videos: {name: [T, H, W, C] float in [-1, 1] (C = 1 or 3)}, all of one T, H and W. Each panel is
  upscaled by `scale` (nearest) under a black strip with its name in white (PIL's default font,
  cut off at the panel's edge); panels are separated by SEPARATOR_WIDTH white columns.
  """
  if not videos:
    raise ValueError('videos is empty; pass {name: video [T, H, W, C]} with at least one entry.')
  if not (isinstance(scale, (int, np.integer)) and scale >= 1):
    raise ValueError(f'scale must be an integer >= 1, got {scale!r}.')
  panels = {}
  for name, video in videos.items():
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] not in (1, 3):
      raise ValueError(f'video {name!r} must be [T, H, W, C] with C = 1 or 3, got shape '
                       f'{video.shape}.')
    frames = to_uint8(video).repeat(scale, axis=1).repeat(scale, axis=2)
    panels[name] = np.broadcast_to(frames, frames.shape[:-1] + (3,))
  shapes = {name: panel.shape[:3] for name, panel in panels.items()}
  if len(set(shapes.values())) > 1:
    raise ValueError(f'all videos need the same [T, H, W]; got (after upscaling) {shapes}.')
  num_frames, height, width, _ = next(iter(panels.values())).shape

  font = ImageFont.load_default()
  strip_height = max(font.getbbox(name + 'Ag')[3] for name in panels) + 2 * LABEL_MARGIN
  columns = []
  for name, frames in panels.items():
    if columns:
      separator = (num_frames, strip_height + height, SEPARATOR_WIDTH, 3)
      columns.append(np.full(separator, 255, np.uint8))
    strip = Image.new('RGB', (width, strip_height))
    ImageDraw.Draw(strip).text((LABEL_MARGIN, LABEL_MARGIN), name, fill=(255, 255, 255), font=font)
    strip = np.broadcast_to(np.asarray(strip), (num_frames, strip_height, width, 3))
    columns.append(np.concatenate([strip, frames], axis=1))
  out = np.concatenate(columns, axis=2)
  if given_frames is None:
    return out
  below = np.zeros((num_frames, strip_height, out.shape[2], 3), np.uint8)
  for t in range(num_frames):
    given = t < given_frames
    text = f'frame {t + 1}/{num_frames}: {"given" if given else "generated"}'
    image = Image.new('RGB', (out.shape[2], strip_height))
    ImageDraw.Draw(image).text((LABEL_MARGIN, LABEL_MARGIN), text, font=font,
                               fill=GIVEN_COLOUR if given else GENERATED_COLOUR)
    below[t] = np.asarray(image)
  return np.concatenate([out, below], axis=1)


def write_video(path: str, frames: np.ndarray, fps: int = 8) -> None:
  """Writes uint8 frames [T, H, W, C] (C = 1 or 3) as .gif (Pillow) or .mp4 (H.264, imageio-ffmpeg).

  GIFs are quantised to 256 colours, and Pillow merges identical consecutive frames (the playback
  is unchanged). MP4 frames of odd height or width get their last row or column repeated, as
  H.264 in yuv420p needs even sizes.
  """
  frames = np.asarray(frames)
  if (frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3)
      or not len(frames)):
    raise ValueError(f'frames must be uint8 [T, H, W, C] with T >= 1 and C = 1 or 3, got '
                     f'{frames.dtype} {frames.shape}; convert videos in [-1, 1] with to_uint8.')
  if not fps > 0:
    raise ValueError(f'fps must be positive, got {fps}.')
  extension = os.path.splitext(path)[1].lower()
  if extension == '.gif':
    images = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0)
  elif extension == '.mp4':
    import imageio.v3 as iio  # only .mp4 needs imageio (and imageio-ffmpeg)
    frames = np.broadcast_to(frames, frames.shape[:-1] + (3,))
    pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
    frames = np.pad(frames, pad, mode='edge')
    # The legacy FFMPEG plugin by name (another one is picked if PyAV is installed);
    # macro_block_size=1 stops it from resizing frames to multiples of 16.
    iio.imwrite(path, frames, plugin='FFMPEG', extension='.mp4', fps=fps, codec='libx264',
                quality=8, macro_block_size=1)
  else:
    raise ValueError(f'cannot write {path!r}: the extension must be .gif or .mp4, got '
                     f'{extension!r}.')
