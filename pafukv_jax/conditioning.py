"""What a model is conditioned on: class labels or prompt embeddings, from a batch or a file.

A model with num_classes > 0 takes integer labels [B] (num_classes is the null label); one with
num_classes = 0 takes prompt embeddings [B, L, cond_dim] (umT5's for Wan2.1, zero-padded to
L = num_cond_tokens; all zeros is the unconditional prompt). Datasets give embeddings as the
feature PROMPT_KEY, `generate.py` reads them from an .npz (`load_prompts`).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

PROMPT_KEY = 'prompt_embedding'


def from_batch(batch, model_cfg):
  """The conditioning of a batch for a model of `model_cfg`: labels [B] int32, or prompt
  embeddings [B, num_cond_tokens, cond_dim]."""
  if model_cfg.num_classes:
    if 'label' not in batch:
      raise ValueError(f'This model is class-conditional (num_classes={model_cfg.num_classes}) '
                       'but the batch has no `label`: use a dataset with labels, or a model '
                       'with model.num_classes=0 and prompt embeddings.')
    return jnp.asarray(batch['label']).astype(jnp.int32)
  if PROMPT_KEY not in batch:
    raise ValueError(
        f'This model is conditioned on prompt embeddings (model.num_classes=0) but the batch has '
        f'no `{PROMPT_KEY}`: give every clip one (dataset=latents: a `{PROMPT_KEY}` array in '
        'each .npz; dataset=folder: NAME.npz beside NAME.mp4), or train a class-conditional '
        'model (model.num_classes > 0).')
  cond = batch[PROMPT_KEY]
  want = (model_cfg.num_cond_tokens, model_cfg.cond_dim)
  if tuple(cond.shape[1:]) != want:
    raise ValueError(f'The batch\'s {PROMPT_KEY} are {tuple(cond.shape[1:])} per clip; the '
                     f'model takes {want} (model.num_cond_tokens, model.cond_dim): set '
                     'data.prompt_tokens to num_cond_tokens, or check the embeddings\' width.')
  return cond


def drop(cond, key, rate: float, num_classes: int):
  """For classifier-free guidance: each row's conditioning dropped with probability `rate`, to
  the null label (labels) or to the all-zero prompt (embeddings)."""
  dropped = jax.random.bernoulli(key, rate, cond.shape[:1])
  if jnp.issubdtype(cond.dtype, jnp.integer):
    return jnp.where(dropped, num_classes, cond)
  return jnp.where(dropped[:, None, None], jnp.zeros_like(cond), cond)


def pad_prompt(embedding, tokens: int, what: str) -> np.ndarray:
  """One prompt's embedding [L, D] zero-padded to [tokens, D] float32 (Wan pads umT5's output
  to 512 tokens); `what` names where it came from in the error."""
  embedding = np.asarray(embedding, np.float32)
  if embedding.ndim != 2:
    raise ValueError(f'{what}: a prompt embedding is [tokens, dim], got shape {embedding.shape}.')
  if embedding.shape[0] > tokens:
    raise ValueError(f'{what}: {embedding.shape[0]} prompt tokens, more than the {tokens} the '
                     'model takes (model.num_cond_tokens / data.prompt_tokens).')
  return np.pad(embedding, ((0, tokens - embedding.shape[0]), (0, 0)))


def load_prompts(path: str, tokens: int, dim: int) -> np.ndarray:
  """Prompt embeddings [N, tokens, dim] from an .npz holding PROMPT_KEY as [N, L, dim] (one per
  sample; sample i takes row i mod N) or [L, dim] (one for all)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config.prompts={path} does not exist: give an .npz with '
                            f'`{PROMPT_KEY}` [N, L, {dim}].')
  with np.load(path) as f:
    if PROMPT_KEY not in f:
      raise ValueError(f'{path} holds {sorted(f)}, not `{PROMPT_KEY}` [N, L, {dim}].')
    rows = f[PROMPT_KEY]
  rows = rows[None] if rows.ndim == 2 else rows
  if rows.ndim != 3 or rows.shape[-1] != dim:
    raise ValueError(f'{path}: `{PROMPT_KEY}` must be [N, L, {dim}] (model.cond_dim {dim}), got '
                     f'{rows.shape}.')
  return np.stack([pad_prompt(r, tokens, f'{path} row {i}') for i, r in enumerate(rows)])
