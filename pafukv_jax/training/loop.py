"""The training loop of every stage, in plain phases: check, set up, restore, train, save.

python train.py --config=configs/<stage>.py[:tiny] --workdir=DIR
A workdir holding checkpoints resumes from its latest step, onto whatever mesh this run has; the
data at step s is a function of the seed and s, so a resumed run equals an uninterrupted one.
"""

import dataclasses
import json
import math
import os
import signal
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from pafukv_jax import (checkpoints, conditioning, data, output_dirs, parallel, progress, rollout,
                        sampling, video_io)
from pafukv_jax.models.dit import DiTConfig, init_model
from pafukv_jax.salience import distill
from pafukv_jax.salience.head import init_head
from pafukv_jax.training import steps
from pafukv_jax.training.metrics import MetricWriter

# Fields a resumed run may not change: they define what the checkpoint means.
FROZEN_FIELDS = ('stage', 'model', 'chunk_frames', 'data.dataset', 'data.num_frames',
                 'data.image_size')


def _get(cfg, dotted):
  """A field as plain JSON values (tuples and lists compare equal after a round trip)."""
  for part in dotted.split('.'):
    cfg = cfg[part]
  value = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg
  return json.loads(json.dumps(value))


def _flag(value) -> str:
  """A saved JSON value as a shell-ready --config.FIELD= value."""
  if isinstance(value, (list, tuple)):
    return "'" + repr(tuple(value)) + "'"
  return str(value)


# how to run the model, not what it computes: a resumed run may change them
EXECUTION_FIELDS = ('attention_impl', 'attention_query_chunk', 'cache_block_size', 'scan_layers')


def _frozen(cfg, field):
  if field == 'model':  # every DiTConfig field: one added after a run was saved had its default
    fields = dataclasses.asdict(DiTConfig.from_config(cfg.model))
    return json.loads(json.dumps({k: v for k, v in fields.items() if k not in EXECUTION_FIELDS}))
  return _get(cfg, field)


def check_config(cfg, workdir):
  """Validates cfg and, for a workdir with a saved config, that it means the same run; returns
  the typed configs: the model's and, for the salience stage, the DistillConfig (else None)."""
  if cfg.stage not in steps.STAGES:
    raise ValueError(f'Unknown stage {cfg.stage!r}; expected one of {steps.STAGES}.')
  for field in ('total_steps', 'batch_size', 'log_every', 'checkpoint_every'):
    if cfg[field] < 1:
      raise ValueError(f'config.{field} must be >= 1, got {cfg[field]}.')
  if not 0 <= cfg.get('stop_at_step', 0) <= cfg.total_steps:
    raise ValueError(f'config.stop_at_step must be in [0, total_steps={cfg.total_steps}] (0: run '
                     f'to total_steps), got {cfg.stop_at_step}.')
  if cfg.data.num_frames % cfg.chunk_frames:
    raise ValueError(f'data.num_frames={cfg.data.num_frames} is not a multiple of '
                     f'chunk_frames={cfg.chunk_frames}.')
  model_cfg = DiTConfig.from_config(cfg.model)
  dc = distill.check_config(cfg) if cfg.stage == 'salience' else None
  output_dirs.check_writable(workdir)
  saved_path = os.path.join(workdir, 'config.json')
  # a run that stopped before its first checkpoint left nothing to resume: its config.json does
  # not bind the corrected run (which rewrites it)
  if os.path.exists(saved_path) and checkpoints.TrainCheckpoints.exist_in(workdir):
    with open(saved_path) as f:
      saved = ml_collections.ConfigDict(json.load(f))
    diffs = {}  # field: (saved, now)
    for k in FROZEN_FIELDS:
      a, b = _frozen(saved, k), _frozen(cfg, k)
      if k == 'model':
        diffs.update({f'model.{f}': (a[f], b[f]) for f in a if a[f] != b[f]})
      elif a != b:
        diffs[k] = (a, b)
    if diffs:
      listed = ', '.join(f'{k} (saved {a!r}, now {b!r})' for k, (a, b) in diffs.items())
      flags = ' '.join(f'--config.{k}={_flag(a)}' for k, (a, _) in diffs.items())
      raise ValueError(f'{workdir} holds a run with other {listed}. To resume it, rerun with its '
                       f'values ({flags}; the rest is in {saved_path}), or start a new --workdir.')
  return model_cfg, dc


