"""A data config (configs/data.py) -> a random-access dataset (a Sequence of example dicts).

config.dataset picks the source:
  'occluded_objects', 'photo_pan'  procedural TFDS builders, generated into data_dir when missing
                                   (prepare=True) from the config's sizes and seed;
  'folder'                         the videos under data.folder (or its `<split>/` sub-folder);
  'latents'                        .npz clips under data.folder: VAE latents and their prompt
                                   embeddings, computed outside (data/latents.py);
  'tfds:NAME'                      a prepared TFDS video dataset, e.g. 'tfds:moving_mnist'.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from pafukv_jax.data import folder as folder_lib
from pafukv_jax.data import latents
from pafukv_jax.data import pipeline
from pafukv_jax.data import procedural
from pafukv_jax.data import tfds_video
from pafukv_jax.data.occluded_objects import OccludedObjects
from pafukv_jax.data.photo_pan import PhotoPan

PROCEDURAL_BUILDERS = {'occluded_objects': OccludedObjects, 'photo_pan': PhotoPan}


def procedural_builder(cfg: ml_collections.ConfigDict) -> procedural.ProceduralBuilder:
  """The builder of cfg.dataset with the config's sizes (not prepared yet)."""
  height, width = cfg.image_size
  config = procedural.procedural_config(
      num_frames=cfg.num_frames, height=height, width=width, train_examples=cfg.train_examples,
      test_examples=cfg.test_examples, revisit_horizon=cfg.revisit_horizon, seed=cfg.seed,
      trajectories=cfg.get('trajectories', ''), camera_step=cfg.get('camera_step', 1))
  with procedural.quiet_tfds():
    return PROCEDURAL_BUILDERS[cfg.dataset](data_dir=cfg.data_dir or None, config=config)


def open_source(cfg: ml_collections.ConfigDict, split: str = 'train'
                ) -> Sequence[Mapping[str, Any]]:
  """The `split` of the dataset that cfg describes, ready for pipeline.Pipeline."""
  name = cfg.dataset
  if name in PROCEDURAL_BUILDERS:
    builder = procedural_builder(cfg)
    if split not in procedural.SPLIT_IDS:
      raise ValueError(f'{name} has splits {list(procedural.SPLIT_IDS)}, not {split!r}.')
    if not builder.is_prepared():
      if not cfg.get('prepare', True):
        raise FileNotFoundError(
            f'The dataset {name} ({builder.builder_config.name}) is not prepared in '
            f'{builder.data_dir}: set prepare=True to generate it there, or point data_dir at '
            'the folder where it was generated.')
      if jax.process_count() > 1:
        # Process 0 writes first, so hosts sharing a disk do not race on the same folder; hosts
        # with their own disks then generate their own (identical) copy.
        if jax.process_index() == 0:
          procedural.prepare(builder)
        multihost_utils.sync_global_devices(f'prepare {builder.data_dir}')
        builder = procedural_builder(cfg)
      procedural.prepare(builder)
    return builder.as_data_source(split=split)
  if name == 'folder':
    if not cfg.get('folder'):
      raise ValueError("dataset='folder' needs data.folder: the directory of your videos.")
    return folder_lib.VideoFolder(folder_lib.folder_for_split(cfg.folder, split),
                                  cfg.num_frames, tuple(cfg.image_size),
                                  prompt_tokens=cfg.get('prompt_tokens', 512))
  if name == 'latents':
    if not cfg.get('folder'):
      raise ValueError("dataset='latents' needs data.folder: the directory of .npz clips.")
    return latents.LatentFolder(folder_lib.folder_for_split(cfg.folder, split), cfg.num_frames,
                                tuple(cfg.image_size), prompt_tokens=cfg.get('prompt_tokens', 512))
  if name.startswith('tfds:'):
    return tfds_video.TfdsVideo(name[len('tfds:'):], split, cfg.data_dir or None, cfg.num_frames,
                                tuple(cfg.image_size), video_key=cfg.get('video_key') or None)
  raise ValueError(f'Unknown dataset {name!r}: use one of {sorted(PROCEDURAL_BUILDERS)}, '
                   "'folder' or 'latents' (with data.folder) or 'tfds:NAME' (a prepared TFDS dataset).")


def static_scene(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the dataset is a still scene seen by a moving camera (photo_pan)."""
  return cfg.dataset in PROCEDURAL_BUILDERS and PROCEDURAL_BUILDERS[cfg.dataset].STATIC_SCENE


def frame_cond_dim(cfg: ml_collections.ConfigDict) -> int | None:
  """The width of the dataset's per-frame `frame_cond` (0: it has none), known without reading
  its clips; None where that cannot be told (an unknown dataset name, errors come later)."""
  if cfg.dataset in PROCEDURAL_BUILDERS:
    return 2  # (dx, dy) camera motion
  if cfg.dataset == 'folder' or cfg.dataset.startswith('tfds:'):
    return 0
  if cfg.dataset == 'latents' and cfg.get('folder'):
    files = sorted(Path(cfg.folder).expanduser().rglob('*.npz'))
    if files:
      shape = latents.npz_shapes(files[0]).get('frame_cond')
      return 0 if shape is None else int(shape[-1])
  return None


def first_clips(cfg: ml_collections.ConfigDict, split: str, num_clips: int) -> dict[str, np.ndarray]:
  """The first num_clips examples of cfg's `split` (fewer if it is smaller), each feature stacked
  over clips; `video` as float32: pixels in [-1, 1], latents (dataset='latents') as stored."""
  source = open_source(_only_what_is_read(cfg, split, num_clips), split)
  rows = [source[i] for i in range(min(num_clips, len(source)))]
  clips = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
  if clips['video'].dtype == np.uint8:  # pixels as stored; latents are float already
    clips['video'] = pipeline.uint8_to_float(clips['video'])
  return clips


def _only_what_is_read(cfg, split: str, num_clips: int):
  """cfg, or where its procedural dataset is not prepared yet, the same dataset with only the
  clips that are read: example i of a split is the same at any split size (it is a function of
  seed, split and i), so the first num_clips of a test split need no 5,000 training clips."""
  if cfg.dataset not in PROCEDURAL_BUILDERS or procedural_builder(cfg).is_prepared():
    return cfg
  small = cfg.copy_and_resolve_references()
  other = 'train' if split == 'test' else 'test'
  small[f'{split}_examples'] = min(int(cfg[f'{split}_examples']), max(1, num_clips))
  small[f'{other}_examples'] = 1
  return small


def make_pipeline(cfg: ml_collections.ConfigDict, split: str = 'train', *, mesh=None,
                  data_axes: Sequence[str] = ('data',), num_epochs: int | None = None,
                  shuffle: bool | None = None) -> pipeline.Pipeline:
  """The pipeline of cfg's `split`: global batches of cfg.batch_size on `mesh`.

  Train-like use (the default for 'train'): shuffled, repeated forever. Evaluation: pass
  num_epochs=1 (and shuffle=False for a fixed order); the last batch is padded, `valid` says which
  rows are real.
  """
  return pipeline.Pipeline(
      open_source(cfg, split), cfg.batch_size, seed=cfg.shuffle_seed,
      shuffle=(split == 'train') if shuffle is None else shuffle, num_epochs=num_epochs,
      mesh=mesh, data_axes=data_axes)
