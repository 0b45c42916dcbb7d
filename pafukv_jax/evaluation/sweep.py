"""Sweeps: every policy x cache budget x seed on held-out clips, run (or resumed) and reported.

The first `context_frames` of each held-out clip are given (prefilled into the cache); `mode`
says what happens to the rest:
  rollout         it is generated: a free continuation, scored against the ground truth;
  teacher_forced  the cache is built from its true frames, and every chunk is predicted from
                  noise level `noise_level` over it (`teacher_forced`): what differs between
                  policies is only what their caches kept, not the drift of their own rollouts.
Each run is scored (`scores`) and timed (seconds per generated frame, steady state) with its
cache's bytes per sample; the aggregated table, paired gains, plots and videos are written by
`report`. This module checks the config before any work and runs the rollouts.

In the sweep's workdir it writes
  config.json                                   the sweep's config
  runs/<policy>_b<budget>_s<seed>.npz / .json   one run: videos, per-clip per-frame metrics
and then the report beside them (see `report`). A run already on disk is skipped, so an
interrupted sweep resumes where it stopped; every run records the key of what decides its result
(`run_key`), and a run on disk made with another key is refused, naming what changed, before any
work: a rerun with other clips, weights or cache options never reports the old numbers.
"""

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np

from pafukv_jax import conditioning, data, generation, output_dirs, progress, rollout, sampling
from pafukv_jax.cache import policies
from pafukv_jax.cache.fov import fov_scores
from pafukv_jax.cache.kv_cache import GRANULARITIES
from pafukv_jax.evaluation import report, run_keys, scores, teacher_forced
from pafukv_jax.evaluation.report import GROUND_TRUTH
from pafukv_jax.evaluation.pixel_space import PixelSpace
from pafukv_jax.evaluation.scores import split_variant
from pafukv_jax.vae import pixels


def is_bounded(spec):
  """Whether the policy of `spec` (pafu, pafu@frame) has a cache budget (all but full)."""
  return policies.get_policy(split_variant(spec)[0]).bounded


def run_name(policy, budget, seed):
  if not is_bounded(policy):
    return f'{policy}_s{seed}'
  return f'{policy}_b{budget}_s{seed}'


def cache_config(cfg, spec, budget):
  """(policy name, its cache config) for a run: the sweep's cache at `budget` frames (None: full,
  whose capacity is the whole video), with the variant's granularity if it names one."""
  policy, granularity = split_variant(spec)
  cache = cfg.cache.copy_and_resolve_references()
  if budget is not None:
    cache.budget_frames = budget
  cache.granularity = granularity or cache.granularity
  return policy, cache


MODES = ('rollout', 'teacher_forced')
NAME_LISTS = ('policies', 'side_by_side', 'paired_references')
AUTO = 'auto'
# what side_by_side / paired_references = 'auto' become: these, less the policies not swept
AUTO_NAMES = dict(side_by_side=(GROUND_TRUTH, 'full', 'window', 'sink_window', 'pafu'),
                  paired_references=('window', 'sink_window', 'h2o'))


def split_name_lists(cfg):
  """`--config.policies=full,window` arrives as ('full,window',) (ml_collections parses numbers
  separated by commas as tuples, but not words): split such entries at the commas. Then resolve
  'auto' in side_by_side and paired_references (see AUTO_NAMES), so that
  `--config.policies=full,window` needs no other flag; names given explicitly are checked."""
  with cfg.unlocked():
    for field in NAME_LISTS:
      cfg[field] = tuple(n.strip() for entry in cfg[field] for n in str(entry).split(',')
                         if n.strip())
    for field, names in AUTO_NAMES.items():
      if cfg[field] == (AUTO,):
        cfg[field] = tuple(n for n in names if n == GROUND_TRUTH or n in cfg.policies)
    cfg.budgets = parse_budgets(cfg.budgets)
  return cfg


def parse_budgets(budgets) -> tuple[int, ...]:
  """budgets as whole frames: `--config.budgets=2,4` arrives as (2, 4), but `3,x` or an empty
  value as one string; say what is wrong with them, not with compare_budget."""
  words = [w.strip() for entry in budgets for w in str(entry).split(',') if w.strip()]
  if not words:
    raise ValueError('budgets is empty: give the cache budgets in frames, e.g. '
                     '--config.budgets=2,4,8.')
  bad = [w for w in words if not w.isdigit()]  # (0 is refused with the cache's own reason)
  if bad:
    raise ValueError(f'budgets must be whole numbers of frames, e.g. --config.budgets=2,4,8; '
                     f'{", ".join(map(repr, bad))} is not.')
  return tuple(int(w) for w in words)


