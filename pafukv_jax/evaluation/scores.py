"""A sweep's scores: pure functions of generated videos and of runs' results, no I/O.

Each run is scored on its generated frames (those after `context_frames`) against
  * the `full` rollout with the same noise: fidelity to the uncapped model (PSNR, SSIM);
  * the ground truth: PSNR, SSIM, and the memory score, PSNR on the revisited-content mask only
    (pooled over a clip's masked pixels): does the model bring back what it saw long ago?
  * itself (photo_pan rollouts): the revisit consistency, PSNR of the revisited pixels against the
    video's own frame that last showed them: content the model made up before the camera left
    has no ground truth, but should come back as it was.
Runs are then aggregated into one row per (policy, budget), and the memory score is compared
between policies clip by clip (`paired_memory`). Rows are in the order of POLICIES.
"""

import numpy as np

from pafukv_jax.cache.policies import POLICIES
from pafukv_jax.evaluation import video_metrics

METRICS = ('memory_psnr', 'psnr_gt', 'ssim_gt', 'psnr_full', 'ssim_full', 'revisit_consistency')


def split_variant(spec):
  """'pafu@frame' -> ('pafu', 'frame'): a policy run with its own cache.granularity, so one sweep
  can hold a policy at both granularities; 'pafu' -> ('pafu', None) (the sweep's cache config)."""
  policy, _, granularity = spec.partition('@')
  return policy, granularity or None


def score_run(videos, full, clips, context_frames, static_scene=False):
  """Per-clip, per-generated-frame metrics [N, T - context], the pooled memory score [N] and,
  for a still scene seen by a moving camera (`static_scene`, rollouts), the revisit consistency
  [N]: the generated revisited pixels against the video's own frame that last showed them."""
  gen, ref, gt = (np.asarray(v[:, context_frames:]) for v in (videos, full, clips['video']))
  mask = clips['revisit_mask'][:, context_frames:]
  per_frame = dict(psnr_gt=video_metrics.psnr(gen, gt), ssim_gt=video_metrics.ssim(gen, gt),
                   psnr_full=video_metrics.psnr(gen, ref), ssim_full=video_metrics.ssim(gen, ref),
                   memory_psnr_frame=video_metrics.masked_psnr(gen, gt, mask))
  out = {k: _finite_or_none(v) for k, v in per_frame.items()}
  out['memory_psnr'] = _finite_or_none(video_metrics.pooled_masked_psnr(gen, gt, mask))
  out['revisit_consistency'] = None
  if static_scene and 'frame_cond' in clips:
    camera = np.cumsum(np.asarray(clips['frame_cond'], np.float64)[..., :2], axis=1)
    frames = range(context_frames, np.shape(videos)[1])
    out['revisit_consistency'] = _finite_or_none([
        video_metrics.revisit_consistency(v, np.round(c), m, frames)
        for v, c, m in zip(np.asarray(videos), camera, clips['revisit_mask'])])
  return out


def _finite_or_none(x):
  """Nested lists for JSON: NaN (no revisited pixels) and inf (identical frames) become None."""
  x = np.asarray(x, np.float64)
  return np.where(np.isfinite(x), x, None).tolist()


def aggregate(results):
  """One row per (policy, budget): means over clips and seeds (the pooled memory score's mean
  skips clips without revisited content)."""
  groups = {}
  for r in results:
    groups.setdefault((r['policy'], r['budget_frames']), []).append(r)
  rows = []
  for (policy, budget), runs in groups.items():
    row = dict(policy=policy, budget_frames=budget, seeds=len(runs))
    for metric in METRICS:
      # r.get: runs saved before a metric existed lack it
      values = np.concatenate([np.ravel(np.asarray(r.get(metric), np.float64)) for r in runs])
      values = values[np.isfinite(values)]  # None (stored for NaN / inf) reads back as NaN
      self_reference = policy == 'full' and metric.endswith('_full')
      row[metric] = float(np.mean(values)) if values.size and not self_reference else None
    for key in ('seconds_per_frame', 'frames_per_second', 'cache_bytes_per_sample'):
      row[key] = float(np.mean([r[key] for r in runs]))
    rows.append(row)
  return sorted(rows, key=lambda r: (*_policy_order(r['policy']), r['budget_frames'] or 0))


def paired_memory(results, references):
  """Memory-score differences, policy minus reference, paired over the same clips and seeds at the
  same budget: mean, standard error, the clips counted (those with revisited content) and the
  share where the policy is better. Small gaps between policies are only visible this way."""
  runs = {(r['policy'], r['budget_frames'], r['seed']): r for r in results}
  rows = []
  for policy, budget in sorted({(p, b) for p, b, _ in runs if b is not None}):
    for reference in references:
      if reference == policy:
        continue
      diffs = []
      for (p, b, seed), r in runs.items():
        other = runs.get((reference, budget, seed))
        if p == policy and b == budget and other is not None:
          a = np.asarray(r['memory_psnr'], np.float64)
          diffs.append(a - np.asarray(other['memory_psnr'], np.float64))
      d = np.concatenate(diffs) if diffs else np.zeros(0)
      d = d[np.isfinite(d)]
      if d.size:
        rows.append(dict(policy=policy, budget_frames=budget, reference=reference,
                         memory_gain_db=float(d.mean()),
                         stderr_db=float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None,
                         clips=int(d.size), share_better=float(np.mean(d > 0))))
  return sorted(rows, key=lambda r: (*_policy_order(r['policy']), r['budget_frames'],
                                     r['reference']))


def _policy_order(spec):
  """Rows in the order of POLICIES, a variant (pafu@frame) after its policy."""
  return list(POLICIES).index(split_variant(spec)[0]), spec
