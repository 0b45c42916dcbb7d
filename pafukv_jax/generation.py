"""Batch generation from a config: what `generate.py` runs, callable from sweeps and scripts."""

import json
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from pafukv_jax import checkpoints, output_dirs, progress, rollout, sampling, video_io
from pafukv_jax import context as context_lib
from pafukv_jax.cache import policies
from pafukv_jax.cache.fov import fov_scores
from pafukv_jax.compile_counter import CompileCounter
from pafukv_jax.models.dit import DiTConfig, init_model
from pafukv_jax.salience.head import init_head
from pafukv_jax.salience.oracle import OracleScores
from pafukv_jax.vae import pixels

OUTPUTS = ('samples.npz', 'metrics.json', 'manifest.json', 'videos')


def rollout_config(cfg) -> sampling.RolloutConfig:
  rc = sampling.RolloutConfig(
      num_frames=cfg.num_frames, chunk_frames=cfg.chunk_frames, context_frames=cfg.context_frames,
      timesteps=tuple(cfg.sampling.timesteps), shift=cfg.sampling.shift,
      sampler=cfg.sampling.sampler)
  rc.validate()
  return rc


def parse_config(cfg, policy: str | None = None, cache_config=None):
  """The typed configs of a generation config, checked: (DiTConfig, RolloutConfig, CacheSpec or
  None for 'recompute') of `policy` (default cfg.policy) with `cache_config` (default cfg.cache)."""
  model_cfg = DiTConfig.from_config(cfg.model)
  rc = rollout_config(cfg)
  cache_config = cfg.cache if cache_config is None else cache_config
  spec = policies.cache_spec(policy or cfg.policy, cache_config, num_frames=rc.num_frames,
                             chunk_frames=rc.chunk_frames,
                             tokens_per_frame=model_cfg.tokens_per_frame)
  return model_cfg, rc, spec


def check_workdir(workdir: str, overwrite: bool) -> None:
  output_dirs.check_writable(workdir)
  present = [name for name in OUTPUTS if os.path.exists(os.path.join(workdir, name))]
  if present and not overwrite:
    raise FileExistsError(
        f'{workdir} already holds results ({", ".join(present)}); choose a new --workdir or pass '
        '--overwrite to replace them (they are replaced only once the new run has finished).')


def check_stages(cfg, policy_names):
  """Refuses checkpoints of the wrong stage (a teacher as the student, ...), for the policies
  that will run (a head for pafu, the teacher for oracle)."""
  if cfg.checkpoint:
    checkpoints.check_stage(cfg.checkpoint, 'student', 'checkpoint')
  if 'pafu' in policy_names and cfg.head.checkpoint:
    checkpoints.check_stage(cfg.head.checkpoint, 'salience', 'head.checkpoint')
  if 'oracle' in policy_names and cfg.oracle.teacher:
    checkpoints.check_stage(cfg.oracle.teacher, 'teacher', 'oracle.teacher')


def build_model(model_cfg: DiTConfig, checkpoint: str, init_seed: int = 0):
  """The model of `model_cfg` with the weights in `checkpoint` (random weights if '')."""
  model = init_model(model_cfg, init_seed)
  if checkpoint:
    checkpoints.load_params(checkpoint, model)
  else:
    logging.warning('No checkpoint given: generating with random weights (smoke run / speed).')
  return model


def build_head(head_cfg, model_cfg: DiTConfig):
  """The trained salience head in head_cfg.checkpoint: a salience-stage workdir (its config.json
  gives the head's shape) or a params directory (shaped by head_cfg's fields)."""
  saved = checkpoints.saved_config(head_cfg.checkpoint) or {}
  shape = ml_collections.ConfigDict(saved['head']) if saved.get('head') else head_cfg
  head = init_head(shape, model_cfg)
  return checkpoints.load_params(head_cfg.checkpoint, head)


def build_oracle(cfg, model, model_cfg: DiTConfig, rc) -> OracleScores:
  """The oracle's scorer from cfg.oracle (the teacher) and cfg.cache.per_layer."""
  return OracleScores(model, rc, model_cfg, cfg.oracle.teacher, weights=tuple(cfg.oracle.weights),
                      normalize=cfg.oracle.normalize,
                      per_layer=bool(cfg.cache.get('per_layer', False)))


