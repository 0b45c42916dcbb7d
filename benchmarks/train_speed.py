"""Training speed of each stage at two model sizes: steps/s, examples/s and peak memory.

  python benchmarks/train_speed.py [--sizes=small,base] [--stages=teacher,student]

Synthetic batches (speed does not depend on the data), the configs' optimizer, one device.
Peak memory: the device's peak bytes where the backend reports it (GPU, TPU), else the process's
peak resident set. Prints a table and writes JSON.
"""

import importlib
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from benchmarks import report
from configs import common
from pafukv_jax import parallel
from pafukv_jax.training import loop, steps

flags.DEFINE_list('sizes', ['small', 'base'], 'Model sizes from configs/common.py.')
flags.DEFINE_list('stages', ['teacher', 'student'], 'Stages.')
flags.DEFINE_integer('batch', 8, 'Global batch.')
flags.DEFINE_integer('frames', 16, 'Frames per clip.')
flags.DEFINE_integer('steps', 5, 'Timed steps (after one warm-up step).')
flags.DEFINE_string('out', 'benchmarks/results/train_speed.json', 'JSON output.')
FLAGS = flags.FLAGS


def peak_memory_mib():
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20, 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'process peak RSS'


def measure(stage, size):
  cfg = importlib.import_module(f'configs.{stage}').get_config('base')
  cfg.model = common.model_config(size)
  cfg.model.frame_cond_dim = 2
  cfg.batch_size = FLAGS.batch
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1)), jax.devices()[:1])
  graphdef, state, shardings, tx = loop.build(cfg, mesh)
  h, w = cfg.model.image_size
  rng = np.random.default_rng(0)
  batch = dict(video=jnp.asarray(rng.uniform(-1, 1, (FLAGS.batch, FLAGS.frames, h, w, 3)), jnp.float32),
               label=jnp.asarray(rng.integers(0, 3, FLAGS.batch), jnp.int32),
               frame_cond=jnp.zeros((FLAGS.batch, FLAGS.frames, 2), jnp.float32))
  step_fn = steps.make_train_step(graphdef, steps.stage_loss(cfg), tx, cfg.optimizer.ema_decay)
  step = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(shardings, None))
  key = jax.random.key(0)
  start = time.perf_counter()
  state, metrics = step(state, batch, key)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(state, batch, key)
  jax.block_until_ready(metrics)
  per_step = (time.perf_counter() - start) / FLAGS.steps
  mem, mem_kind = peak_memory_mib()
  return dict(stage=stage, size=size, batch=FLAGS.batch, frames=FLAGS.frames,
              tokens_per_clip=FLAGS.frames * (h // cfg.model.patch_size) * (w // cfg.model.patch_size),
              seconds_per_step=per_step, steps_per_second=1 / per_step,
              examples_per_second=FLAGS.batch / per_step, compile_seconds=first - per_step,
              peak_memory_mib=mem, peak_memory_kind=mem_kind)


def main(argv):
  del argv
  rows = []
  print(f'{"stage":<8} {"size":<6} {"s/step":>8} {"steps/s":>8} {"examples/s":>10} '
        f'{"compile s":>9} {"peak MiB":>9}')
  for size in FLAGS.sizes:
    for stage in FLAGS.stages:
      r = measure(stage, size)
      rows.append(r)
      print(f'{stage:<8} {size:<6} {r["seconds_per_step"]:>8.3f} {r["steps_per_second"]:>8.2f} '
            f'{r["examples_per_second"]:>10.1f} {r["compile_seconds"]:>9.1f} '
            f'{r["peak_memory_mib"]:>9.0f}', flush=True)
  print(f'peak memory: {rows[-1]["peak_memory_kind"]} (cumulative over the rows of this process)')
  report.write_results(FLAGS.out, rows)


if __name__ == '__main__':
  app.run(main)
