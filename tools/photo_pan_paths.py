"""Draws photo_pan's camera trajectory families, a few held-out paths each, as one PNG.

  python tools/photo_pan_paths.py --out=docs/photo_pan_paths.png [--num_frames=16 --paths=4]

Each panel is one family (pafukv_jax/data/photo_pan.py): the camera's path over the photograph
(the top-left corner of the view, in view sides, from the start), a dot per frame, the start
view as a square. The paths are those of the test split's first examples of that family.
"""

import os
import sys

from absl import app, flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pafukv_jax.data import photo_pan, procedural  # pylint: disable=g-import-not-at-top

flags.DEFINE_string('out', 'docs/photo_pan_paths.png', 'PNG to write.')
flags.DEFINE_integer('num_frames', 16, 'Frames per clip.')
flags.DEFINE_integer('size', 32, 'View side in pixels.')
flags.DEFINE_integer('paths', 4, 'Paths drawn per family.')
FLAGS = flags.FLAGS


def family_paths(family: str, count: int, num_frames: int, size: int):
  """Camera positions [T, 2] (x, y in views, from the start) of the first `count` test examples
  of a dataset that draws only `family`."""
  cfg = procedural.procedural_config(num_frames=num_frames, height=size, width=size,
                                     trajectories=family)
  paths = []
  for index in range(count):
    example = photo_pan.make_example(procedural.example_rng(cfg.seed, 'test', index), 'test', cfg)
    paths.append(np.cumsum(example['frame_cond'], axis=0) / size)
  return paths


def main(argv):
  del argv
  families = photo_pan.TRAJECTORIES
  figure = Figure(figsize=(3.2 * len(families), 3.4), dpi=100, layout='constrained')
  FigureCanvasAgg(figure)
  for i, family in enumerate(families):
    axes = figure.add_subplot(1, len(families), i + 1)
    axes.add_patch(Rectangle((0, 0), 1, 1, fill=False, linestyle='--', color='grey'))
    for path in family_paths(family, FLAGS.paths, FLAGS.num_frames, FLAGS.size):
      line, = axes.plot(path[:, 0], path[:, 1], marker='o', markersize=2.5, linewidth=1)
      axes.plot(*path[-1], marker='x', color=line.get_color(), markersize=7)
    axes.plot(0, 0, marker='s', color='black', markersize=5)
    axes.set_title(f'{i}: {family}')
    axes.set_aspect('equal')
    axes.invert_yaxis()  # image coordinates: y grows downwards
    axes.grid(True, alpha=0.3)
    axes.set_xlabel('x (view sides)')
  figure.axes[0].set_ylabel('y (view sides)')
  figure.suptitle(f'photo_pan camera paths ({FLAGS.num_frames} frames; square: the start '
                  'view, x: the last frame)', fontsize=9)
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  figure.savefig(FLAGS.out, format='png')
  print(f'Wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
