"""Weights and training state on disk (Orbax).

* `save_params` / `load_params`: a model's parameters alone, restored with a shape check.
* `TrainCheckpoints`: a training workdir's `checkpoints/` (CheckpointManager, async, max_to_keep):
  the whole train state and the data position per step, restored onto any mesh.
`load_params` reads either a params directory or a training workdir (its latest step; the EMA
weights when the run kept them), so generation and later stages take either.
"""

import dataclasses
import json
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from pafukv_jax.models.dit import DiTConfig


def save_params(path: str, model) -> None:
  """Writes a model's parameters (an nnx.Module, or its pure dict of arrays) to a new directory
  `path` (refuses to replace one)."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f'{path} exists; choose a new checkpoint directory.')
  if isinstance(model, nnx.Module):
    model = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, model)
  checkpointer.wait_until_finished()


def flat_paths(tree):
  """{'a/b/0/mu/...': leaf}: the same path for dicts, lists, tuples and named tuples, so a
  checkpoint's metadata tree and a live pytree compare."""
  return {jax.tree_util.keystr(k, simple=True, separator='/'): v
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def check_shapes(saved_tree, expected_tree, what: str, fields: str = 'model.*') -> None:
  """Raises a ValueError naming every array whose shape differs or that is missing on a side;
  `fields`: the config fields that set these shapes, named in the message."""
  saved, expected = flat_paths(saved_tree), flat_paths(expected_tree)
  problems = [f'{k}: missing in checkpoint' for k in expected if k not in saved]
  problems += [f'{k}: not in the model' for k in saved if k not in expected]
  problems += [f'{k}: checkpoint {tuple(saved[k].shape)} vs config {tuple(v.shape)}'
               for k, v in expected.items() if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
  if problems:
    shown = '\n  '.join(problems[:12]) + ('\n  ...' if len(problems) > 12 else '')
    raise ValueError(f'{what} does not match the model config ({len(problems)} problems); '
                     f'check the {fields} fields:\n  {shown}')


# DiTConfig fields that change what the weights compute without changing their shapes (or that
# the shape check alone would report less clearly); attention_impl, dtype, scan_layers,
# cache_block_size and attention_query_chunk are how to run the model and may differ from the
# run that trained it.
MODEL_FIELDS = ('image_size', 'channels', 'patch_size', 'dim', 'ffn_dim', 'num_heads',
                'num_layers', 'freq_dim', 'cond_dim', 'num_cond_tokens', 'num_classes',
                'frame_cond_dim', 'frame_cond_scale', 'eps', 'rope_theta', 'rope_positions')


def _plain(value):
  return tuple(value) if isinstance(value, list) else value  # JSON gives lists for tuples


def saved_model_fields(path: str) -> dict | None:
  """The MODEL_FIELDS the run at `path` trained with, from its config.json (a field it lacks
  had DiTConfig's default when it trained), or None where there is no config.json with a model."""
  saved = (saved_config(path) or {}).get('model') if path else None
  if not saved:
    return None
  defaults = {f.name: f.default for f in dataclasses.fields(DiTConfig)}
  return {k: _plain(saved.get(k, defaults[k])) for k in MODEL_FIELDS}


def check_model_config(path: str, model_cfg) -> None:
  """Raises a ValueError if `path/config.json` (written by the training run, kept by export.py)
  trained a model whose MODEL_FIELDS differ from `model_cfg` (a DiTConfig)."""
  saved = saved_model_fields(path)
  if not saved:
    return
  diffs = [f'model.{k}: checkpoint {v!r} vs config {getattr(model_cfg, k)!r}'
           for k, v in saved.items() if v != getattr(model_cfg, k)]
  if diffs:
    dataset = saved_config(path).get('data', {}).get('dataset')
    hint = (f'\nIt was trained on data.dataset={dataset!r}: a config arg naming that dataset '
            f'(e.g. --config=configs/generate.py:small,{dataset}) sets the fields of its demo '
            'model.' if dataset else '')
    raise ValueError(f'checkpoint {path} was trained with another model config; set these '
                     'fields as it had them:\n  ' + '\n  '.join(diffs) + hint)


def adopt_model_fields(cfg, path: str, explicit=()) -> list[str]:
  """Sets cfg.model's MODEL_FIELDS to those `path/config.json` trained with, except the fields
  named in `explicit` (dotted names the user set, e.g. 'model.dim': a set field that differs is
  left for `check_model_config` to refuse). Returns 'field=value' for every field it changed.
  A checkpoint without config.json changes nothing: its shapes are checked when it is loaded."""
  saved = saved_model_fields(path) or {}
  changed = {k: v for k, v in saved.items()
             if f'model.{k}' not in explicit and _plain(cfg.model.get(k)) != v}
  with cfg.unlocked():
    cfg.model.update(changed)
  return [f'{k}={v!r}' for k, v in changed.items()]


def saved_config(path: str) -> dict | None:
  """The config.json a training run wrote beside its checkpoints (export.py copies it), or None."""
  saved_path = os.path.join(path, 'config.json')
  if not os.path.isfile(saved_path):
    return None
  with open(saved_path) as f:
    return json.load(f)


STAGE_HINTS = dict(teacher='the bidirectional teacher (train.py --config=configs/teacher.py)',
                   student='the causal student (train.py --config=configs/student.py)',
                   salience='a salience head (train.py --config=configs/salience.py)')


def check_stage(path: str, stage: str, field: str) -> None:
  """Refuses a checkpoint whose config.json says it is another stage's (a teacher given as the
  student, ...); a params directory without config.json is taken as given."""
  saved = saved_config(path) or {}
  if saved.get('stage', stage) != stage:
    raise ValueError(f'{field}={path} holds {STAGE_HINTS.get(saved["stage"], saved["stage"])} '
                     f'(its config.json says stage {saved["stage"]!r}); {field} must be '
                     f'{STAGE_HINTS[stage]}.')


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(
      a, 'sharding', None)), tree)


