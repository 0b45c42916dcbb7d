"""A sweep: every policy x cache budget x seed, continuation of held-out clips.

python evaluate.py --config=configs/sweeps/budget.py[:tiny] --workdir=DIR [--config.seeds=0,1 ...]
                   [--config.mode=teacher_forced --config.noise_level=0.5]

Defaults: the demo model shipped in demo/ (student, head and teacher) on occluded_objects' test
split (`:small,photo_pan`: the photo_pan demo in demo/photo_pan/ on photo_pan's test split),
32 clips of 16 frames of which 4 are given, budgets of 3, 4 and 8 frames (a quarter of the
16-frame full cache is 4). `tiny` runs random tiny weights: the tests' size.
"""

from configs import common
from configs import generate as generate_config


def get_config(arg: str = 'small'):
  """arg (configs/common.py's parse_arg): 'small' (the demo model, the default), 'tiny' (tests),
  and for small optionally 'photo_pan' (its demo on that dataset)."""
  size = common.parse_arg(arg).size or 'small'
  c = generate_config.get_config(arg)  # small,photo_pan: its demo
  # NAME@frame: that policy with cache.granularity='frame' (a frame kept or evicted whole)
  c.policies = ('full', 'window', 'sink_window', 'h2o', 'random', 'pafu', 'oracle', 'h2o@frame',
                'pafu@frame')
  if common.parse_arg(arg).dataset == 'photo_pan':
    c.policies += ('fov',)       # a planned camera path: fov knows what it returns to
  c.budgets = (3, 4, 8)          # cache.budget_frames of each bounded policy (with 1 sink frame
                                 # and the incoming one protected, 2 would leave no choice)
  c.seeds = (0,)                 # noise seeds; each runs every policy and budget
  # rollout: the rest of each clip is generated (a free continuation); teacher_forced: each
  # policy's cache holds the true frames and every chunk is predicted from `noise_level` (one
  # fixed noise for all policies), so the scores isolate what the cache kept from the drift
  c.mode = 'rollout'
  c.noise_level = 1.0            # teacher_forced: 1 = from pure noise, 0.5 = half-noised frames
  c.compare_budget = 4           # budget of the per-frame curves and side-by-side videos
  # paired.csv: memory score gains over these; 'auto': those of window, sink_window, h2o swept
  c.paired_references = ('auto',)
  # panels of the side-by-side videos; 'auto': ground_truth and those of full, window,
  # sink_window, pafu swept (so --config.policies=full,window needs no other flag)
  c.side_by_side = ('auto',)
  c.num_videos = 4               # side-by-side videos written (first clips)
  c.num_clips = 32               # held-out clips continued
  c.batch_size = 8
  c.num_frames = 16
  c.context_frames = 4           # given frames; the rest is generated and scored
  c.cache.sink_frames = 1
  c.data.num_frames = c.num_frames  # the held-out clips, from configs/generate.py's `data`
  if size == 'tiny':
    c.num_frames = c.data.num_frames = 8
    c.context_frames = 2
    c.budgets = (2, 4)
    c.compare_budget = 2
    c.num_clips = 4
    c.batch_size = 2
    c.num_videos = 1
    c.policies = ('full', 'window', 'sink_window', 'h2o', 'random')
  return c
