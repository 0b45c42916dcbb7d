"""Seconds per frame and cache bytes of the cached rollout, per policy and video length.

  python benchmarks/rollout_speed.py [--frames=16,32,64,128] [--policies=full,window,sink_window]
  python benchmarks/rollout_speed.py --frames=64 --policies=sink_window,h2o,random,pafu --impls=blockwise
  python benchmarks/rollout_speed.py --frames=33,129 --chunk_frames=3

Random weights (speed does not depend on them). Defaults: width 128, 4 layers, 4 heads, 32x32
frames, patch 4 (64 tokens per frame), batch 4, 1 frame per chunk, 4 denoising steps + 1 clean
pass per frame, a 4-frame budget (sink 1 for sink_window). Prints a table and writes JSON:
ms/frame is the mean over the generated frames after the first (which includes compilation),
first16 / last16 the medians over the first and last 16 of them.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks import report
from configs import common
from pafukv_jax import rollout, sampling
from pafukv_jax.cache import policies
from pafukv_jax.compile_counter import CompileCounter
from pafukv_jax.models.dit import DiTConfig, init_model
from pafukv_jax.salience.head import SalienceHead

flags.DEFINE_list('frames', ['16', '32', '64', '128'], 'Video lengths.')
flags.DEFINE_list('policies', ['full', 'window', 'sink_window'], 'Policies.')
flags.DEFINE_list('impls', ['blockwise', 'masked'],
                  'model.attention_impl values to compare (masked: every slot, filled or not).')
flags.DEFINE_integer('block_size', 512, 'model.cache_block_size of the blockwise attention.')
flags.DEFINE_string('size', 'base', 'Model size from configs/common.py.')
flags.DEFINE_integer('head_hidden', 64, 'Hidden width of the salience head (policy pafu).')
flags.DEFINE_integer('batch', 4, 'Videos generated together.')
flags.DEFINE_integer('chunk_frames', 1, 'Frames generated per chunk (every length a multiple).')
flags.DEFINE_integer('budget_frames', 4, 'Cache budget of the bounded policies.')
flags.DEFINE_integer('sink_frames', 1, 'Sink frames of sink_window.')
flags.DEFINE_string('out', 'benchmarks/results/rollout_speed.json', 'JSON output.')
FLAGS = flags.FLAGS


def measure(model, impl, policy, num_frames):
  import ml_collections
  cache = ml_collections.ConfigDict(dict(budget_frames=FLAGS.budget_frames,
                                         sink_frames=FLAGS.sink_frames, recent_frames=0))
  f = FLAGS.chunk_frames
  rc = sampling.RolloutConfig(num_frames=num_frames, chunk_frames=f)
  head = None
  if policy == 'pafu':  # a random head: its cost does not depend on its weights
    head = SalienceHead(model.cfg.dim, FLAGS.head_hidden, rngs=nnx.Rngs(0))
  spec = policies.cache_spec(policy, cache, num_frames=num_frames, chunk_frames=f,
                             tokens_per_frame=model.cfg.tokens_per_frame)
  runner = rollout.Rollout(model, rc, spec, head=head)
  inputs = rollout.inputs(sampling.sample_keys(0, np.arange(FLAGS.batch)),
                          np.arange(FLAGS.batch) % 10)
  with CompileCounter(rollout.chunk_step_jit) as compiles:
    start = time.perf_counter()
    out = runner.generate(inputs)
    wall = time.perf_counter() - start
  per_frame = np.asarray(out.chunk_seconds) / f  # [0] includes compilation
  steady = np.repeat(per_frame[1:], f)  # per frame, for first16 / last16
  window = min(16, len(steady) // 2)
  return dict(
      impl=impl, policy=policy, num_frames=num_frames, chunk_frames=f, batch=FLAGS.batch,
      capacity_tokens=spec.capacity, cache_bytes=runner.cache_bytes(FLAGS.batch),
      ms_per_frame=1000 * float(np.mean(per_frame[1:])),
      # medians: a shared machine's hiccups should not decide whether a policy looks flat
      ms_first16=1000 * float(np.median(steady[:window])),
      ms_last16=1000 * float(np.median(steady[-window:])),
      compile_s=float(f * (per_frame[0] - np.mean(per_frame[1:]))), compiles=compiles.count,
      wall_s=wall, ms_per_frame_all=[1000 * float(x) for x in per_frame])


def main(argv):
  del argv
  odd = [n for n in map(int, FLAGS.frames) if n % FLAGS.chunk_frames]
  if odd:
    raise app.UsageError(f'--frames {odd} are not multiples of --chunk_frames={FLAGS.chunk_frames} '
                         f'(e.g. --frames=33,129 for chunks of 3).')
  rows = []
  print(f'{"impl":<10} {"policy":<12} {"frames":>6} {"capacity":>8} {"cache MiB":>9} '
        f'{"ms/frame":>9} {"first16":>8} {"last16":>8} {"compile s":>9}')
  for impl in FLAGS.impls:
    overrides = dict(common.model_config(FLAGS.size), attention_impl=impl,
                     cache_block_size=FLAGS.block_size)
    cfg = DiTConfig.from_config(overrides)
    model = init_model(cfg, 0)
    for num_frames in map(int, FLAGS.frames):
      for policy in FLAGS.policies:
        if impl != FLAGS.impls[0] and policy != 'full':
          continue  # a bounded cache is always full: both implementations read every slot
        r = measure(model, impl, policy, num_frames)
        rows.append(r)
        print(f'{impl:<10} {policy:<12} {num_frames:>6} {r["capacity_tokens"]:>8} '
              f'{r["cache_bytes"] / 2**20:>9.2f} {r["ms_per_frame"]:>9.1f} {r["ms_first16"]:>8.1f} '
              f'{r["ms_last16"]:>8.1f} {r["compile_s"]:>9.2f}', flush=True)
  by = {(r['impl'], r['policy'], r['num_frames']): r for r in rows}
  first = FLAGS.impls[0]
  print(f'\nratios of ms/frame, {first} attention unless named:')
  for num_frames in map(int, FLAGS.frames):
    full = by.get((first, 'full', num_frames))
    for policy in FLAGS.policies:
      r = by.get((first, policy, num_frames))
      if r is None:
        continue
      line = f'  {policy:<12} {num_frames:>4} frames: last16/first16 {r["ms_last16"] / r["ms_first16"]:.2f}'
      if full is not None and policy != 'full':
        line += f'; full / {policy} = {full["ms_per_frame"] / r["ms_per_frame"]:.2f}x'
      for impl in FLAGS.impls[1:]:
        other = by.get((impl, 'full', num_frames))
        if policy == 'full' and other is not None:
          line += f'; full {first} / full {impl} = {r["ms_per_frame"] / other["ms_per_frame"]:.2f}'
      print(line)
  report.write_results(FLAGS.out, rows, model=dict(common.model_config(FLAGS.size)),
                       block_size=FLAGS.block_size)


if __name__ == '__main__':
  app.run(main)