class _Stop:
  """SIGTERM asks the loop to save and exit at the end of the current step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning('SIGTERM: saving a checkpoint and exiting.')
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def build(cfg, mesh, model_cfg: DiTConfig | None = None):
  """Trained module's graph, sharded initial train state, its shardings and the optimizer."""
  model_cfg = model_cfg or DiTConfig.from_config(cfg.model)
  if cfg.stage == 'salience':
    model = init_head(cfg.head, model_cfg, cfg.seed)
  else:
    model = init_model(model_cfg, cfg.seed)
  if cfg.init_from:
    checkpoints.load_params(cfg.init_from, model)  # read only: the teacher is never re-saved
  graphdef, params = nnx.split(model)
  rules = tuple(tuple(r) for r in cfg.mesh.rules)
  shardings = nnx.to_pure_dict(parallel.param_shardings(params, mesh, rules))
  params = jax.device_put(nnx.to_pure_dict(params), shardings)
  tx = steps.make_optimizer(cfg)
  state = jax.jit(lambda p: steps.init_state(p, tx, cfg.optimizer.ema_decay))(params)
  return graphdef, state, jax.tree.map(lambda x: x.sharding, state), tx


class SampleWriter:
  """Sample videos during training: the teacher's bidirectional sampler, the student's rollout."""

  def __init__(self, cfg, graphdef, batch):
    self.stage, self.graphdef = cfg.stage, graphdef
    n = cfg.sample.num_samples
    model_cfg = DiTConfig.from_config(cfg.model)
    self.label = jnp.asarray(np.asarray(conditioning.from_batch(batch, model_cfg))[:n])
    cond = batch.get('frame_cond')
    self.frame_cond = None if cond is None else jnp.asarray(np.asarray(cond)[:n])
    self.inputs = rollout.inputs(sampling.sample_keys(cfg.seed, np.arange(n)), self.label,
                                 self.frame_cond)
    self.rc = sampling.RolloutConfig(num_frames=cfg.data.num_frames, chunk_frames=cfg.chunk_frames,
                                     timesteps=tuple(cfg.sample.timesteps), shift=cfg.sample.shift)
    self._clip = jax.jit(lambda params, keys, label, cond: sampling.sample_clip(
        nnx.merge(graphdef, params), keys, label, cond, cfg.data.num_frames, self.rc))
    self._rollout = None

  def __call__(self, params, out_dir):
    params = jax.device_get(params)
    if self.stage == 'teacher':
      videos = self._clip(params, self.inputs.keys, self.label, self.frame_cond)
    else:
      if self._rollout is None:
        model = nnx.merge(self.graphdef, params)
        self._rollout = rollout.Rollout(model, self.rc, rollout.full_cache_spec(self.rc, model.cfg))
      self._rollout.params = dict(model=params, head=None)
      videos = self._rollout.generate(self.inputs).videos
    os.makedirs(out_dir, exist_ok=True)
    for i, video in enumerate(np.asarray(videos)):
      video_io.write_gif(os.path.join(out_dir, f'sample_{i:02d}.gif'), video, scale=4)


def model_source(cfg) -> str:
  """The checkpoint whose model a stage must have: the student's `init_from` (the teacher), the
  salience stage's `student`; '' for a stage that starts from scratch."""
  return {'student': cfg.get('init_from', ''), 'salience': cfg.get('student', '')}.get(
      cfg.stage, '') or ''


def follow_dataset(cfg) -> list[str]:
  """Sets model.frame_cond_dim to what the dataset gives (2: a procedural dataset's camera
  motion, the width of a latent folder's `frame_cond`, 0: videos, TFDS); returns
  'frame_cond_dim=D' if that changed it. A model cannot be conditioned on what its data lacks."""
  width = data.frame_cond_dim(cfg.data)
  if width is None or width == cfg.model.frame_cond_dim:
    return []
  with cfg.unlocked():
    cfg.model.frame_cond_dim = width
    if width == 0 and cfg.model.get('rope_positions') == 'world':
      cfg.model.rope_positions = 'grid'  # world positions read the camera from frame_cond
  return [f'frame_cond_dim={width}']