def check_config(cfg):
  """Every error a sweep could meet, before any work."""
  unknown = [p for p in cfg.policies if split_variant(p)[0] not in policies.POLICIES]
  if unknown:
    raise ValueError(f'Unknown policies {unknown}; choose from {list(policies.POLICIES)} '
                     f'(optionally with @GRANULARITY, one of {GRANULARITIES}: pafu@frame).')
  bad = [p for p in cfg.policies if split_variant(p)[1] not in (None, *GRANULARITIES)
         or (split_variant(p)[1] and not is_bounded(p))]
  if bad:
    raise ValueError(f'{bad}: a policy variant is a bounded policy with @GRANULARITY, one of '
                     f'{GRANULARITIES} (pafu@frame).')
  if cfg.mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {cfg.mode!r}.')
  if cfg.mode == 'teacher_forced' and not 0 < cfg.noise_level <= 1:
    raise ValueError(f'noise_level must be in (0, 1] (1: each chunk predicted from pure noise), '
                     f'got {cfg.noise_level}.')
  if 'full' not in cfg.policies:
    raise ValueError("policies must include 'full': it is the reference of the fidelity metrics.")
  if not 0 < cfg.context_frames < cfg.num_frames:
    raise ValueError(f'context_frames must be in [1, num_frames={cfg.num_frames}) for a '
                     f'continuation task, got {cfg.context_frames}.')
  if cfg.compare_budget not in cfg.budgets:  # (budgets parsed by split_name_lists)
    raise ValueError(f'compare_budget={cfg.compare_budget} is not one of budgets={cfg.budgets}.')
  unknown = [p for p in cfg.side_by_side if p != GROUND_TRUTH and p not in cfg.policies]
  if unknown:
    raise ValueError(f'side_by_side names {unknown}, which are not in policies {cfg.policies}.')
  unknown = [p for p in cfg.paired_references if p not in cfg.policies or p == 'full']
  if unknown:
    raise ValueError(f'paired_references names {unknown}: they must be bounded policies of '
                     f'{cfg.policies}.')
  model_cfg, rc, _ = generation.parse_config(cfg, 'full')
  # the runs' caches: `full` once (budget None), every bounded policy at every budget
  cache_specs = {(spec, budget): generation.parse_config(cfg, *cache_config(cfg, spec, budget))[2]
                 for spec in cfg.policies
                 for budget in (cfg.budgets if is_bounded(spec) else (None,))}
  needs = dict(pafu=('head.checkpoint', cfg.head.checkpoint),
               oracle=('oracle.teacher', cfg.oracle.teacher))
  base_policies = [split_variant(p)[0] for p in cfg.policies]
  for policy, (field, path) in needs.items():
    if policy in base_policies and not (path and os.path.isdir(path)):
      raise FileNotFoundError(f"policy {policy!r} needs --config.{field}=DIR (got {path!r}); "
                              f'or leave {policy!r} out of policies.')
  if cfg.checkpoint and not os.path.isdir(cfg.checkpoint):
    raise FileNotFoundError(f'checkpoint {cfg.checkpoint} does not exist.')
  generation.check_stages(cfg, base_policies)
  if cfg.get('vae'):  # scored in pixel space: the VAE must decode this model's latents
    pixels.check_vae(cfg.vae, model_cfg.channels)
  if cfg.data.num_frames != cfg.num_frames or tuple(cfg.data.image_size) != tuple(
      model_cfg.image_size):
    raise ValueError(f'data clips ({cfg.data.num_frames} frames of {tuple(cfg.data.image_size)}) '
                     f'must match num_frames={cfg.num_frames} and the model\'s image size '
                     f'{tuple(model_cfg.image_size)}.')
  return model_cfg, rc, cache_specs


def load_clips(cfg):
  """The first num_clips held-out clips: video [N, T, H, W, C] in [-1, 1], label, frame_cond,
  revisit_mask [N, T, H, W] (all False for data without one, a folder of videos or latents:
  their memory score is None, the other metrics are scored)."""
  clips = data.first_clips(cfg.data, 'test', cfg.num_clips)
  if len(clips['video']) < cfg.num_clips:
    raise ValueError(f'The test split has {len(clips["video"])} clips; num_clips={cfg.num_clips}.')
  mask = clips.get('revisit_mask')
  clips['revisit_mask'] = (np.zeros(clips['video'].shape[:4], bool) if mask is None
                           else mask.astype(bool))
  return clips


# data fields that do not change which clips are read, and fields added since runs recorded
# their keys, left out at the value those runs had (so their keys still match)
_DATA_FIELDS_IGNORED = ('data_dir', 'batch_size')
_DATA_DEFAULTS_OMITTED = dict(trajectories='', camera_step=1)