def load_params(path: str, model: nnx.Module) -> nnx.Module:
  """Restores parameters into `model` (in place) from a `save_params` directory or a training
  workdir, after checking every shape; returns the model."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'checkpoint {path} does not exist (set --config.checkpoint to a '
                            'directory written by save_params or a training workdir, or leave '
                            'it empty for random weights).')
  is_dit = isinstance(getattr(model, 'cfg', None), DiTConfig)
  fields = 'model.*' if is_dit else 'head.* (hidden_dim, per_layer; the head must be for this model)'
  if is_dit:
    check_model_config(path, model.cfg)
  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  if os.path.isdir(os.path.join(path, TrainCheckpoints.SUBDIR)):
    params = TrainCheckpoints(path).restore_params(pure, fields)
  else:
    checkpointer = ocp.StandardCheckpointer()
    check_shapes(checkpointer.metadata(path).item_metadata.tree, pure, f'checkpoint {path}', fields)
    params = checkpointer.restore(path, _abstract(pure))
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model


def _unreadable_json(step_dir) -> list[str]:
  """The metadata files of a step that do not parse as JSON (orbax's are JSON)."""
  bad = []
  for folder, _, files in os.walk(step_dir):
    for name in files:
      if name in ('metadata', '_METADATA', '_CHECKPOINT_METADATA', '_sharding'):
        path = os.path.join(folder, name)
        try:
          with open(path) as f:
            json.load(f)
        except (ValueError, OSError):
          bad.append(path)
  return sorted(bad)


def _broken_message(directory, broken) -> str:
  """'step N: Error: first line', with the file the error names where it names one."""
  lines = []
  for step, e in broken:
    while e.__cause__ is not None:  # orbax wraps tensorstore's error, which names the file
      e = e.__cause__
    text = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    where = os.path.join(directory, str(step))
    if isinstance(e, json.JSONDecodeError):  # the error names no file: find the JSON that fails
      where = ', '.join(_unreadable_json(where)) or where
    lines.append(f'  step {step} ({where}): {type(e).__name__}: {text[:300]}')
  return f'Checkpoints of {directory} that do not restore:\n' + '\n'.join(lines)


class TrainCheckpoints:
  """The checkpoints of one training workdir: `state` (a pytree) and `meta` (JSON) per step."""
  SUBDIR = 'checkpoints'

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), self.SUBDIR)
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=False),
        item_handlers=dict(state=ocp.StandardCheckpointHandler(),
                           meta=ocp.JsonCheckpointHandler()))

  @classmethod
  def exist_in(cls, workdir: str) -> bool:
    """Whether `workdir` holds a saved step (cheap: no manager is built)."""
    directory = os.path.join(workdir, cls.SUBDIR)
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))

  def _saved_tree(self, step):
    return self.manager.item_metadata(step)['state'].tree

  def latest_step(self):
    return self.manager.latest_step() if os.path.isdir(self.directory) else None

  def save(self, step: int, state, meta: dict) -> None:
    os.makedirs(self.directory, exist_ok=True)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def _newest_that_restores(self, check, load):
    """(step, load(step, tree), broken) for the newest step that restores, where tree is the
    step's saved metadata tree and broken lists (step, error) of the newer ones that did not (an
    unreadable tree, a failed load); step None if none did. check(step, tree) raises on a
    config mismatch, which is not a broken checkpoint and stops the search."""
    broken = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        tree = self._saved_tree(step)
      except Exception as e:  # pylint: disable=broad-except  (orbax / tensorstore raise anything)
        broken.append((step, e))
        continue
      check(step, tree)
      try:
        return step, load(step, tree), broken
      except Exception as e:  # pylint: disable=broad-except
        broken.append((step, e))
    return None, None, broken

  def restore_newest_good(self, abstract_state):
    """(state, meta) of the newest step that restores. A step that does not (a truncated array
    file, an emptied metadata file) is named, moved to WORKDIR/broken_checkpoints/ and the next
    older one tried; a shape mismatch is the config's fault and raised at once. With no step
    left, a ValueError says how to start afresh."""
    step, out, broken = self._newest_that_restores(
        lambda step, tree: check_shapes(tree, abstract_state,
                                        f'checkpoint {self.directory} step {step}'),
        lambda step, _: self._restore_step(abstract_state, step))
    if step is None:
      raise ValueError(_broken_message(self.directory, broken) + '\nNo step restores. To start '
                       f'afresh, move them aside: mv {self.directory} {self.directory}.broken')
    if broken:
      message = _broken_message(self.directory, broken)  # before they move: it names files
      self._set_aside([b for b, _ in broken])
      logging.warning('%s', message + f'\nResumed from step {step} instead; the broken steps '
                      f'are in {self._aside_dir()}.')
    return out

  def _aside_dir(self):
    return os.path.join(os.path.dirname(self.directory), 'broken_checkpoints')

  def _set_aside(self, steps):
    os.makedirs(self._aside_dir(), exist_ok=True)
    for step in steps:
      os.replace(os.path.join(self.directory, str(step)),
                 os.path.join(self._aside_dir(), f'{step}.{int(time.time())}'))
    self.manager.reload()

  def restore(self, abstract_state, step=None):
    """(state, meta) of `step` (default latest), laid out as abstract_state's shardings say."""
    step = self.latest_step() if step is None else step
    check_shapes(self._saved_tree(step), abstract_state,
                 f'checkpoint {self.directory} step {step}')
    return self._restore_step(abstract_state, step)

  def _restore_step(self, abstract_state, step):
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out['state'], out['meta']

  def restore_params(self, params_like, fields: str = 'model.*'):
    """Model parameters of the newest step that restores (EMA if kept), shaped like
    `params_like`; a broken newer step is named (and left where it is: this only reads)."""
    if self.latest_step() is None:
      raise FileNotFoundError(f'{self.directory} holds no checkpoint yet.')
    key = lambda tree: 'ema' if tree.get('ema') else 'params'
    step, restored, broken = self._newest_that_restores(
        lambda step, tree: check_shapes(
            tree[key(tree)], params_like,
            f'checkpoint {self.directory} step {step} ({key(tree)})', fields),
        lambda step, tree: self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))['state'][key(tree)])  # as saved: only read
    if step is None:
      raise ValueError(_broken_message(self.directory, broken) + '\nNo step restores: retrain, '
                       'or point at another checkpoint.')
    if broken:
      logging.warning('%s', _broken_message(self.directory, broken) + f'\nRead step {step}.')
    # on the host, then where a fresh model's parameters are: restored with the shardings of the
    # training mesh, a rollout's state and its outputs were placed apart and the chunk step
    # compiled twice (the second time at chunk 2)
    return jax.tree.map(lambda a, like: jax.numpy.asarray(np.asarray(a), like.dtype),
                        restored, params_like)

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
