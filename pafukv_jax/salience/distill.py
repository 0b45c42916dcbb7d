"""Stage 3: distilling the teacher's salience into the Salience Estimation Head: the data side.

The teacher and the student are frozen; only the head trains. For every clip,
  target   = the teacher's SSE (targets.py): how much each token is attended by queries of
             earlier, the same and later chunks, the future included (salience.source =
             'student', an ablation: the attention the student's own later queries pay it);
  features = the student's per-token block outputs from the clean block-causal pass, which is
             what the cached rollout's write pass computes (exactly so while nothing is evicted);
and the head learns to rank the tokens as the target does (losses.py).

`make_targets_fn` turns a data batch into (features, target) on the mesh; `evaluate` scores the
head and the heuristic policies' orders (ranking.py) against the target on held-out clips.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pafukv_jax import checkpoints, conditioning, data, parallel
from pafukv_jax.models.dit import DiTConfig, init_model
from pafukv_jax.salience import ranking, targets
from pafukv_jax.salience.losses import DistillConfig


def check_config(cfg) -> DistillConfig:
  """Checks a salience-stage config before any work; returns its DistillConfig."""
  for field in ('teacher', 'student'):
    if not cfg[field]:
      raise ValueError(f'The salience stage needs --config.{field}=DIR: the trained {field} '
                       '(a training workdir or a params directory).')
    if not os.path.isdir(cfg[field]):
      raise FileNotFoundError(f'config.{field}={cfg[field]} does not exist: give the {field}\'s '
                              'training workdir or params directory.')
    checkpoints.check_stage(cfg[field], field, field)
  num_layers = cfg.model.num_layers
  if not -num_layers <= cfg.head.feature_layer < num_layers:
    raise ValueError(f'head.feature_layer={cfg.head.feature_layer} is not a layer of the '
                     f'{num_layers}-layer model.')
  if not all(0 < b <= 1 for b in cfg.eval_budgets):
    raise ValueError(f'eval_budgets are fractions of a clip\'s tokens in (0, 1], got '
                     f'{tuple(cfg.eval_budgets)}.')
  return DistillConfig.from_config(cfg)


def load_frozen(cfg, model_cfg: DiTConfig, dc: DistillConfig, mesh):
  """The frozen teacher and student: (params {'teacher', 'student'} on the mesh, targets_fn)."""
  rules = tuple(tuple(r) for r in cfg.mesh.rules)
  graphdefs, params = {}, {}
  for name in ('teacher', 'student'):
    model = checkpoints.load_params(cfg[name], init_model(model_cfg))
    graphdefs[name], state = nnx.split(model)
    shardings = nnx.to_pure_dict(parallel.param_shardings(state, mesh, rules))
    params[name] = jax.device_put(nnx.to_pure_dict(state), shardings)
  return params, make_targets_fn(dc, graphdefs['teacher'], graphdefs['student'])


def make_targets_fn(dc: DistillConfig, teacher_graphdef, student_graphdef):
  """fn(frozen {'teacher', 'student'} params, batch, key) -> the head's training batch:
  features [L, B, N, dim], target [B, N] (or [L, B, N] per layer), received [B, N] (the
  attention each token gets under block-causal attention: h2o's order), frame [N], valid [B]."""
  f = dc.chunk_frames

  def fn(frozen, batch, key):
    teacher = nnx.merge(teacher_graphdef, frozen['teacher'])
    student = nnx.merge(student_graphdef, frozen['student'])
    video, label = batch['video'], conditioning.from_batch(batch, student.cfg)
    cond = batch.get('frame_cond')
    b, t = video.shape[:2]
    s = student.cfg.tokens_per_frame
    # inside the layer loop, so that no layer's q and k outlive it
    per_layer = lambda i: dict(hidden=i['hidden'], received=targets.attention_received(
        i['q'], i['k'], f * s, student.cfg.attention_query_chunk))
    _, aux = student(video, jnp.zeros((b, t)), jnp.arange(t), label, cond, mode='block_causal',
                     chunk_frames=f, collect=('q', 'k', 'hidden'), reduce=per_layer)
    received = aux['received']
    if dc.source == 'student':
      target = targets.student_targets(received, f * s, dc.normalize, dc.per_layer)
    else:
      regions = targets.teacher_regions(teacher, video, label, cond, block_tokens=f * s,
                                        noise_level=dc.noise_level, key=key)
      target = targets.sse_targets(regions, dc.weights, dc.normalize, dc.per_layer)
    valid = batch.get('valid', jnp.ones((b,), bool))
    return dict(features=jax.lax.stop_gradient(aux['hidden']), target=jax.lax.stop_gradient(target),
                received=received.mean(axis=0), frame=jnp.repeat(jnp.arange(t), s), valid=valid)

  return fn


# -- held-out metrics ---------------------------------------------------------------------------

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
    return ranking.ranking_metrics(pred, b, k_rank, budgets), b['valid']
  return fn
