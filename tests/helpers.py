"""Tiny models and configs shared by the tests."""

import ml_collections

from configs import common
from pafukv_jax.models.dit import DiTConfig, init_model


def tiny_model_config(**overrides) -> DiTConfig:
  cfg = dict(common.model_config('tiny'))
  cfg.update(overrides)
  return DiTConfig.from_config(ml_collections.ConfigDict(cfg))


def tiny_model(seed=0, **overrides):
  return init_model(tiny_model_config(**overrides), seed)


def cache_config(budget_frames=3, sink_frames=1, recent_frames=0):
  return ml_collections.ConfigDict(dict(
      budget_frames=budget_frames, sink_frames=sink_frames, recent_frames=recent_frames))


def override(cfg, **dotted):
  """Sets fields by dotted name: override(cfg, **{'cache.sink_frames': 1})."""
  for key, value in dotted.items():
    node = cfg
    *path, last = key.split('.')
    for part in path:
      node = node[part]
    node[last] = value
  return cfg


def make_rollout(model, rc, policy, cache=None, head=None):
  """A Rollout of `policy` ('recompute' too) with the cache fields `cache` (helpers.cache_config)."""
  from pafukv_jax import rollout
  from pafukv_jax.cache import policies
  spec = policies.cache_spec(policy, cache, num_frames=rc.num_frames, chunk_frames=rc.chunk_frames,
                             tokens_per_frame=model.cfg.tokens_per_frame)
  return rollout.Rollout(model, rc, spec, head)


def caches_per_chunk(runner, inputs):
  """Drives a cached rollout without context through its public chunk_step: the cache after
  every chunk (copied: the next step donates it)."""
  import jax
  import jax.numpy as jnp
  from pafukv_jax import rollout
  state = runner.init_state(inputs.cond.shape[0])
  inputs = runner.encode(inputs)
  caches = []
  for _ in range(runner.rc.num_chunks):
    state, _ = rollout.chunk_step_jit(runner.static, runner.params, state, inputs)
    caches.append(jax.tree.map(jnp.copy, state.cache))
  return caches
