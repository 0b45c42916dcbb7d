"""Trains one stage: the bidirectional teacher, the causal AR student, or the salience head.

  python train.py --config=configs/teacher.py[:tiny] --workdir=DIR [--config.FIELD=VALUE ...]
  python train.py --config=configs/student.py[:tiny] --workdir=DIR2 --config.init_from=DIR
  python train.py --config=configs/salience.py[:tiny] --workdir=DIR3 --config.teacher=DIR \
      --config.student=DIR2

Writes DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/ and DIR/config.json; a DIR that
holds checkpoints is resumed from its latest step. SIGTERM saves and exits.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from pafukv_jax import checkpoints
from pafukv_jax.training import loop

config_flags.DEFINE_config_file('config', None, 'Stage config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory (resumed when it holds checkpoints).',
                    required=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/teacher.py:tiny')
  if not any(a.startswith(('--verbosity', '-v')) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  cfg = FLAGS.config
  try:
    # the checkpoint this stage starts from gives the model (the teacher a student starts from,
    # the student a head reads); a field set on the command line stays, and is checked
    source = loop.model_source(cfg)
    adopted = checkpoints.adopt_model_fields(
        cfg, source, config_flags.get_override_values(FLAGS['config']))
    if adopted:
      print(f'train.py: model fields from {source}/config.json: {", ".join(adopted)}',
            file=sys.stderr)
    last = loop.train(cfg, FLAGS.workdir)
  except (ValueError, FileNotFoundError) as e:  # bad input: say what, not where
    sys.exit(f'train.py: error: {e}')
  print(f'{FLAGS.config.stage}: step {last.get("step")} loss {last.get("loss")} in {FLAGS.workdir}')


if __name__ == '__main__':
  app.run(main)
