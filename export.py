"""Exports the weights of a training workdir (EMA if kept) as a params directory: what demo/ holds.

  python export.py --workdir=runs/student --out=demo/student

The module (the DiT, or the salience head for a salience-stage workdir) is built from the
workdir's own config.json; the output holds parameters only (no optimizer state, one step), and
an existing --out is never replaced. config.json is copied beside the weights, so generate.py
and evaluate.py know a head's shape.
"""

import json
import os
import shutil
import sys

import ml_collections
from absl import app, flags, logging

from pafukv_jax import checkpoints, output_dirs
from pafukv_jax.models.dit import DiTConfig, init_model
from pafukv_jax.salience.head import init_head

flags.DEFINE_string('workdir', None, 'Training workdir (train.py --workdir).', required=True)
flags.DEFINE_string('out', None, 'New params directory to write.', required=True)
FLAGS = flags.FLAGS


def export(workdir: str, out: str) -> None:
  saved = os.path.join(workdir, 'config.json')
  if not os.path.isfile(saved):
    raise FileNotFoundError(f'{saved} does not exist: --workdir must be a train.py workdir.')
  if os.path.exists(out):
    raise FileExistsError(f'{out} exists; choose a new --out (nothing was written).')
  output_dirs.check_writable(out, '--out')
  with open(saved) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  model_cfg = DiTConfig.from_config(cfg.model)
  module = init_head(cfg.head, model_cfg) if cfg.stage == 'salience' else init_model(model_cfg)
  checkpoints.save_params(out, checkpoints.load_params(workdir, module))
  shutil.copy(saved, os.path.join(out, 'config.json'))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    export(FLAGS.workdir, FLAGS.out)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    sys.exit(f'export.py: error: {e}')
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(FLAGS.out) for f in fs)
  print(f'{FLAGS.out}: {size / 2**20:.2f} MiB')


if __name__ == '__main__':
  app.run(main)
