"""Seconds to generate a 1,000-clip split of each procedural dataset, and to read it back.

  python benchmarks/data_generation.py [--datasets=occluded_objects,photo_pan] [--clips=1000]

Defaults: 32 frames of 32x32, revisit horizon 8, seed 0. 'generate' is the examples alone (numpy);
'prepare' is the whole TFDS download_and_prepare into a temporary data_dir (generation,
serialisation, ArrayRecord writing; the test split is 1 clip); 'read' is one pass over the split
through as_data_source. Prints a table and writes JSON.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from benchmarks import report
from pafukv_jax.data import procedural, sources

flags.DEFINE_list('datasets', ['occluded_objects', 'photo_pan'], 'Procedural datasets.')
flags.DEFINE_integer('clips', 1000, 'Clips in the timed (train) split.')
flags.DEFINE_integer('frames', 32, 'Frames per clip.')
flags.DEFINE_integer('size', 32, 'Frame height and width.')
flags.DEFINE_integer('horizon', 8, 'Revisit horizon N.')
flags.DEFINE_string('out', 'benchmarks/results/data_generation.json', 'JSON output.')
FLAGS = flags.FLAGS


def measure(name: str) -> dict:
  cls = sources.PROCEDURAL_BUILDERS[name]
  config = procedural.procedural_config(
      num_frames=FLAGS.frames, height=FLAGS.size, width=FLAGS.size, train_examples=FLAGS.clips,
      test_examples=1, revisit_horizon=FLAGS.horizon)
  cls.make_example(procedural.example_rng(0, 'train', 0), 'train', config)  # load photos once
  start = time.perf_counter()
  revisited = 0.0
  for index in range(FLAGS.clips):
    example = cls.make_example(procedural.example_rng(0, 'train', index), 'train', config)
    revisited += example['revisit_mask'].mean() / FLAGS.clips
  generate_s = time.perf_counter() - start
  with tempfile.TemporaryDirectory() as data_dir:
    builder = cls(data_dir=data_dir, config=config)
    start = time.perf_counter()
    procedural.prepare(builder)
    prepare_s = time.perf_counter() - start
    source = builder.as_data_source('train')
    start = time.perf_counter()
    for index in range(len(source)):
      source[index]
    read_s = time.perf_counter() - start
    disk_bytes = sum(os.path.getsize(os.path.join(builder.data_dir, f))
                     for f in os.listdir(builder.data_dir))
  return dict(dataset=name, clips=FLAGS.clips, num_frames=FLAGS.frames, size=FLAGS.size,
              revisit_horizon=FLAGS.horizon, generate_s=generate_s, prepare_s=prepare_s,
              read_s=read_s, ms_per_clip_prepare=1e3 * prepare_s / FLAGS.clips,
              disk_mb=disk_bytes / 2**20, revisited_pixel_fraction=float(revisited))


def main(argv):
  del argv
  rows = [measure(name) for name in FLAGS.datasets]
  print(f'{"dataset":18} {"clips":>6} {"generate s":>11} {"prepare s":>10} {"read s":>7} '
        f'{"ms/clip":>8} {"MB":>6} {"revisited":>9}')
  for r in rows:
    print(f'{r["dataset"]:18} {r["clips"]:6d} {r["generate_s"]:11.2f} {r["prepare_s"]:10.2f} '
          f'{r["read_s"]:7.2f} {r["ms_per_clip_prepare"]:8.2f} {r["disk_mb"]:6.1f} '
          f'{r["revisited_pixel_fraction"]:9.3f}')
  report.write_results(FLAGS.out, rows)


if __name__ == '__main__':
  app.run(main)
