"""What the procedural TFDS builders share: the sizes config, the features, seeding, preparing.

Every example is a pure function of (seed, split, index): its generator is seeded with
`np.random.default_rng([seed, split_id, index])`, so the same config gives the same examples, the
splits draw from disjoint seed streams, and a larger split starts with the examples of a smaller one.
(Same config: the same decoded examples in the same order. The record files themselves can differ
byte-wise between runs: protobuf writes each example's feature map in a per-process order.)

Features of every example (the reading side converts `video` to float32 in [-1, 1]):
  video         uint8 [T, H, W, 3]     RGB, 0..255
  label         int64 []               the class (each builder documents its meaning)
  frame_cond    float32 [T, 2]         camera displacement (dx, dy) in pixels since the previous
                                        frame; frame 0 and a static camera give 0
  revisit_mask  bool [T, H, W]         content back in view after more than `revisit_horizon`
                                        frames unseen, while it stays in view (see revisit.py)
"""

import contextlib
import dataclasses
import inspect
import io
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from pafukv_jax.data.revisit import revisit_mask

# Arrays are stored as raw bytes (ArrayRecord compresses them): TFDS's default encoding writes
# one int64 per uint8 pixel and dominates the generation time.
BYTES = tfds.features.Encoding.BYTES
SPLIT_IDS = {'train': 0, 'test': 1}   # the second entry of every example's seed
FRAME_COND_DIM = 2


@dataclasses.dataclass(eq=False)
class ProceduralConfig(tfds.core.BuilderConfig):
  """Sizes of a procedural dataset. Its name encodes every field: each size has its own folder."""
  num_frames: int = 32
  height: int = 32
  width: int = 32
  train_examples: int = 5000
  test_examples: int = 500
  revisit_horizon: int = 8      # N: content unseen for more than N frames counts as revisited
  seed: int = 0
  trajectories: str = ''        # photo_pan: camera trajectory families drawn ('' = its default)
  camera_step: int = 1          # photo_pan: the camera stops on multiples of this many pixels


def procedural_config(num_frames: int = 32, height: int = 32, width: int = 32,
                      train_examples: int = 5000, test_examples: int = 500,
                      revisit_horizon: int = 8, seed: int = 0,
                      trajectories: str = '', camera_step: int = 1) -> ProceduralConfig:
  sizes = dict(num_frames=num_frames, height=height, width=width, train_examples=train_examples,
               test_examples=test_examples, revisit_horizon=revisit_horizon, seed=seed)
  sizes = {k: int(v) for k, v in sizes.items()}
  minimum = dict(num_frames=2, height=8, width=8, train_examples=1, test_examples=1,
                 revisit_horizon=1, seed=0, camera_step=1)
  sizes['camera_step'] = int(camera_step)
  for key, low in minimum.items():
    if sizes[key] < low:
      raise ValueError(f'{key} must be >= {low}; got {sizes[key]}.')
  name = ('t{num_frames}_{height}x{width}_train{train_examples}_test{test_examples}'
          '_n{revisit_horizon}_seed{seed}').format(**sizes)
  trajectories = ','.join(n.strip() for n in trajectories.split(',') if n.strip())
  if trajectories:  # '' keeps the names (and folders) of datasets made before the field existed
    name += '_' + trajectories.replace(',', '-')
  if sizes['camera_step'] != 1:  # likewise: 1 keeps the older names
    name += f'_step{sizes["camera_step"]}'
  return ProceduralConfig(name=name, trajectories=trajectories, **sizes)


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLIT_IDS[split], index])


def check_writable(directory: str) -> None:
  """Raises a clear error unless `directory` exists (or can be made) and accepts new files."""
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory):
      pass
  except OSError as e:
    raise PermissionError(
        f'Cannot write the dataset into data_dir={directory!r} ({type(e).__name__}: {e}). '
        'Set the data config\'s data_dir to a writable directory, or prepare the '
        'dataset once where it is writable and point data_dir there.') from e


class ProceduralBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the procedural builders: subclasses define `make_example(rng, split, config)`.

  Construct with a `ProceduralConfig` or with its fields as keyword arguments:
    OccludedObjects(data_dir=d, num_frames=8, height=16, width=16, train_examples=4, ...)
  Bump VERSION whenever the generated content changes, so that old folders are not reused.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  # True: a still scene seen through a moving camera (frame_cond), so a pixel's scene point is
  # its position plus the camera's and revisits can be scored against the video's own frames
  STATIC_SCENE = False
  # No predefined configs: every size is a custom config named after its fields.

  def __init__(self, *, data_dir: str | None = None, config: ProceduralConfig | None = None,
               file_format: str = 'array_record', version: Any = None, **sizes):
    if config is not None and sizes:
      raise ValueError(f'Give either config or sizes, not both (sizes: {sorted(sizes)}).')
    if isinstance(config, str):
      raise ValueError(f'config must be a ProceduralConfig (from procedural_config(...)), not the '
                       f'name {config!r}: pass the sizes as keyword arguments instead.')
    config = config if config is not None else procedural_config(**sizes)
    self.check_config(config)
    super().__init__(data_dir=data_dir, config=config, file_format=file_format, version=version)

  def is_prepared(self) -> bool:
    with quiet_tfds():  # TFDS warns of every variant folder without dataset_info.json
      return super().is_prepared()

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the `importlib_resources` backport on Python >= 3.9 (TFDS 4.9.10
    # declares it only for < 3.9); the defining module's file is all it wants.
    return epath.Path(inspect.getfile(cls))

  # Subclasses: their config's check, extra features beside the shared ones, the generator.
  @classmethod
  def check_config(cls, config: ProceduralConfig) -> None:
    if config.trajectories or config.camera_step != 1:
      raise ValueError(f'{cls.__name__} has no camera: leave trajectories empty and camera_step '
                       f'1 (got {config.trajectories!r}, {config.camera_step}; photo_pan has '
                       'them).')

  def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
    return {}

  @classmethod
  def make_example(cls, rng: np.random.Generator, split: str,
                   config: ProceduralConfig) -> dict[str, Any]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    t, h, w = c.num_frames, c.height, c.width
    features = {
        'video': tfds.features.Tensor(shape=(t, h, w, 3), dtype=np.uint8, encoding=BYTES),
        'label': tfds.features.Tensor(shape=(), dtype=np.int64),
        'frame_cond': tfds.features.Tensor(shape=(t, FRAME_COND_DIM), dtype=np.float32,
                                           encoding=BYTES),
        'revisit_mask': tfds.features.Tensor(shape=(t, h, w), dtype=np.bool_, encoding=BYTES),
        **self.extra_features(),
    }
    return tfds.core.DatasetInfo(
        builder=self, description=(type(self).__doc__ or '').strip(),
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True)  # record i is example i: the pipeline does the shuffling

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    return {split: self._generate_examples(split) for split in SPLIT_IDS}

  def _generate_examples(self, split: str):
    c = self.builder_config
    count = c.train_examples if split == 'train' else c.test_examples
    for index in range(count):
      yield index, self.make_example(example_rng(c.seed, split, index), split, c)


def finish_example(frames: np.ndarray, content_ids: np.ndarray, frame_cond: np.ndarray,
                   label: int, horizon: int, **extra) -> dict[str, Any]:
  """The stored example, with the revisit mask computed from the per-pixel content ids."""
  return dict(video=frames.astype(np.uint8), label=np.int64(label),
              frame_cond=frame_cond.astype(np.float32),
              revisit_mask=revisit_mask(content_ids, horizon), **extra)


@contextlib.contextmanager
def quiet_tfds():
  """TFDS's messages about a dataset made here, silenced: "Using custom data configuration",
  "Variant folder ... has no dataset_info.json", "Downloading and preparing dataset Unknown
  size" and its progress bars say nothing true of a procedural dataset (`prepare` says what
  it makes in one line instead). Errors still surface. Nested uses (a builder's is_prepared
  inside a preparation) leave the settings to the outermost one, which restores them."""
  global _quiet_depth
  if _quiet_depth:
    yield
    return
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  tfds.disable_progress_bar()
  _quiet_depth += 1
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    _quiet_depth -= 1
    absl_logging.set_verbosity(level)
    tfds.enable_progress_bar()


_quiet_depth = 0


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Generates the dataset into its data_dir unless it is there already; returns the builder."""
  if not builder.is_prepared():
    check_writable(os.fspath(builder.data_dir_root))
    c = builder.builder_config
    print(f'Preparing {builder.name} ({c.train_examples} train + {c.test_examples} test clips of '
          f'{c.num_frames} frames, {c.height}x{c.width}) in {builder.data_dir} ...',
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
      with quiet_tfds(), _shuffle_in_memory(c):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except BaseException:
      _remove_partial(builder)
      raise
    print(f'Prepared {builder.name} in {time.perf_counter() - start:.1f} s.', file=sys.stderr)
  return builder


@contextlib.contextmanager
def _shuffle_in_memory(config):
  """TFDS shuffles a split in memory up to 1 GB and spills a larger one to disk through
  tf.io.gfile, which needs TensorFlow (a 64-frame photo_pan train split is 1.3 GB). The examples
  of a procedural split are made in this process and fit in its memory, so the buffer is raised
  to the split's size while it is written."""
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
  per_clip = config.num_frames * config.height * config.width * 5  # video, mask, encoding
  default = shuffle.MAX_MEM_BUFFER_SIZE
  shuffle.MAX_MEM_BUFFER_SIZE = max(default, 2 * per_clip * max(config.train_examples,
                                                                config.test_examples))
  try:
    yield
  finally:
    shuffle.MAX_MEM_BUFFER_SIZE = default


def _remove_partial(builder) -> None:
  """What a failed or interrupted preparation leaves (TFDS's `incomplete.*` folder, an empty
  version folder), removed: the next run then prepares the dataset afresh."""
  version_dir = epath.Path(builder.data_dir)
  for partial in version_dir.parent.glob('incomplete.*'):
    shutil.rmtree(partial, ignore_errors=True)
  for folder in (version_dir, version_dir.parent, version_dir.parent.parent):  # .../name/config/v
    if folder.is_dir() and not any(folder.iterdir()):
      folder.rmdir()
