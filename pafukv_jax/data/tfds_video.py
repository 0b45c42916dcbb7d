"""Any TFDS video dataset by name (moving_mnist, bair_robot_pushing_small, ucf101, ...), prepared.

Nothing is downloaded here: the dataset must already be prepared in data_dir (`tfds build NAME`).
TFDS video datasets are stored as TFRecord, and their Video features need TensorFlow to decode, so
TensorFlow is an optional extra of this project: `pip install tensorflow`. With TensorFlow present,
a TFRecord-only dataset is converted once, in place, to ArrayRecord (random access, which the
deterministic pipeline needs). A dataset already in ArrayRecord whose features need no TensorFlow
(e.g. sequences of Images) is read without it.

Each example gives the first `num_frames` frames of its video feature, centre-cropped and resized
to image_size, as uint8 RGB (grey videos are repeated to 3 channels), and its `label` if it has
one (else 0).
"""

import importlib.util
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from pafukv_jax.data.frames import resize_video

RANDOM_ACCESS_FORMATS = ('array_record', 'parquet')
INSTALL_TF = ('pip install tensorflow (TensorFlow is an optional extra of this project; the '
              'procedural datasets occluded_objects and photo_pan, and video folders, need none)')


def tensorflow_available() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def default_data_dir() -> str:
  """TFDS's default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(tfds.core.constants.DATA_DIR)


def _version_key(path: Path) -> tuple[int, ...]:
  return tuple(int(p) for p in path.name.split('.'))


def find_prepared(name: str, data_dir: str) -> Path:
  """The folder of the newest prepared version of `name` ('dataset[/config][:version]')."""
  base, _, version = name.partition(':')
  root = Path(data_dir).expanduser() / base
  versions = []
  if root.is_dir():
    versions = [d for d in root.iterdir() if re.fullmatch(r'\d+\.\d+\.\d+', d.name)
                and (d / 'dataset_info.json').is_file() and (not version or d.name == version)]
  if not versions:
    dataset = base.split('/')[0]
    raise FileNotFoundError(
        f'The TFDS dataset {name!r} is not prepared in data_dir={data_dir} (no '
        f'{root}/<version>/dataset_info.json{" for version " + version if version else ""}). '
        f'This project never downloads at run time: prepare it once with `pip install tensorflow` '
        f'and `tfds build {dataset} --data_dir={data_dir}` (some datasets, e.g. ucf101, also need '
        'files downloaded by hand: see their TFDS catalog page), or set data_dir to where it is '
        'prepared.')
  return max(versions, key=_version_key)


def stored_formats(version_dir: Path) -> set[str]:
  info = json.loads((version_dir / 'dataset_info.json').read_text())
  return {info.get('fileFormat') or 'tfrecord', *info.get('alternativeFileFormats', [])}


def convert_to_array_record(version_dir: Path) -> None:
  """Adds ArrayRecord files beside the TFRecord ones (needs TensorFlow and a writable folder)."""
  from tensorflow_datasets.scripts.cli import convert_format_utils  # pylint: disable=g-import-not-at-top
  try:
    convert_format_utils.convert_dataset(out_dir=None, out_file_format='array_record',
                                         dataset_version_dir=[os.fspath(version_dir)],
                                         num_workers=1)
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(
        f'Could not convert {version_dir} to ArrayRecord ({type(e).__name__}: {e}). Convert it '
        f'yourself where it is writable: tfds convert_format --dataset_version_dir={version_dir} '
        '--out_file_format=array_record') from e


def _is_missing_tensorflow(error: BaseException) -> bool:
  return isinstance(error, ImportError) and 'tensorflow' in str(error).lower()


def pick_video_key(features: dict[str, tuple]) -> str:
  """The feature that holds the video: the first one shaped [T, H, W, C] (preferring names with
  'video' or 'image_main')."""
  candidates = [k for k, shape in features.items() if isinstance(shape, tuple) and len(shape) == 4]
  if not candidates:
    raise ValueError(f'No video feature [T, H, W, C] among {features}: set video_key.')
  preferred = [k for k in candidates if 'video' in k or 'image_main' in k]
  return (preferred or sorted(candidates))[0]


class TfdsVideo(Sequence):
  """The `split` of a prepared TFDS video dataset as [num_frames, H, W, 3] uint8 clips."""

  def __init__(self, name: str, split: str, data_dir: str | None, num_frames: int,
               image_size: tuple[int, int], video_key: str | None = None):
    data_dir = data_dir or default_data_dir()
    version_dir = find_prepared(name, data_dir)
    if not set(RANDOM_ACCESS_FORMATS) & stored_formats(version_dir):
      if not tensorflow_available():
        raise ImportError(f'The TFDS dataset {name!r} in {version_dir} is stored as TFRecord, '
                          f'which needs TensorFlow to read: {INSTALL_TF}.')
      convert_to_array_record(version_dir)
    try:
      builder = tfds.builder_from_directory(version_dir)
      self.source = builder.as_data_source(split=split)
    except ImportError as e:
      if _is_missing_tensorflow(e):
        raise ImportError(f'Reading the TFDS dataset {name!r} ({version_dir}) needs TensorFlow '
                          f'for its video features: {INSTALL_TF}.') from e
      raise
    except KeyError as e:
      raise ValueError(f'{name!r} has no split {split!r}; it has {list(builder.info.splits)}.'
                       ) from e
    shapes = {k: tuple(v) if isinstance(v, (tuple, list)) else v
              for k, v in builder.info.features.shape.items()}
    self.video_key = video_key or pick_video_key(shapes)
    stored_frames = shapes[self.video_key][0]
    if stored_frames is not None and stored_frames < num_frames:
      raise ValueError(f'The clip length num_frames={num_frames} is longer than the videos of '
                       f'{name!r} ({stored_frames} frames): lower num_frames to at most '
                       f'{stored_frames}.')
    self.has_label = 'label' in shapes
    self.name, self.num_frames, self.image_size = name, num_frames, tuple(image_size)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = self.source[index]
    frames = np.asarray(example[self.video_key])
    if len(frames) < self.num_frames:
      raise ValueError(f'Example {index} of {self.name!r} has {len(frames)} frames, fewer than '
                       f'num_frames={self.num_frames}: lower num_frames.')
    label = np.int64(example['label']) if self.has_label else np.int64(0)
    return {'video': resize_video(frames[:self.num_frames], self.image_size), 'label': label}
