"""How well a predicted token salience serves a top-k cache: recall@budget and Spearman.

Both take scores [..., N] (one row per clip, N tokens) and are jit-able; the cache keeps the top
`budget` tokens, so recall@budget (the share of the target's top-k that the prediction also keeps)
is the number that matters, and Spearman tells how well the whole order is learnt.
"""

import jax
import jax.numpy as jnp


def recall_at_budget(pred, target, budget: int):
  """|top_k(pred) & top_k(target)| / k per row, k = budget."""
  if not 0 < budget <= pred.shape[-1]:
    raise ValueError(f'budget must be in [1, {pred.shape[-1]}] tokens, got {budget}.')
  _, pred_top = jax.lax.top_k(pred, budget)
  _, target_top = jax.lax.top_k(target, budget)
  hits = jnp.any(pred_top[..., :, None] == target_top[..., None, :], axis=-1)
  return jnp.mean(hits.astype(jnp.float32), axis=-1)


def _ranks(x):
  return jnp.argsort(jnp.argsort(x, axis=-1), axis=-1).astype(jnp.float32)


def spearman(pred, target):
  """Spearman rank correlation per row (ties ranked by position, not averaged)."""
  a, b = _ranks(pred), _ranks(target)
  a = a - a.mean(-1, keepdims=True)
  b = b - b.mean(-1, keepdims=True)
  return jnp.sum(a * b, -1) / jnp.sqrt(jnp.sum(a * a, -1) * jnp.sum(b * b, -1))


# -- the held-out comparison of the salience stage -------------------------------------------

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
      r = recall_at_budget(score, target, max(1, round(frac * n)))
      out[f'recall@{frac:g}/{name}'] = r.mean(axis=lead)
    out[f'spearman/{name}'] = spearman(score, target).mean(axis=lead)
  return out
