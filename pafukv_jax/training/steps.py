"""Losses of the training stages, the optimizer, and the jitted train step.

teacher: the bidirectional model, one noise level per clip, flow matching on whole clips.
student: block-causal attention by chunk of F frames; every chunk draws its own noise level and is
         clean (t = 0) with probability `clean_context_prob`, as the cached rollout's context is,
         so a parallel forward sees what generation sees. Clean chunks carry no loss.
salience: the Salience Estimation Head on (student features, teacher SSE) batches
         (salience/distill.py, salience/losses.py); teacher and student are frozen.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pafukv_jax import conditioning, diffusion
from pafukv_jax.salience import losses

STAGES = ('teacher', 'student', 'salience')


def make_optimizer(cfg) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, gradients clipped by global norm."""
  o = cfg.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.learning_rate, max(1, o.warmup_steps), max(o.warmup_steps + 1, cfg.total_steps),
      end_value=o.learning_rate * o.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(o.grad_clip),
                     optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))


def _inputs(batch, key, model_cfg, label_dropout):
  """Clean video, conditioning (labels or prompt embeddings, some dropped for guidance),
  frame_cond, row weights."""
  x0 = batch['video']
  cond = conditioning.drop(conditioning.from_batch(batch, model_cfg), key, label_dropout,
                           model_cfg.num_classes)
  valid = batch.get('valid', jnp.ones(x0.shape[:1], bool)).astype(jnp.float32)
  return x0, cond, batch.get('frame_cond'), valid


@dataclasses.dataclass(frozen=True)
class FlowLossConfig:
  """What the teacher's and the student's losses read, parsed once from a training config."""
  label_dropout: float = 0.1       # conditioning dropped to the null label / zero prompt (guidance)
  train_shift: float = 3.0         # shift of the training noise levels
  chunk_frames: int = 1            # student: frames per block-causal chunk
  clean_context_prob: float = 0.5  # student: probability that a context chunk is clean

  @classmethod
  def from_config(cls, cfg) -> 'FlowLossConfig':
    return cls(float(cfg.label_dropout), float(cfg.train_shift), int(cfg.chunk_frames),
               float(cfg.clean_context_prob))


def teacher_loss(model, batch, key, cfg: FlowLossConfig):
  k_cond, k_t, k_noise = jax.random.split(key, 3)
  x0, cond, frame_cond, valid = _inputs(batch, k_cond, model.cfg, cfg.label_dropout)
  b, t = x0.shape[:2]
  level = diffusion.sample_train_time(k_t, (b, 1), cfg.train_shift) * jnp.ones((b, t))
  noise = jax.random.normal(k_noise, x0.shape)
  v, _ = model(diffusion.add_noise(x0, noise, level), level, jnp.arange(t), cond, frame_cond,
               mode='bidirectional')
  return diffusion.flow_matching_loss(v, x0, noise, valid[:, None] * jnp.ones((b, t)))


def student_loss(model, batch, key, cfg: FlowLossConfig):
  k_cond, k_t, k_clean, k_noise = jax.random.split(key, 4)
  x0, cond, frame_cond, valid = _inputs(batch, k_cond, model.cfg, cfg.label_dropout)
  b, t = x0.shape[:2]
  f = cfg.chunk_frames
  chunk_level = diffusion.sample_train_time(k_t, (b, t // f), cfg.train_shift)
  clean = jax.random.bernoulli(k_clean, cfg.clean_context_prob, (b, t // f))
  clean = clean.at[:, -1].set(False)  # the last chunk is never context: something to learn
  level = jnp.repeat(jnp.where(clean, 0.0, chunk_level), f, axis=1)
  noise = jax.random.normal(k_noise, x0.shape)
  v, _ = model(diffusion.add_noise(x0, noise, level), level, jnp.arange(t), cond, frame_cond,
               mode='block_causal', chunk_frames=f)
  weights = (level > 0).astype(jnp.float32) * valid[:, None]
  return diffusion.flow_matching_loss(v, x0, noise, weights)


def stage_loss(cfg):
  """loss(module, batch, key) of cfg.stage, with its typed config bound."""
  if cfg.stage == 'salience':
    return functools.partial(losses.distill_loss, cfg=losses.DistillConfig.from_config(cfg))
  loss = dict(teacher=teacher_loss, student=student_loss)[cfg.stage]
  return functools.partial(loss, cfg=FlowLossConfig.from_config(cfg))


def init_state(params, tx, ema_decay):
  return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
              ema=params if ema_decay else None)


def make_train_step(graphdef, loss_fn, tx, ema_decay: float, prepare=None):
  """step(state, batch, key, frozen=None) -> (state, metrics); state = dict(step, params,
  opt_state, ema). loss_fn(module, batch, key): e.g. `stage_loss(cfg)`. prepare(frozen, batch,
  key) -> batch, if given, turns the data batch into the loss's inputs with frozen models inside
  the same program (the salience stage's targets)."""

  def step(state, batch, key, frozen=None):
    key = jax.random.fold_in(key, state['step'])
    if prepare is not None:
      key, prepare_key = jax.random.split(key)
      batch = prepare(frozen, batch, prepare_key)

    def loss_of(params):
      # with model.dtype='bfloat16' layers compute in bf16; these master weights stay float32
      model = nnx.merge(graphdef, params)
      return loss_fn(model, batch, key)

    loss, grads = jax.value_and_grad(loss_of)(state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    ema = state['ema']
    if ema is not None:
      # warm-up: early on, a 0.999 average would still be mostly the random initialisation
      t = state['step'].astype(jnp.float32)
      d = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
      ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)
    metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(params))
    return dict(step=state['step'] + 1, params=params, opt_state=opt_state, ema=ema), metrics

  return step
