"""What a generation run is given, read and checked before any work: the context frames to
prefill (from an .npz or a split of the data), every frame's camera path for a model with
frame_cond, and each sample's conditioning (labels or prompt embeddings)."""

import os
import sys

import numpy as np
from absl import logging

from pafukv_jax import conditioning
from pafukv_jax.models.dit import DiTConfig


CONTEXT_SPLITS = ('test', 'train')  # config.context naming a split of config.data


def dataset_context(data_cfg, split: str, num_clips: int, num_frames: int,
                    context_frames: int) -> dict:
  """The first num_clips clips (fewer if the split is smaller) of a split of `data_cfg`:
  {'videos': [N, context_frames, H, W, C] in [-1, 1], and where the dataset has them 'labels'
  [N], 'prompts' [N, L, D] (prompt embeddings) and 'frame_cond' [N, num_frames, D]}. The clips
  may be shorter than the video: only the context is read from them, and the camera path of the
  later frames where the camera is still (all frame_cond zero)."""
  from pafukv_jax import data  # tensorflow_datasets is imported only when a dataset is read
  if data_cfg.num_frames < context_frames:
    raise ValueError(f'config.context={split!r}: data.num_frames={data_cfg.num_frames} is shorter '
                     f'than context_frames={context_frames}; set --config.data.num_frames='
                     f'{context_frames} or fewer context frames.')
  clips = data.first_clips(data_cfg, split, num_clips)
  out = dict(videos=clips['video'][:, :context_frames])
  if 'label' in clips:
    out['labels'] = clips['label'].astype(np.int32)
  if conditioning.PROMPT_KEY in clips:
    out['prompts'] = clips[conditioning.PROMPT_KEY]
  if 'frame_cond' in clips:  # procedural datasets; a folder of videos has no camera motion
    cond = clips['frame_cond'][:, :num_frames]
    missing = num_frames - cond.shape[1]
    if missing and np.any(cond):
      raise ValueError(
          f'config.context={split!r}: the camera moves in these clips, and its path is known for '
          f'their {cond.shape[1]} frames only, not the {num_frames} generated: set '
          f'--config.data.num_frames={num_frames} (only the first {num_clips} clips of the '
          f'{split} split are made for it).')
    out['frame_cond'] = np.pad(cond, ((0, 0), (0, missing), (0, 0)))  # a still camera stays still
  return out


def load_context(cfg, model_cfg: DiTConfig):
  """(videos [N, context_frames, H, W, C], frame_cond [N, T, D], conditioning: labels [N] or
  prompt embeddings [N, L, D]; each or None) from cfg.context: an .npz file, or 'test' /
  'train', the first num_samples clips of that split of cfg.data (whose labels or prompt
  embeddings then condition the samples)."""
  need_cond = model_cfg.frame_cond_dim > 0
  if not cfg.context_frames and not need_cond:
    return None, None, None
  if need_cond and not cfg.context and not cfg.context_frames:
    logging.warning('No config.context with `frame_cond`: generating with a static camera '
                    '(frame_cond = 0).')
    return None, np.zeros((1, cfg.num_frames, model_cfg.frame_cond_dim), np.float32), None
  if not cfg.context:
    raise ValueError('config.context must name an .npz file with `videos` (and `frame_cond` for '
                     f'a model with frame_cond_dim > 0), or a split {CONTEXT_SPLITS} of config.data, '
                     'when context_frames > 0 or frame_cond_dim > 0.')
  if cfg.context in CONTEXT_SPLITS:
    data = dataset_context(cfg.data, cfg.context, cfg.num_samples, cfg.num_frames,
                           cfg.context_frames)
    if len(data['videos']) < cfg.num_samples:
      print(f'generate: the {cfg.context} split has {len(data["videos"])} clips for '
            f'{cfg.num_samples} samples: sample i continues clip i mod {len(data["videos"])}, '
            'so later samples reuse clips (with other noise).', file=sys.stderr)
  elif not os.path.isfile(cfg.context):
    raise FileNotFoundError(f'config.context file {cfg.context} does not exist (give an .npz file '
                            f'or a split {CONTEXT_SPLITS} of config.data).')
  else:
    data = np.load(cfg.context)
  frame_shape = (*model_cfg.image_size, model_cfg.channels)
  videos = data['videos'] if 'videos' in data else None
  if cfg.context_frames:
    if videos is None or videos.ndim != 5 or videos.shape[2:] != frame_shape \
        or videos.shape[1] < cfg.context_frames:
      got = None if videos is None else videos.shape
      raise ValueError(f'{cfg.context}: `videos` must be [N, >={cfg.context_frames}, '
                       f'{", ".join(map(str, frame_shape))}], got {got}.')
    videos = videos[:, :cfg.context_frames].astype(np.float32)
  cond = None
  if need_cond:
    cond = data['frame_cond'] if 'frame_cond' in data else None
    want = (cfg.num_frames, model_cfg.frame_cond_dim)
    if cond is None and cfg.context in CONTEXT_SPLITS:  # a dataset without camera motion
      logging.warning(f'The {cfg.context} clips of data.dataset={cfg.data.dataset!r} carry no '
                      'camera motion (frame_cond): generating with a still camera (frame_cond = 0).')
      cond = np.zeros((len(data['videos']), *want), np.float32)
    if cond is None or cond.ndim != 3 or cond.shape[1:] != want:
      raise ValueError(f'{cfg.context}: `frame_cond` must be [N, {want[0]}, {want[1]}], '
                       f'got {None if cond is None else cond.shape}.')
    cond = cond.astype(np.float32)
  given = None
  if cfg.context in CONTEXT_SPLITS:
    given = data.get('labels') if model_cfg.num_classes else data.get('prompts')
  return (videos if cfg.context_frames else None), cond, given


def sample_conditioning(cfg, model_cfg: DiTConfig, context_cond=None) -> tuple[np.ndarray, int]:
  """(What each sample is conditioned on, the rows N of config.prompts or 0). A model with
  prompt embeddings (num_classes=0): those of config.prompts (sample i takes row i mod N), else
  of the context clips [N, L, D]. A class-conditional one: config.label for every sample, else
  the context clips' labels, else labels drawn from the seed [N]."""
  if not model_cfg.num_classes:
    from_file = bool(cfg.get('prompts'))
    if from_file:
      rows = conditioning.load_prompts(cfg.prompts, model_cfg.num_cond_tokens, model_cfg.cond_dim)
    elif context_cond is not None:
      rows = np.asarray(context_cond, np.float32)
    else:
      raise ValueError('This model is conditioned on prompt embeddings (num_classes=0): give '
                       f'--config.prompts=FILE.npz with `{conditioning.PROMPT_KEY}` [N, L, '
                       f'{model_cfg.cond_dim}] (umT5 embeddings; all zeros: unconditional), '
                       'or a context split whose clips carry them.')
    return rows[np.arange(cfg.num_samples) % len(rows)], len(rows) if from_file else 0
  return _sample_labels(cfg, model_cfg, context_cond), 0


def _sample_labels(cfg, model_cfg, context_labels):
  if cfg.label >= 0:
    if cfg.label > model_cfg.num_classes:
      raise ValueError(f'config.label={cfg.label} is outside [0, {model_cfg.num_classes}] '
                       f'({model_cfg.num_classes} = unconditional).')
    return np.full(cfg.num_samples, cfg.label, np.int32)
  if context_labels is not None:
    return context_labels[np.arange(cfg.num_samples) % len(context_labels)]
  return np.random.default_rng(cfg.seed).integers(0, model_cfg.num_classes, cfg.num_samples,
                                                  dtype=np.int32)