def generate(cfg, workdir: str, overwrite: bool = False) -> dict:
  """Generates cfg.num_samples videos into workdir; returns the metrics it writes."""
  # Every check comes before any work and before anything in workdir is touched.
  if cfg.policy not in policies.rollout_policies():
    raise ValueError(f'Unknown policy {cfg.policy!r}; choose one of '
                     f'{list(policies.rollout_policies())}.')
  if cfg.policy == 'pafu' and not cfg.head.checkpoint:
    raise ValueError("policy='pafu' needs --config.head.checkpoint=DIR: a salience stage workdir "
                     '(train.py --config=configs/salience.py).')
  if cfg.policy == 'oracle' and not cfg.oracle.teacher:
    raise ValueError("policy='oracle' needs --config.oracle.teacher=DIR: the bidirectional "
                     "teacher, whose salience on the `full` rollout it keeps.")
  for path in (cfg.checkpoint, cfg.head.checkpoint if cfg.policy == 'pafu' else '',
               cfg.oracle.teacher if cfg.policy == 'oracle' else ''):
    if path and not os.path.isdir(path):
      raise FileNotFoundError(f'checkpoint {path} does not exist.')
  check_stages(cfg, [cfg.policy])
  if cfg.num_samples < 1 or cfg.batch_size < 1:
    raise ValueError('num_samples and batch_size must be >= 1.')
  model_cfg, rc, spec = parse_config(cfg)
  if cfg.get('vae'):  # z_dim against the model's channels: no weights read yet
    pixels.check_vae(cfg.vae, model_cfg.channels)
  check_workdir(workdir, overwrite)
  context, frame_cond, context_cond = context_lib.load_context(cfg, model_cfg)
  if cfg.policy == 'fov' and frame_cond is None:
    raise ValueError("policy='fov' scores tokens by the planned camera path: give a context "
                     "with frame_cond (--config.context=test on photo_pan, or an .npz with it).")
  cond, prompt_rows = context_lib.sample_conditioning(cfg, model_cfg, context_cond)
  vae = pixels.load_vae(cfg.vae, model_cfg.channels) if cfg.get('vae') else None
  model = build_model(model_cfg, cfg.checkpoint, cfg.init_seed)
  head = build_head(cfg.head, model_cfg) if cfg.policy == 'pafu' else None
  runner = rollout.Rollout(model, rc, spec, head=head)
  oracle = build_oracle(cfg, model, model_cfg, rc) if cfg.policy == 'oracle' else None

  size = min(cfg.batch_size, cfg.num_samples)
  num_batches = -(-cfg.num_samples // size)
  generated_chunks = rc.num_chunks - rc.context_frames // rc.chunk_frames
  videos, chunk_seconds = [], []
  bar = progress.progress(num_batches * generated_chunks, cfg.policy, 'chunk')
  def batch(i):
    """(inputs, context) of batch i."""
    ids = np.arange(i * size, (i + 1) * size) % cfg.num_samples  # pad the last batch
    pick = lambda a: None if a is None else jnp.asarray(a[ids % a.shape[0]])
    return rollout.inputs(sampling.sample_keys(cfg.seed, ids), cond[ids], pick(frame_cond)), \
        pick(context)

  # the oracle's reference rollouts come first: `compiles` and the timings are the policy's own
  scores = [oracle(*batch(i)) if oracle else None for i in range(num_batches)]
  if cfg.policy == 'fov':
    scores = [fov_scores(batch(i)[0].frame_cond, model_cfg.image_size, model_cfg.patch_size)
              for i in range(num_batches)]
  with CompileCounter(*rollout.JITTED) as compiles:
    start = time.perf_counter()
    for i in range(num_batches):
      inputs, ctx = batch(i)
      out = runner.generate(inputs.replace(token_scores=scores[i]), ctx, progress=bar.update)
      videos.append(np.asarray(out.videos))
      chunk_seconds += out.chunk_seconds
    total_seconds = time.perf_counter() - start
  bar.close()
  videos = np.concatenate(videos)[:cfg.num_samples].astype(np.float32)
  if model_cfg.channels in video_io.PIXEL_CHANNELS:  # pixels; latents keep their own range
    videos = np.clip(videos, -1.0, 1.0)
  decode_start = time.perf_counter()
  decoded = pixels.decode_videos(vae, videos, uint8=True) if vae is not None else None
  decode_seconds = time.perf_counter() - decode_start

  steady = chunk_seconds[1:]
  steady_chunk = float(np.mean(steady)) if steady else None
  metrics = dict(
      policy=cfg.policy,
      budget_tokens=spec.capacity if spec else None,
      budget_frames=spec.capacity_frames if spec else None,
      sink_frames=spec.sink_frames if spec else 0,
      cache_bytes=runner.cache_bytes(size),
      batch_size=size,
      tokens_per_frame=model_cfg.tokens_per_frame,
      num_frames=rc.num_frames,
      context_frames=rc.context_frames,
      chunk_frames=rc.chunk_frames,
      num_samples=cfg.num_samples,
      seconds_per_frame=steady_chunk / rc.chunk_frames if steady else None,
      compile_seconds=chunk_seconds[0] - (steady_chunk or 0.0),
      compiles=compiles.count,  # of the jitted rollout functions, all batches
      compiles_by_function=dict(compiles.by_name),
      total_seconds=total_seconds,
      chunk_seconds=chunk_seconds,
      device=jax.devices()[0].device_kind,
      checkpoint=cfg.checkpoint or None,
      head_checkpoint=cfg.head.checkpoint if cfg.policy == 'pafu' else None,
  )
  if vae is not None:
    metrics.update(vae=cfg.vae, decoded_frames=decoded.shape[1],
                   decoded_size=list(decoded.shape[2:4]), decode_seconds=decode_seconds)
  manifest = [dict(sample=i, video=f'videos/sample_{i:04d}.gif', seed=cfg.seed,
                   **({'mp4': f'videos/sample_{i:04d}.mp4'} if vae is not None else {}),
                   **({'label': int(cond[i])} if model_cfg.num_classes else
                      {'prompt_row': int(i % prompt_rows) if prompt_rows else None}),
                   context=int(i % len(context)) if context is not None
                   else None, policy=cfg.policy) for i in range(cfg.num_samples)]
  _write_outputs(workdir, videos, metrics, manifest, cfg, decoded)
  return metrics


def _write_outputs(workdir, videos, metrics, manifest, cfg, decoded=None):
  """Writes into a fresh folder beside the outputs, then moves each into place. `decoded`: the
  VAE's pixels of latent `videos`, written as MP4 and GIF at their own size (video.scale is for
  the small models' frames)."""
  os.makedirs(workdir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.generate-', dir=workdir)
  try:
    np.savez(os.path.join(tmp, 'samples.npz'), videos=videos)
    os.makedirs(os.path.join(tmp, 'videos'))
    for i, video in enumerate(videos):
      name = os.path.join(tmp, 'videos', f'sample_{i:04d}')
      if decoded is not None:
        frames = decoded[i]
        video_io.write_video(name + '.mp4', frames, fps=cfg.video.fps)
        video_io.write_video(name + '.gif', frames, fps=cfg.video.fps)
        continue
      video_io.write_gif(name + '.gif', video_io.viewable(video), fps=cfg.video.fps,
                         scale=cfg.video.scale)
    with open(os.path.join(tmp, 'metrics.json'), 'w') as f:
      json.dump(metrics, f, indent=2)
    with open(os.path.join(tmp, 'manifest.json'), 'w') as f:
      json.dump(manifest, f, indent=1)
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
      f.write(cfg.to_json_best_effort(indent=2))
    for name in (*OUTPUTS, 'config.json'):
      dst = os.path.join(workdir, name)
      if os.path.isdir(dst):
        shutil.rmtree(dst)
      os.replace(os.path.join(tmp, name), dst)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
