"""Stage 3: distilling the teacher's salience into the Salience Estimation Head.

The teacher and the student are frozen; only the head trains. For every clip,
  target   = the teacher's SSE (salience_targets.py): how much each token is attended by queries
             of earlier, the same and later chunks, the future included (salience.source =
             'student', an ablation: the attention the student's own later queries pay it);
  features = the student's per-token block outputs from the clean block-causal pass, which is
             what the cached rollout's write pass computes (exactly so while nothing is evicted);
and the head learns to rank the tokens as the target does, with one of LOSSES.

`make_targets_fn` turns a data batch into (features, target) on the mesh; `distill_loss` is the
stage's loss for training/steps.py; `ranking_metrics` scores the head and the heuristic
policies' orders (h2o, window, random) against the target on held-out clips.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pafukv_jax import checkpoints, data, parallel, salience_targets
from pafukv_jax.evaluation import ranking
from pafukv_jax.models.dit import DiTConfig, init_model

LOSSES = ('mse_log', 'smooth_l1', 'listwise', 'pairwise')
BASELINES = ('h2o', 'window', 'random')
SOURCES = ('teacher', 'student')  # whose attention the targets come from


def check_config(cfg):
  sc = cfg.salience
  for field in ('teacher', 'student'):
    if not cfg[field]:
      raise ValueError(f'The salience stage needs --config.{field}=DIR: the trained {field} '
                       '(a training workdir or a params directory).')
    if not os.path.isdir(cfg[field]):
      raise FileNotFoundError(f'config.{field}={cfg[field]} does not exist: give the {field}\'s '
                              'training workdir or params directory.')
  num_layers = cfg.model.num_layers
  if not -num_layers <= cfg.head.feature_layer < num_layers:
    raise ValueError(f'head.feature_layer={cfg.head.feature_layer} is not a layer of the '
                     f'{num_layers}-layer model.')
  if sc.get('source', 'teacher') not in SOURCES:
    raise ValueError(f'Unknown salience.source {sc.source!r}; choose one of {SOURCES}.')
  if sc.loss not in LOSSES:
    raise ValueError(f'Unknown salience.loss {sc.loss!r}; choose one of {LOSSES}.')
  if not all(0 < b <= 1 for b in cfg.eval_budgets):
    raise ValueError(f'eval_budgets are fractions of a clip\'s tokens in (0, 1], got '
                     f'{tuple(cfg.eval_budgets)}.')
  if not 0 <= sc.noise_level < 1:
    raise ValueError(f'salience.noise_level must be in [0, 1), got {sc.noise_level}.')


def load_frozen(cfg, mesh):
  """The frozen teacher and student: (params {'teacher', 'student'} on the mesh, targets_fn)."""
  rules = tuple(tuple(r) for r in cfg.mesh.rules)
  graphdefs, params = {}, {}
  for name in ('teacher', 'student'):
    model = checkpoints.load_params(cfg[name], init_model(DiTConfig.from_config(cfg.model)))
    graphdefs[name], state = nnx.split(model)
    shardings = nnx.to_pure_dict(parallel.param_shardings(state, mesh, rules))
    params[name] = jax.device_put(nnx.to_pure_dict(state), shardings)
  return params, make_targets_fn(cfg, graphdefs['teacher'], graphdefs['student'])


def make_targets_fn(cfg, teacher_graphdef, student_graphdef):
  """fn(frozen {'teacher', 'student'} params, batch, key) -> the head's training batch:
  features [L, B, N, dim], target [B, N] (or [L, B, N] per layer), received [B, N] (the
  attention each token gets under block-causal attention: h2o's order), frame [N], valid [B]."""
  sc, f = cfg.salience, cfg.chunk_frames

  def fn(frozen, batch, key):
    teacher = nnx.merge(teacher_graphdef, frozen['teacher'])
    student = nnx.merge(student_graphdef, frozen['student'])
    video, label = batch['video'], batch['label'].astype(jnp.int32)
    cond = batch.get('frame_cond') if student.cfg.frame_cond_dim else None
    b, t = video.shape[:2]
    s = student.cfg.tokens_per_frame
    _, (q, k), hidden = student(video, jnp.zeros((b, t)), jnp.arange(t), label, cond,
                                mode='block_causal', chunk_frames=f, return_qk=True,
                                return_hidden=True)
    received = jax.vmap(lambda q, k: salience_targets.attention_received(q, k, f * s))(q, k)
    if sc.get('source', 'teacher') == 'student':
      target = salience_targets.student_targets(received, f * s, sc.normalize, cfg.head.per_layer)
    else:
      regions = salience_targets.teacher_regions(
          teacher, video, label, cond, block_tokens=f * s, noise_level=sc.noise_level, key=key)
      target = salience_targets.sse_targets(regions, tuple(sc.weights), sc.normalize,
                                            cfg.head.per_layer)
    valid = batch.get('valid', jnp.ones((b,), bool))
    return dict(features=jax.lax.stop_gradient(hidden), target=jax.lax.stop_gradient(target),
                received=received.mean(axis=0), frame=jnp.repeat(jnp.arange(t), s), valid=valid)

  return fn


# -- losses: pred and target [..., N], one row per clip (and layer); each returns [...] ----------

def _mse_log(pred, target, key, sc, grid):
  return jnp.mean(jnp.square(pred - jnp.log(target + sc.log_eps)), axis=-1)


def _smooth_l1(pred, target, key, sc, grid):
  """SmoothL1 (Huber) on the scores, plus the squared difference of neighbouring tokens'
  predictions (along t, h and w of the token grid): salience is spatially coherent."""
  fit = jnp.mean(optax.huber_loss(pred, target, delta=sc.huber_delta), axis=-1)
  g = pred.reshape(*pred.shape[:-1], *grid)
  smooth = sum(jnp.mean(jnp.square(jnp.diff(g, axis=a)), axis=(-3, -2, -1))
               for a in (-3, -2, -1) if g.shape[a] > 1)
  return fit + sc.smoothness * smooth


def _listwise(pred, target, key, sc, grid):
  """KL(softmax(target / temperature) || softmax(pred)) over the tokens of a clip."""
  p = jax.nn.softmax(target / sc.temperature, axis=-1)
  return jnp.sum(p * (jnp.log(p + 1e-12) - jax.nn.log_softmax(pred, axis=-1)), axis=-1)


def _pairwise(pred, target, key, sc, grid):
  """RankNet: logistic loss on random token pairs ordered by the target (ties skipped)."""
  n = pred.shape[-1]
  i, j = jax.random.randint(key, (2, sc.pairs), 0, n)
  sign = jnp.sign(target[..., i] - target[..., j])
  loss = jax.nn.softplus(-sign * (pred[..., i] - pred[..., j])) * jnp.abs(sign)
  return jnp.sum(loss, axis=-1) / jnp.maximum(jnp.sum(jnp.abs(sign), axis=-1), 1.0)


_LOSS_FNS = dict(zip(LOSSES, (_mse_log, _smooth_l1, _listwise, _pairwise)))


def token_grid(cfg):
  """(frames, tokens per frame height, width) of a training clip."""
  h, w = (size // cfg.model.patch_size for size in cfg.model.image_size)
  return cfg.data.num_frames, h, w


def distill_loss(head, batch, key, cfg):
  """The stage's loss (training/steps.py): the configured loss, averaged over valid clips."""
  name = cfg.salience.loss
  if name not in _LOSS_FNS:
    raise ValueError(f'Unknown salience.loss {name!r}; choose one of {LOSSES}.')
  pred = head(batch['features'])
  rows = _LOSS_FNS[name](pred, batch['target'], key, cfg.salience, token_grid(cfg))  # [(L,) B]
  valid = batch['valid'].astype(jnp.float32)
  return jnp.sum(rows * valid) / jnp.maximum(jnp.sum(valid) * (rows.size // valid.size), 1.0)


# -- held-out metrics ---------------------------------------------------------------------------

def baseline_scores(batch, key):
  """The order each heuristic policy keeps tokens in, per clip [B, N]."""
  received = batch['received']
  window = jnp.broadcast_to(batch['frame'].astype(jnp.float32), received.shape)
  return dict(h2o=received, window=window,
              random=jax.random.uniform(key, received.shape))


def ranking_metrics(pred, batch, key, budgets):
  """Per clip [B]: recall@k of the head and of each baseline for k = budget fraction x N tokens,
  and their Spearman correlation with the target. Per-layer targets average over layers."""
  target = batch['target']
  n = target.shape[-1]
  scores = dict(head=pred, **baseline_scores(batch, key))
  out = {}
  for name, score in scores.items():
    score = jnp.broadcast_to(score, target.shape)  # per layer: every layer gets the same order
    lead = tuple(range(target.ndim - 2))  # the layer axis, if any
    for frac in budgets:
      r = ranking.recall_at_budget(score, target, max(1, round(frac * n)))
      out[f'recall@{frac:g}/{name}'] = r.mean(axis=lead)
    out[f'spearman/{name}'] = ranking.spearman(score, target).mean(axis=lead)
  return out


def evaluate(cfg, head_graphdef, head_params, frozen, targets_fn, mesh) -> dict:
  """Mean ranking metrics over the first `eval_examples` clips of the test split."""
  eval_data = cfg.data.copy_and_resolve_references()
  eval_data.batch_size = cfg.batch_size
  pipe = data.make_pipeline(eval_data, 'test', mesh=mesh, data_axes=parallel.BATCH_AXES,
                            num_epochs=1, shuffle=False)
  num_batches = min(pipe.num_steps, math.ceil(cfg.eval_examples / cfg.batch_size))
  metrics_fn = _metrics_fn(head_graphdef, targets_fn, tuple(cfg.eval_budgets))
  key = jax.random.key(cfg.seed + 1)
  sums, count = {}, 0.0
  for i, batch in zip(range(num_batches), pipe.iterate(0)):
    metrics, valid = jax.device_get(metrics_fn(head_params, frozen, batch, jax.random.fold_in(key, i)))
    valid = np.asarray(valid, np.float32)
    for name, value in metrics.items():
      sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(value) * valid))
    count += float(valid.sum())
  return {f'eval/{k}': v / max(count, 1.0) for k, v in sums.items()}


def _metrics_fn(head_graphdef, targets_fn, budgets):
  @jax.jit
  def fn(head_params, frozen, batch, key):
    k_target, k_rank = jax.random.split(key)
    b = targets_fn(frozen, batch, k_target)
    pred = nnx.merge(head_graphdef, head_params)(b['features'])
    return ranking_metrics(pred, b, k_rank, budgets), b['valid']
  return fn
