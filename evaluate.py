"""Runs a sweep of cache policies x budgets x seeds and writes the trade-off table, plots, videos.

  python evaluate.py --config=configs/sweeps/budget.py --workdir=DIR [--config.seeds=0,1 ...]
  python evaluate.py ... --config.mode=teacher_forced [--config.noise_level=0.5]

Writes DIR/results.csv and DIR/results.json (one row per policy and budget), DIR/plots/*.png,
DIR/videos/side_by_side_XX.gif and DIR/runs/ (every run; a rerun skips runs already there, so an
interrupted sweep resumes, and refuses runs made with other settings, naming what changed).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from pafukv_jax.evaluation import sweep

config_flags.DEFINE_config_file('config', 'configs/sweeps/budget.py', 'Sweep config file.')
flags.DEFINE_string('workdir', None, 'Output directory (resumed when it holds runs).',
                    required=True)
FLAGS = flags.FLAGS


def _fmt(x, spec):
  return format('-', '>' + spec.lstrip('>').split('.')[0].rstrip('dfe')) if x is None else format(x, spec)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  try:
    rows = sweep.Sweep(FLAGS.config, FLAGS.workdir).run()
  except (ValueError, FileNotFoundError) as e:  # bad input: say what, not where
    sys.exit(f'evaluate.py: error: {e}')
  if FLAGS.config.mode != 'rollout':
    print(f'mode={FLAGS.config.mode}: every chunk predicted from noise level '
          f'{FLAGS.config.noise_level:g} over a cache of the true frames')
  print(f'{"policy":12s} {"budget":>6s} {"memory":>7s} {"consist.":>8s} {"PSNR gt":>8s} '
        f'{"PSNR full":>9s} {"SSIM gt":>7s} {"ms/frame":>8s} {"cache KiB":>9s}')
  for r in rows:
    print(f'{r["policy"]:12s} {_fmt(r["budget_frames"], ">6d")} {_fmt(r["memory_psnr"], "7.2f")} '
          f'{_fmt(r.get("revisit_consistency"), "8.2f")} '
          f'{_fmt(r["psnr_gt"], "8.2f")} {_fmt(r["psnr_full"], "9.2f")} '
          f'{_fmt(r["ssim_gt"], "7.3f")} {1000 * r["seconds_per_frame"]:8.1f} '
          f'{r["cache_bytes_per_sample"] / 1024:9.1f}')
  print(f'Results in {FLAGS.workdir}/results.csv, plots in {FLAGS.workdir}/plots/, videos in '
        f'{FLAGS.workdir}/videos/.')


if __name__ == '__main__':
  app.run(main)
