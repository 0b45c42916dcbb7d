"""The salience stage's losses and its typed config.

Each loss maps pred and target [..., N] (one row per clip, and per layer for a per-layer head)
to [...]; `distill_loss` averages it over the valid clips. `DistillConfig` holds everything the
stage's targets and loss read, parsed once from config.salience (and config.head, .data, .model).
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

LOSSES = ('mse_log', 'smooth_l1', 'listwise', 'pairwise')
SOURCES = ('teacher', 'student')  # whose attention the targets come from


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """The salience stage's targets and loss (configs/salience.py's `salience` explains each)."""
  source: str = 'teacher'
  weights: tuple = (1.0, 0.5, 1.0)
  normalize: str = 'max'
  noise_level: float = 0.0
  loss: str = 'listwise'
  temperature: float = 0.1
  pairs: int = 1024
  huber_delta: float = 0.1
  smoothness: float = 0.1
  log_eps: float = 1e-3
  per_layer: bool = False         # head.per_layer: targets per layer
  chunk_frames: int = 1           # the student's chunks (block-causal attention, SSE regions)
  grid: tuple = (1, 1, 1)         # (frames, tokens per frame high, wide) of a training clip

  @classmethod
  def from_config(cls, cfg) -> 'DistillConfig':
    """From a salience-stage config; names the field that is wrong."""
    sc = cfg.salience
    h, w = (size // cfg.model.patch_size for size in cfg.model.image_size)
    dc = cls(source=sc.get('source', 'teacher'), weights=tuple(sc.weights), normalize=sc.normalize,
             noise_level=float(sc.noise_level), loss=sc.loss, temperature=float(sc.temperature),
             pairs=int(sc.pairs), huber_delta=float(sc.huber_delta),
             smoothness=float(sc.smoothness), log_eps=float(sc.log_eps),
             per_layer=bool(cfg.head.per_layer), chunk_frames=int(cfg.chunk_frames),
             grid=(int(cfg.data.num_frames), h, w))
    if dc.source not in SOURCES:
      raise ValueError(f'Unknown salience.source {dc.source!r}; choose one of {SOURCES}.')
    if dc.loss not in LOSSES:
      raise ValueError(f'Unknown salience.loss {dc.loss!r}; choose one of {LOSSES}.')
    if not 0 <= dc.noise_level < 1:
      raise ValueError(f'salience.noise_level must be in [0, 1), got {dc.noise_level}.')
    if len(dc.weights) != 3:
      raise ValueError(f'salience.weights must give (earlier, same, later), got {dc.weights!r}.')
    return dc


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


def distill_loss(head, batch, key, cfg: DistillConfig):
  """The stage's loss: the configured loss, averaged over valid clips."""
  pred = head(batch['features'])
  rows = _LOSS_FNS[cfg.loss](pred, batch['target'], key, cfg, cfg.grid)  # [(L,) B]
  valid = batch['valid'].astype(jnp.float32)
  return jnp.sum(rows * valid) / jnp.maximum(jnp.sum(valid) * (rows.size // valid.size), 1.0)
