"""A sweep's report, what is written for people, and the file helpers the sweep writes with.

`write` leaves in the sweep's workdir, beside the runs (see `sweep`):
  results.json, results.csv   one row per (policy, budget): means over clips and seeds
  paired.csv                  memory score gains over `paired_references`, paired over clips
                              (mean, standard error)
  plots/*.png                 quality vs budget, vs s/frame, per-frame curves
  videos/side_by_side_XX.gif  ground truth | full | window | ... with labels
The tables (and the runner's runs) are written to a temporary file and renamed (`atomic`): a sweep
killed mid-write leaves no half file that looks done.
"""

import csv
import json
import os
import tempfile
import warnings

import numpy as np

from pafukv_jax import video_io
from pafukv_jax.evaluation import plots, scores

GROUND_TRUTH = 'ground_truth'  # the panel of the side-by-side videos that shows the held-out clip
LABELS = dict(memory_psnr='memory score (PSNR on revisited content, dB)',
              psnr_gt='PSNR vs ground truth (dB)', ssim_gt='SSIM vs ground truth',
              psnr_full='PSNR vs full cache (dB)', ssim_full='SSIM vs full cache')


def write(workdir, cfg, rows, results, compare, clips_video, timeline=None):
  """The tables, plots and videos of a sweep: `rows` from scores.aggregate(results); `compare`,
  policy -> videos of the first seed at compare_budget; `clips_video`, the ground truth.
  timeline: (given frames, frames) of the scored videos when they are not the sweep's own
  (context_frames, num_frames): a latent run scored on its decoded pixels."""
  scale = cfg.video.scale if timeline is None else 1  # decoded pixels are large already
  timeline = timeline or (cfg.context_frames, cfg.num_frames)
  atomic(os.path.join(workdir, 'results.json'), lambda p: dump_json(p, rows))
  atomic(os.path.join(workdir, 'results.csv'), lambda p: write_csv(p, rows))
  paired = scores.paired_memory(results, cfg.paired_references)
  if paired:
    atomic(os.path.join(workdir, 'paired.csv'), lambda p: write_csv(p, paired))
  plot_dir = os.path.join(workdir, 'plots')
  os.makedirs(plot_dir, exist_ok=True)
  _plots(plot_dir, cfg, rows, results, timeline)
  video_dir = os.path.join(workdir, 'videos')
  os.makedirs(video_dir, exist_ok=True)
  _videos(video_dir, cfg, compare, clips_video, timeline[0], scale)


def _plots(plot_dir, cfg, rows, results, timeline):
  budgets = sorted(cfg.budgets)
  for metric in ('memory_psnr', 'psnr_full', 'ssim_gt'):
    series = {r['policy']: ([], []) for r in rows if r['budget_frames'] is not None}
    for r in rows:
      if r['budget_frames'] is not None:
        series[r['policy']][0].append(r['budget_frames'])
        series[r['policy']][1].append(_nan(r[metric]))
      elif r[metric] is not None:  # full, at any budget: the level the others approach
        series['full (whole video)'] = (budgets, [r[metric]] * len(budgets))
    plots.line_plot(os.path.join(plot_dir, f'{metric}_vs_budget.png'), series,
                    'cache budget (frames)', LABELS[metric],
                    f'{mode_title(cfg)}{LABELS[metric]} vs cache budget')
  series = {}
  for r in rows:
    xs, ys = series.setdefault(r['policy'], ([], []))
    xs.append(1000 * r['seconds_per_frame'])
    ys.append(_nan(r['memory_psnr']))
  plots.line_plot(os.path.join(plot_dir, 'memory_psnr_vs_ms_per_frame.png'), series,
                  'ms per generated frame', LABELS['memory_psnr'],
                  'memory score vs speed (one point per budget)')
  frames = np.arange(*timeline)
  for metric in ('psnr_gt', 'psnr_full'):
    series = {}
    for r in results:
      if r['seed'] == cfg.seeds[0] and r['budget_frames'] in (None, cfg.compare_budget):
        if metric == 'psnr_full' and r['policy'] == 'full':
          continue
        # None = identical to full in every clip (inf dB): a gap in the curve
        per_frame = np.asarray(r[metric], np.float64)
        with warnings.catch_warnings():
          warnings.simplefilter('ignore', RuntimeWarning)  # all-None frames: mean of nothing
          series[r['policy']] = (frames, np.nanmean(per_frame, axis=0))
    plots.line_plot(os.path.join(plot_dir, f'{metric}_per_frame.png'), series, 'frame',
                    LABELS[metric], f'{mode_title(cfg)}per frame, budget {cfg.compare_budget} '
                    f'frames (first {timeline[0]} given)')


def mode_title(cfg):
  """'' for rollouts; the teacher-forced noise level otherwise (its frames are predictions)."""
  return '' if cfg.mode == 'rollout' else f'teacher-forced from t = {cfg.noise_level:g}, '


def _videos(video_dir, cfg, compare, clips_video, given_frames, scale):
  for i in range(min(cfg.num_videos, cfg.num_clips)):
    panels = {}
    for name in cfg.side_by_side:
      video = clips_video[i] if name == GROUND_TRUTH else compare[name][i]
      label = name if name in (GROUND_TRUTH, 'full') else f'{name} {cfg.compare_budget}f'
      panels[label] = video_io.viewable(video)  # latents without a VAE: a preview
    frames = video_io.side_by_side(panels, scale=scale,
                                   given_frames=given_frames)
    video_io.write_video(os.path.join(video_dir, f'side_by_side_{i:02d}.gif'), frames,
                         fps=cfg.video.fps)


def _nan(x):
  return float('nan') if x is None else x


def dump_json(path, obj):
  with open(path, 'w') as f:
    json.dump(obj, f, indent=1, allow_nan=False, default=_json_default)


def _json_default(x):
  raise TypeError(f'not JSON: {type(x)}')


def write_csv(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def atomic(path, write_file):
  """write_file(tmp) then rename: a sweep killed mid-write leaves no half file that looks done."""
  directory = os.path.dirname(path)
  fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix=os.path.splitext(path)[1], dir=directory)
  os.close(fd)
  try:
    write_file(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _umask() -> int:
  mask = os.umask(0)  # the only way to read it is to set it
  os.umask(mask)
  return mask