def train(cfg, workdir: str) -> dict:
  """Runs (or resumes) one stage; returns the metrics of the last logged step."""
  # -- check: everything that can be wrong is found before any work -----------------------------
  followed = follow_dataset(cfg)
  if followed:
    print(f'{cfg.stage}: model.{followed[0]}, as data.dataset={cfg.data.dataset!r} gives.',
          file=sys.stderr)
  model_cfg, dc = check_config(cfg, workdir)
  parallel.maybe_initialize_distributed(cfg.multihost)
  mesh = parallel.make_mesh(cfg.mesh)
  with cfg.unlocked():
    cfg.data.batch_size = cfg.batch_size
  pipeline = data.make_pipeline(cfg.data, 'train', mesh=mesh, data_axes=parallel.BATCH_AXES)
  clip = np.shape(pipeline.source[0]['video'])
  if tuple(clip[1:]) != (*model_cfg.image_size, model_cfg.channels):
    raise ValueError(f'The data\'s frames are {tuple(clip[1:])}, the model takes '
                     f'{(*model_cfg.image_size, model_cfg.channels)}: set data.image_size and '
                     'model.image_size / model.channels alike.')
  frozen = targets_fn = None
  if cfg.stage == 'salience':  # batches become (student features, teacher targets) in the step
    # before the workdir: a wrong-shaped teacher leaves nothing behind
    frozen, targets_fn = distill.load_frozen(cfg, model_cfg, dc, mesh)
  os.makedirs(workdir, exist_ok=True)

  # -- set up, then restore ----------------------------------------------------------------------
  ckpt = checkpoints.TrainCheckpoints(workdir, cfg.max_to_keep)
  resume = ckpt.latest_step()
  if resume is not None and cfg.init_from:
    with cfg.unlocked():
      cfg.init_from = ''  # the checkpoint already holds the trained weights
  graphdef, state, state_shardings, tx = build(cfg, mesh, model_cfg)
  start = 0
  if resume is not None:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state)
    state, meta = ckpt.restore_newest_good(abstract)
    start = int(meta['step'])
    print(f'Resumed {workdir} from step {start}.')
  if jax.process_index() == 0 and resume is None:  # a fresh run: its config, written once
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(cfg.to_json_best_effort(indent=2))

  step_fn = steps.make_train_step(graphdef, steps.stage_loss(cfg), tx, cfg.optimizer.ema_decay,
                                  targets_fn)
  train_step = jax.jit(step_fn, donate_argnums=(0,),
                       out_shardings=(state_shardings, parallel.replicated(mesh)))
  key = jax.random.key(cfg.seed)
  writer = MetricWriter(workdir, start)
  stop = _Stop()
  sampler = None
  last = {}
  end = cfg.get('stop_at_step', 0) or cfg.total_steps  # the schedule is total_steps' either way
  bar = progress.progress(end, cfg.stage, 'step', initial=start)
  t_log, n_log = time.perf_counter(), 0
  try:
    for step, batch in zip(range(start, end), pipeline.iterate(start)):
      with jax.set_mesh(mesh):  # the model keeps activations split over the batch axes
        state, metrics = train_step(state, batch, key, frozen)
      done, n_log = step + 1, n_log + 1
      bar.update(1)
      stopping = stop.requested  # read once: a SIGTERM after this is handled at the next step
      save = done % cfg.checkpoint_every == 0 or done == end or stopping
      if done % cfg.log_every == 0 or save:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(math.isfinite(v) for v in metrics.values()):
          raise FloatingPointError(
              f'Non-finite metrics at step {done}: {metrics}. Stopped without saving; the last '
              f'good checkpoint (step {ckpt.latest_step()}) is kept. Lower '
              'optimizer.learning_rate or optimizer.grad_clip, or check the data.')
        seconds = time.perf_counter() - t_log
        metrics.update(steps_per_second=n_log / seconds,
                       examples_per_second=n_log * cfg.batch_size / seconds)
        writer.write(done, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        last = dict(step=done, **metrics)
        t_log, n_log = time.perf_counter(), 0
      if save:
        ckpt.save(done, state, dict(step=done))
      if targets_fn is not None and (done % cfg.eval_every == 0 or done == end):
        jax.block_until_ready(state)  # one multi-device program at a time (CPU collectives)
        with jax.set_mesh(mesh):
          eval_metrics = distill.evaluate(cfg, graphdef, state['params'], frozen, targets_fn, mesh)
        writer.write(done, eval_metrics)
        last.update(eval_metrics)
      if cfg.sample_every and done % cfg.sample_every == 0 and targets_fn is None:
        sampler = sampler or SampleWriter(cfg, graphdef, batch)
        sampler(state['ema'] if state['ema'] is not None else state['params'],
                os.path.join(workdir, 'samples', f'step_{done}'))
      if stopping:
        break
  finally:
    bar.close()
    stop.restore()
    ckpt.close()
    writer.close()
  return last
