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
