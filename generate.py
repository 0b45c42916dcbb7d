"""Generates videos autoregressively with a fixed-size KV cache.

  python generate.py --config=configs/generate.py --workdir=DIR [--config.policy=window ...]

Writes DIR/samples.npz (`videos` [N, T, H, W, C] in [-1, 1]), DIR/videos/sample_XXXX.gif,
DIR/metrics.json (policy, cache size, seconds per frame, compilations) and DIR/config.json.
A latent model with --config.vae=PATH (a Wan2.1 VAE) also gets its samples decoded chunk by chunk
to DIR/videos/sample_XXXX.mp4 and .gif; samples.npz keeps the latents.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from pafukv_jax import checkpoints, generation

config_flags.DEFINE_config_file('config', 'configs/generate.py', 'Generation config file.')
flags.DEFINE_string('workdir', None, 'Output directory.', required=True)
flags.DEFINE_bool('overwrite', False, 'Replace results already in --workdir.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not any(a.startswith(('--verbosity', '-v')) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads at INFO
  cfg = FLAGS.config
  try:
    # the student's own config.json gives the model (a field set on the command line stays, and
    # is refused if the weights were trained with another value)
    adopted = checkpoints.adopt_model_fields(
        cfg, cfg.checkpoint, config_flags.get_override_values(FLAGS['config']))
    if adopted:
      print(f'generate.py: model fields from {cfg.checkpoint}/config.json: {", ".join(adopted)}',
            file=sys.stderr)
    metrics = generation.generate(cfg, FLAGS.workdir, FLAGS.overwrite)
  except (ValueError, FileExistsError, FileNotFoundError) as e:  # bad input: say what, not where
    sys.exit(f'generate.py: error: {e}')
  spf = metrics['seconds_per_frame']
  print(f"{metrics['policy']}: {metrics['num_samples']} videos of {metrics['num_frames']} frames in "
        f"{FLAGS.workdir}; {'n/a' if spf is None else f'{1000 * spf:.1f} ms'}/frame, "
        f"cache {metrics['cache_bytes'] / 2**20:.2f} MiB, compilations: "
        + ', '.join(f'{name} {n}' for name, n in metrics['compiles_by_function'].items()))
  if 'decoded_frames' in metrics:
    h, w = metrics['decoded_size']
    print(f"decoded by {metrics['vae']}: {FLAGS.workdir}/videos/sample_XXXX.mp4 and .gif, "
          f"{metrics['decoded_frames']} frames of {h}x{w}, in {metrics['decode_seconds']:.1f} s")


if __name__ == '__main__':
  app.run(main)