class Sweep:
  """Runs (or resumes) a sweep; `run()` returns the aggregated rows."""

  def __init__(self, cfg, workdir):
    self.model_cfg, self.rc, self.cache_specs = check_config(split_name_lists(cfg))
    output_dirs.check_writable(workdir)
    self.cfg, self.workdir = cfg, workdir
    self.runs_dir = os.path.join(workdir, 'runs')
    self.model = generation.build_model(self.model_cfg, cfg.checkpoint, cfg.init_seed)
    # the checkpoints' fingerprints, once: every run's key names them
    self.fingerprints = {path: run_keys.fingerprint(path) for path in
                         (cfg.checkpoint, cfg.head.checkpoint, cfg.oracle.teacher)}
    self.clips = load_clips(cfg)
    if any(split_variant(p)[0] == 'fov' for p in cfg.policies) and 'frame_cond' not in self.clips:
      raise ValueError(f"policy 'fov' needs the clips' camera path: {cfg.data.dataset} has none.")
    self._head = self._oracle = None
    # a latent model with its VAE: runs keep their latents and are scored on their decoded pixels
    self.vae = pixels.load_vae(cfg.vae, self.model_cfg.channels) if cfg.get('vae') else None
    self.pixels = self.vae and PixelSpace(self.vae, self.clips, cfg.context_frames, cfg.num_frames)

  # -- one run --------------------------------------------------------------------------------

  def run_key(self, spec, budget, seed) -> dict:
    """Everything that decides a run's result (JSON values): the model, its weights, the clips,
    the rollout, the run's cache and the `full` reference's (fidelity is scored against it), the
    seed, and the head or the oracle's teacher where the policy reads one."""
    cfg, policy = self.cfg, split_variant(spec)[0]
    data_cfg = {k: v for k, v in cfg.data.to_dict().items() if k not in _DATA_FIELDS_IGNORED
                and _DATA_DEFAULTS_OMITTED.get(k, object()) != v}
    key = dict(model=dataclasses.asdict(self.model_cfg),
               checkpoint=self.fingerprints[cfg.checkpoint],
               init_seed=cfg.init_seed, data=data_cfg, num_clips=cfg.num_clips,
               rollout=dataclasses.asdict(self.rc), seed=seed,
               cache=dataclasses.asdict(self.cache_specs[spec, budget]),
               full_cache=dataclasses.asdict(self.cache_specs['full', None]))
    if cfg.mode != 'rollout':  # rollout runs keep the keys they had before modes existed
      key['mode'] = dict(name=cfg.mode, noise_level=cfg.noise_level)
    if self.vae is not None:  # scored in pixel space, latents unclipped
      key['vae'] = self.fingerprints.setdefault(cfg.vae, run_keys.fingerprint(cfg.vae))
    if policy == 'pafu':
      key['head'] = dict(checkpoint=self.fingerprints[cfg.head.checkpoint])
    if policy == 'oracle':
      key['oracle'] = dict(teacher=self.fingerprints[cfg.oracle.teacher],
                           weights=list(cfg.oracle.weights), normalize=cfg.oracle.normalize)
    return json.loads(json.dumps(key))

  def check_saved_runs(self, planned):
    """Refuses, before any work, runs on disk made with another key than this sweep's."""
    stale = []
    for spec, budget, seed in planned:
      path = os.path.join(self.runs_dir, run_name(spec, budget, seed) + '.json')
      if os.path.exists(path):
        with open(path) as f:
          saved = json.load(f).get('run_key')
        changes = (run_keys.key_changes(saved, self.run_key(spec, budget, seed)) if saved is not None
                   else ['(no key: made by an older version)'])
        if changes:
          stale.append(f'{os.path.basename(path)}: {", ".join(changes[:4])}'
                       + (f' and {len(changes) - 4} more' if len(changes) > 4 else ''))
    if stale:
      raise ValueError(f'{self.workdir} holds runs made with other settings than this sweep\'s:\n  '
                       + '\n  '.join(stale[:5]) + (f'\n  ... and {len(stale) - 5} more runs'
                                                   if len(stale) > 5 else '')
                       + f'\nUse a new --workdir, or remove {self.runs_dir} to rerun them.')

  def _rollout(self, spec, budget):
    policy = split_variant(spec)[0]
    if policy == 'pafu' and self._head is None:
      self._head = generation.build_head(self.cfg.head, self.model_cfg)
    return rollout.Rollout(self.model, self.rc, self.cache_specs[spec, budget],
                           head=self._head if policy == 'pafu' else None)

  def _generate(self, policy, budget, seed, full_videos):
    """Videos [N, T, ...], seconds per generated frame, cache bytes per sample."""
    cfg, clips = self.cfg, self.clips
    runner = self._rollout(policy, budget)
    policy = split_variant(policy)[0]
    if policy == 'oracle' and self._oracle is None:
      self._oracle = generation.build_oracle(cfg, self.model, self.model_cfg, self.rc)
    videos, seconds = [], []
    for start in range(0, cfg.num_clips, cfg.batch_size):
      ids = np.arange(start, start + cfg.batch_size) % cfg.num_clips  # pad the last batch
      cond = clips.get('frame_cond')
      inputs = rollout.inputs(sampling.sample_keys(seed, ids),
                              conditioning.from_batch(clips, self.model_cfg)[ids],
                              None if cond is None else cond[ids])
      # the oracle scores the video the cache holds: the full rollout of these clips (which this
      # sweep already generated), or in teacher-forced mode the clips themselves
      if policy == 'oracle':
        seen = clips['video'][ids] if cfg.mode == 'teacher_forced' else full_videos[ids]
        inputs = inputs.replace(token_scores=self._oracle.of_video(
            jnp.asarray(seen), inputs.cond, inputs.frame_cond))
      if policy == 'fov':  # the planned path: what later frames will see
        inputs = inputs.replace(token_scores=fov_scores(
            cond[ids], self.model_cfg.image_size, self.model_cfg.patch_size))
      if cfg.mode == 'teacher_forced':
        out = teacher_forced.predict(runner, inputs, clips['video'][ids], cfg.noise_level)
      else:
        out = runner.generate(inputs, jnp.asarray(clips['video'][ids, :cfg.context_frames]))
      videos.append(np.asarray(out.videos))
      seconds += out.chunk_seconds[1:]  # the first chunk of a rollout includes compilation
    spf = float(np.mean(seconds)) / cfg.chunk_frames if seconds else float('nan')
    videos = np.concatenate(videos)[:cfg.num_clips]
    if self.vae is None:  # (with a VAE: latents, decoded unclipped as generate.py writes them)
      videos = np.clip(videos, -1, 1)
    return videos, spf, runner.cache_bytes(cfg.batch_size) // cfg.batch_size

  def run_one(self, policy, budget, seed, full_videos):
    name = run_name(policy, budget, seed)
    path = os.path.join(self.runs_dir, name)
    if os.path.exists(path + '.json'):
      with open(path + '.json') as f:
        return json.load(f), np.load(path + '.npz')['videos']
    videos, spf, cache_bytes = self._generate(policy, budget, seed, full_videos)
    reference = videos if full_videos is None else full_videos
    scored = (videos, reference, self.clips, self.cfg.context_frames)
    if self.vae is not None:
      scored = self.pixels.score_args(name, videos, run_name('full', None, seed), reference)
    result = dict(policy=policy, budget_frames=budget if is_bounded(policy) else None,
                  mode=self.cfg.mode,
                  run_key=self.run_key(policy, budget, seed),
                  seed=seed, seconds_per_frame=spf, frames_per_second=1.0 / spf,
                  cache_bytes_per_sample=int(cache_bytes),
                  **scores.score_run(*scored, self.cfg.mode == 'rollout' and self.vae is None
                                     and data.static_scene(self.cfg.data)))
    report.atomic(path + '.npz', lambda p: np.savez(p, videos=videos))
    report.atomic(path + '.json', lambda p: report.dump_json(p, result))
    return result, videos

  # -- the sweep ------------------------------------------------------------------------------

  def run(self):
    cfg = self.cfg
    bounded = [p for p in cfg.policies if is_bounded(p)]
    todo = [(p, b, s) for s in cfg.seeds for p in bounded for b in cfg.budgets]
    self.check_saved_runs([('full', None, s) for s in cfg.seeds] + todo)
    os.makedirs(self.runs_dir, exist_ok=True)
    with open(os.path.join(self.workdir, 'config.json'), 'w') as f:
      f.write(cfg.to_json_best_effort(indent=2))
    results, compare = [], {}
    with progress.progress(len(todo) + len(cfg.seeds), 'sweep', 'run') as bar:
      for seed in cfg.seeds:
        full, full_videos = self.run_one('full', None, seed, None)
        bar.update(1)
        results.append(full)
        if seed == cfg.seeds[0]:
          compare['full'] = full_videos
        for policy, budget, s in todo:
          if s != seed:
            continue
          bar.set_postfix_str(run_name(policy, budget, seed))
          result, videos = self.run_one(policy, budget, seed, full_videos)
          bar.update(1)
          results.append(result)
          if seed == cfg.seeds[0] and budget == cfg.compare_budget:
            compare[policy] = videos
    rows = scores.aggregate(results)
    truth, timeline = self.clips['video'], None
    if self.vae is not None:  # the side-by-side videos and per-frame curves in pixels
      compare = self.pixels.compare(compare, min(cfg.num_videos, cfg.num_clips))
      truth, timeline = self.pixels.clips()['video'], self.pixels.timeline
    report.write(self.workdir, cfg, rows, results, compare, truth, timeline)
    return rows
