"""A folder of the user's own videos as a random-access dataset of T-frame clips.

Every video file under the folder (recursively; VIDEO_EXTENSIONS) is decoded once with imageio,
centre-cropped to the target aspect ratio and resized, and kept in memory as uint8 (so memory is
total frames x H x W x 3 bytes). Each video gives the clips starting at 0, clip_stride,
2 * clip_stride, ... that fit in it. The label of a clip is the index of its video's sub-folder
among the sorted sub-folders (0 for every file when the videos sit directly in the folder), as in
an image-folder dataset. A video may carry its prompt's embedding in NAME.npz beside it
(`prompt_embedding` [L, D], for a model with num_classes=0). GIFs are read by Pillow; mp4, avi,
mov, mkv, webm... need ffmpeg:
`pip install imageio-ffmpeg`.
"""

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pafukv_jax import conditioning
from pafukv_jax.data.frames import resize_video

VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.avi', '.mkv', '.webm', '.mpg', '.mpeg', '.wmv',
                    '.flv', '.gif')
SPLIT_FOLDERS = ('train', 'validation', 'test')


def read_video(path: str | os.PathLike, size: tuple[int, int],
               max_frames: int | None = None) -> np.ndarray:
  """uint8 [T, H, W, 3] (the first max_frames frames only, if given: the rest is not decoded); a
  ValueError that names the file and the fix when it cannot be read."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  path = Path(path)
  try:
    frames = resize_video(itertools.islice(iio.imiter(path), max_frames), size)
  except Exception as e:  # pylint: disable=broad-except  (decoders raise anything)
    hint = ''
    if path.suffix.lower() != '.gif' and not _has_ffmpeg():
      hint = ' Reading this format needs ffmpeg: pip install imageio-ffmpeg.'
    raise ValueError(f'Cannot read the video {path} ({type(e).__name__}: '
                     f'{str(e).strip().splitlines()[0] if str(e).strip() else e!r}).{hint} '
                     'Re-encode it (e.g. ffmpeg -i in.xxx out.mp4) or remove it from the folder.'
                     ) from e
  return frames


def _has_ffmpeg() -> bool:
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


def folder_for_split(folder: str | os.PathLike, split: str) -> Path:
  """`folder/split` when the folder is divided into split sub-folders, else the folder itself."""
  folder = Path(folder).expanduser()
  if not folder.is_dir():
    raise FileNotFoundError(f'The video folder {folder} does not exist (data.folder): point it '
                            'at a directory of video files.')
  if any((folder / s).is_dir() for s in SPLIT_FOLDERS):
    if not (folder / split).is_dir():
      raise FileNotFoundError(f'{folder} is divided into split folders but has no {split}/: add '
                              f'{folder / split} or ask for another split.')
    return folder / split
  return folder


class VideoFolder(Sequence):
  """Clips of `num_frames` frames of size `image_size` (H, W) from the videos under `folder`.

  clip_stride: frames between the starts of consecutive clips of one video (default num_frames:
  clips do not overlap). frame_step: keep every frame_step-th frame (temporal subsampling).
  skip_short_videos: leave out videos shorter than a clip instead of raising an error.
  """

  def __init__(self, folder: str | os.PathLike, num_frames: int, image_size: tuple[int, int], *,
               clip_stride: int | None = None, frame_step: int = 1,
               skip_short_videos: bool = False, prompt_tokens: int = 512):
    folder = Path(folder).expanduser()
    if not folder.is_dir():
      raise FileNotFoundError(f'The video folder {folder} does not exist: point data.folder at '
                              'a directory of video files.')
    if num_frames < 1 or frame_step < 1 or (clip_stride is not None and clip_stride < 1):
      raise ValueError('num_frames, frame_step and clip_stride must be >= 1.')
    files = sorted(p for p in folder.rglob('*')
                   if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
      raise FileNotFoundError(f'No video files under {folder} (looked for '
                              f'{", ".join(VIDEO_EXTENSIONS)}).')
    self.folder, self.num_frames, self.frame_step = folder, num_frames, frame_step
    self.image_size = tuple(image_size)
    span = (num_frames - 1) * frame_step + 1         # frames one clip covers
    stride = clip_stride or num_frames * frame_step

    videos = [read_video(p, self.image_size) for p in files]
    too_short = [(p, len(v)) for p, v in zip(files, videos) if len(v) < span]
    if too_short and not skip_short_videos:
      listed = ', '.join(f'{p.relative_to(folder)} ({n} frames)' for p, n in too_short[:5])
      raise ValueError(
          f'The clip length ({num_frames} frames, frame_step {frame_step}: {span} frames) is '
          f'longer than {len(too_short)} of the {len(files)} videos: {listed}. Lower num_frames '
          '(or frame_step), remove those files, or pass skip_short_videos=True.')
    kept = [(p, v) for p, v in zip(files, videos) if len(v) >= span]
    if not kept:
      raise ValueError(f'No video under {folder} has the {span} frames a clip needs.')
    classes = sorted({p.parent.relative_to(folder).as_posix() for p, _ in kept})
    self.class_names = classes
    self.files = [p for p, _ in kept]
    self.videos = [v for _, v in kept]
    self.labels = [classes.index(p.parent.relative_to(folder).as_posix()) for p, _ in kept]
    self.prompts = _prompts(self.files, prompt_tokens)
    self.clips = [(i, start) for i, v in enumerate(self.videos)
                  for start in range(0, len(v) - span + 1, stride)]
    self._span = span

  def __len__(self) -> int:
    return len(self.clips)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    video, start = self.clips[index]
    clip = self.videos[video][start:start + self._span:self.frame_step]
    out = {'video': clip, 'label': np.int64(self.labels[video])}
    if self.prompts is not None:
      out[conditioning.PROMPT_KEY] = self.prompts[video]
    return out


def _prompts(files, tokens: int):
  """Each video's prompt embedding from NAME.npz beside NAME.mp4 (`prompt_embedding` [L, D],
  zero-padded to `tokens`), or None when no video has one; some but not all is an error."""
  sidecars = [p.with_suffix('.npz') for p in files]
  have = [s.is_file() for s in sidecars]
  if not any(have):
    return None
  if not all(have):
    missing = [str(p) for p, h in zip(files, have) if not h]
    raise ValueError(f'{sum(have)} of {len(files)} videos have a prompt embedding (NAME.npz beside '
                     f'NAME.mp4); these do not: {", ".join(missing[:5])}. Give every video one, '
                     'or none.')
  out = []
  for path in sidecars:
    with np.load(path) as f:
      if conditioning.PROMPT_KEY not in f:
        raise ValueError(f'{path} holds {sorted(f)}, not `{conditioning.PROMPT_KEY}` [L, D].')
      out.append(conditioning.pad_prompt(f[conditioning.PROMPT_KEY], tokens, str(path)))
  return out
