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
