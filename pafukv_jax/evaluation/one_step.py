"""One-step check of a causal student: can it predict a frame from clean context?

  python -m pafukv_jax.evaluation.one_step --config=configs/sweeps/budget.py:small,photo_pan

For held-out clips, the frames before `--frame` are clean and that frame (and the later ones, which
block-causal attention hides from it) are noised to level t; the student's x0 prediction of the
frame is scored against the truth (PSNR, dB), beside two answers that need no model: the frame's
own mean colour and the previous frame. The same prediction with another clip's context shows
whether the student uses its context at all. A student that cannot beat the mean colour at t = 1
has not learnt to continue a video, and no cache policy will make its rollouts look like data.
Reads the sweep config's checkpoint, model, data and num_clips.
"""

import sys

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from pafukv_jax import conditioning, diffusion, generation
from pafukv_jax.evaluation import sweep, video_metrics
from pafukv_jax.models.dit import DiTConfig

LEVELS = (0.25, 0.5, 0.75, 1.0)


def one_step_psnr(model, video, label, frame_cond, frame: int, levels=LEVELS, seed: int = 0):
  """PSNR (dB, of the MSE pooled over clips) of the student's x0 prediction of `frame`, per noise
  level, with the clip's own context and with the next clip's; and of the two model-free answers."""
  video = jnp.asarray(video)
  b, t = video.shape[:2]
  if not 0 < frame < t:
    raise ValueError(f'frame must be in [1, {t}) to have context before it, got {frame}.')
  if b < 2:
    raise ValueError('one_step_psnr needs at least 2 clips (the other-context control).')
  truth = video[:, frame]
  # one MSE pooled over the clips: a clip whose previous frame is its frame (a still camera)
  # counts as error 0 instead of making the mean infinite
  score = lambda pred: float(-10 * jnp.log10(jnp.mean(10 ** (-video_metrics.psnr(pred, truth)
                                                             / 10))))
  noise = jax.random.normal(jax.random.key(seed), video.shape)
  other = jnp.roll(video, 1, axis=0)
  result = dict(mean_colour=score(jnp.broadcast_to(truth.mean(axis=(1, 2), keepdims=True),
                                                   truth.shape)),
                previous_frame=score(video[:, frame - 1]), own_context={}, other_context={})
  for level in levels:
    t_all = jnp.where(jnp.arange(t) >= frame, level, 0.0) * jnp.ones((b, 1))
    for name, clips in (('own_context', video), ('other_context', other.at[:, frame:].set(
        video[:, frame:]))):
      x_t = diffusion.add_noise(clips, noise, t_all)
      v, _ = model(x_t, t_all, jnp.arange(t), label, frame_cond, mode='block_causal',
                   chunk_frames=1)
      result[name][level] = score(diffusion.predict_x0(x_t, v, t_all)[:, frame])
  return result


def main(argv):
  del argv
  cfg = flags.FLAGS.config
  if not cfg.checkpoint:
    sys.exit('one_step: error: give the student, --config.checkpoint=DIR.')
  if not 0 < flags.FLAGS.frame < cfg.num_frames:
    sys.exit(f'one_step: error: --frame must be in [1, {cfg.num_frames}) to have context before '
             f'it, got {flags.FLAGS.frame}.')
  try:  # bad input: say what, not where (as evaluate.py)
    model = generation.build_model(DiTConfig.from_config(cfg.model), cfg.checkpoint,
                                   cfg.init_seed)
    clips = sweep.load_clips(cfg)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'one_step: error: {e}')
  cond = clips.get('frame_cond')
  cond = None if cond is None else jnp.asarray(cond, jnp.float32)
  r = one_step_psnr(model, clips['video'], conditioning.from_batch(clips, model.cfg), cond,
                    flags.FLAGS.frame)
  print(f'{cfg.checkpoint} on {len(clips["video"])} {cfg.data.dataset} test clips, frame '
        f'{flags.FLAGS.frame}: PSNR (dB) of the prediction from clean context')
  print(f'  no model: mean colour {r["mean_colour"]:.2f}, previous frame {r["previous_frame"]:.2f}')
  for level in r['own_context']:
    print(f'  t={level:.2f}: own context {r["own_context"][level]:.2f}, '
          f'another clip\'s context {r["other_context"][level]:.2f}')


if __name__ == '__main__':
  # defined here, not on import: a library import (tests, evaluate.py) registers no flags
  config_flags.DEFINE_config_file('config', 'configs/sweeps/budget.py', 'A sweep config.')
  flags.DEFINE_integer('frame', 8, 'The frame predicted; the frames before it are its context.')
  app.run(main)
