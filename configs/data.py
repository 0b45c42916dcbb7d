"""Data: which dataset, its sizes, and the batches.

python train.py --config=...  with  --config.data=configs/data.py[:tiny]  or as a sub-config:
  from configs import data; c.data = data.get_config('tiny')
"""

import ml_collections

from configs import common


def get_config(arg: str = 'base') -> ml_collections.ConfigDict:
  """arg (common.parse_arg): 'tiny' (clips for tests and smoke runs; any other size: 32 frames
  of 32x32) and/or a dataset name: 'tiny', 'photo_pan', 'tiny,photo_pan', 'tfds:moving_mnist'."""
  parsed = common.parse_arg(arg)
  size = 'tiny' if parsed.size == 'tiny' else 'base'
  datasets = [parsed.dataset] if parsed.dataset else []
  c = ml_collections.ConfigDict()
  c.dataset = 'occluded_objects'  # occluded_objects | photo_pan | folder | latents | tfds:NAME
  c.data_dir = ''               # '' = TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.prepare = True              # generate a missing procedural dataset into data_dir
  c.folder = ''                 # dataset='folder': a directory of videos (train/ test/ optional);
                                # dataset='latents': of .npz clips (pafukv_jax/data/latents.py)
  c.prompt_tokens = 512         # prompt embeddings are zero-padded to this many tokens (Wan: 512)
  c.video_key = ''              # dataset='tfds:NAME': the video feature ('' = detect)
  c.num_frames = 32             # frames per clip
  c.image_size = (32, 32)       # (H, W)
  c.train_examples = 5000       # procedural split sizes
  c.test_examples = 500
  c.revisit_horizon = 8         # N: content unseen for more than N frames counts as revisited
  c.trajectories = ''           # photo_pan's camera paths, e.g. 'out_and_back,loop,waypoints'
                                # ('' = out_and_back,loop; see pafukv_jax/data/photo_pan.py)
  c.camera_step = 1             # photo_pan: the camera stops on multiples of this many pixels
                                # (the patch size: a revisited patch is the very token seen before)
  c.seed = 0                    # procedural generation (a different seed is a different dataset)
  c.shuffle_seed = 0            # order of the examples (batch at step s = f(shuffle_seed, s))
  c.batch_size = 16             # global, over all hosts; a multiple of the data-parallel size

  if datasets:
    c.dataset = datasets[0]
  if size == 'tiny':
    c.num_frames = 8
    c.image_size = (16, 16)
    c.train_examples = 16
    c.test_examples = 8
    c.revisit_horizon = 2
    c.batch_size = 8
  return c
