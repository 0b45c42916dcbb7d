"""Generation with a fixed-size KV cache.

python generate.py --config=configs/generate.py[:SIZE] --workdir=DIR [--config.policy=window ...]

The default size, `small`, is the demo model shipped in demo/ (student, salience head, teacher),
trained on occluded_objects; `small,photo_pan` is the one in demo/photo_pan/. Both continue the
first clips of their dataset's test split (context='test', 4 frames). `tiny` and `base` run
random weights (tests, smoke runs and speed) unless --config.checkpoint is set.
"""

import json
import os

import ml_collections

from configs import common
from configs import data
from pafukv_jax.checkpoints import MODEL_FIELDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DEMOS = {'occluded_objects': 'demo', 'photo_pan': 'demo/photo_pan'}  # dataset -> demo directory


# data fields that decide what a demo's clips are like (its camera paths, the revisit mask):
# held-out clips for it are drawn with the values it was trained with
DEMO_DATA_FIELDS = ('trajectories', 'camera_step', 'revisit_horizon')


def _demo_saved(demo: str) -> dict:
  with open(os.path.join(REPO, demo, 'student', 'config.json')) as f:
    return json.load(f)


def demo_model_fields(demo: str) -> dict:
  """The model fields (checkpoints.MODEL_FIELDS) the demo's student was trained with, from its
  config.json: frame_cond_dim, frame_cond_scale (a field a config.json lacks keeps its default)."""
  saved = _demo_saved(demo)['model']
  return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in MODEL_FIELDS}


def demo_data_fields(demo: str) -> dict:
  """The DEMO_DATA_FIELDS the demo's student was trained with (those its config.json has)."""
  saved = _demo_saved(demo)['data']
  return {k: saved[k] for k in DEMO_DATA_FIELDS if k in saved}


def get_config(arg: str = 'small') -> ml_collections.ConfigDict:
  """arg (common.parse_arg): a model size, and for `small` (the default) optionally the demo's
  dataset: 'small' (= 'small,occluded_objects'), 'small,photo_pan', 'tiny', 'base'."""
  parsed = common.parse_arg(arg)
  size = parsed.size or 'small'
  if parsed.dataset and (size != 'small' or parsed.dataset not in DEMOS):
    raise ValueError(f'{arg!r}: a dataset names a demo model, so it goes with size small: '
                     f'{[f"small,{d}" for d in DEMOS]}.')
  demo = DEMOS[parsed.dataset or 'occluded_objects']
  c = ml_collections.ConfigDict()
  c.policy = 'sink_window'      # recompute | full | window | sink_window | h2o | random | pafu | oracle
  c.num_frames = 32             # frames per video, context included
  c.chunk_frames = 1            # frames generated per chunk (as the student was trained)
  c.context_frames = 0          # given frames prefilled into the cache (from `context`)
  c.context = ''                # .npz with `videos` [N, >=context_frames, H, W, C] (and `frame_cond`),
                                # or 'test' / 'train': the first num_samples clips of that split of
                                # `data` (their camera motion too, for a model with frame_cond)
  c.num_samples = 4
  c.batch_size = 4              # samples generated together; the last batch is padded
  c.seed = 0                    # noise and labels; sample i of a seed is the same in any batch
  c.label = -1                  # class label of every sample; -1: drawn per sample from the seed
  c.prompts = ''                # a model with prompt embeddings (model.num_classes=0): .npz with
                                # `prompt_embedding` [N, L, cond_dim] (or [L, cond_dim]), umT5's;
                                # sample i takes row i mod N ('' = the context clips' own)
  c.checkpoint = ''             # student checkpoint dir; '' = random weights (smoke runs, speed)
  c.init_seed = 0               # weights when checkpoint is empty
  c.vae = ''                    # a latent model's Wan2.1 VAE (diffusers vae/ or Wan2.1_VAE.pth):
                                # its samples decoded chunk by chunk to videos/sample_XXXX.mp4 and
                                # .gif (native size); sweeps score them in pixel space; '' = none

  c.cache = ml_collections.ConfigDict()
  c.cache.budget_frames = 8     # capacity in frames (tokens = frames x tokens per frame)
  c.cache.sink_frames = 1       # first frames always kept (sink_window; ignored by window/full)
  c.cache.recent_frames = 0     # newest frames always kept (the incoming chunk always is)
  c.cache.pafu_mix = 0.0        # pafu: weight of the attention received, against the head's score
  c.cache.granularity = 'token'  # token | frame (a frame's tokens are kept or evicted together)
  c.cache.per_layer = False     # True: each layer keeps its own tokens (h2o, pafu, oracle, random)

  c.head = ml_collections.ConfigDict()  # pafu's Salience Estimation Head
  c.head.checkpoint = ''        # a salience-stage workdir (its config.json gives the head's shape)
  c.head.hidden_dim = 64        # for a params directory without config.json
  c.head.feature_layer = -1
  c.head.per_layer = False

  c.oracle = ml_collections.ConfigDict()  # the upper bound: teacher salience on the full rollout
  c.oracle.teacher = ''         # the bidirectional teacher's workdir
  c.oracle.weights = (1.0, 0.5, 1.0)  # (earlier, same, later) regions, as configs/salience.py
  c.oracle.normalize = 'max'

  c.sampling = ml_collections.ConfigDict()
  c.sampling.timesteps = (1000, 750, 500, 250)  # of 1000, Self-Forcing's 4 steps
  c.sampling.shift = 5.0
  c.sampling.sampler = 'euler'  # euler (ODE) | renoise (x0 prediction, fresh noise)

  c.video = ml_collections.ConfigDict()
  c.video.fps = 8
  c.video.scale = 4             # nearest-neighbour upscaling of the written GIFs

  c.model = common.model_config(size)
  c.data = data.get_config(common.data_arg(common.ConfigArg(size, parsed.dataset)))
  if size == 'small':  # a demo model, trained by the commands in demo/README.md
    c.num_frames = 16           # as it was trained
    # it continues held-out clips: from scratch (context='', context_frames=0) its first frame,
    # drawn from noise alone, is already noise-like, and the rest follows it (demo/README.md)
    c.context = 'test'
    c.context_frames = 4
    c.model.update(demo_model_fields(demo))
    c.data.update(demo_data_fields(demo))
    c.checkpoint = f'{demo}/student'
    c.head.checkpoint = f'{demo}/head'
    c.oracle.teacher = f'{demo}/teacher'
  if size == 'tiny':
    c.num_frames = 8
    c.num_samples = 2
    c.batch_size = 2
    c.cache.budget_frames = 3
    c.video.scale = 2
  c.data.num_frames = c.num_frames
  return c
