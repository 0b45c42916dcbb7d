"""Model weights on disk (Orbax), restored with a shape check against the config."""

import os

import jax
import orbax.checkpoint as ocp
from flax import nnx


def save_params(path: str, model: nnx.Module) -> None:
  """Writes the model's parameters to a new directory `path` (refuses to replace one)."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f'{path} exists; choose a new checkpoint directory.')
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  checkpointer.wait_until_finished()


def _flat(tree):
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def load_params(path: str, model: nnx.Module) -> nnx.Module:
  """Restores parameters saved by `save_params` into `model` (in place) and returns it.

  Raises a ValueError naming every parameter whose shape differs, or that is missing on
  either side, before anything is loaded.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'checkpoint {path} does not exist (set --config.checkpoint to a '
                            'directory written by save_params, or leave it empty for random weights).')
  checkpointer = ocp.StandardCheckpointer()
  saved = _flat(checkpointer.metadata(path).item_metadata.tree)
  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  expected = _flat(pure)
  problems = [f'{k}: missing in checkpoint' for k in expected if k not in saved]
  problems += [f'{k}: not in the model' for k in saved if k not in expected]
  problems += [f'{k}: checkpoint {tuple(saved[k].shape)} vs config {tuple(v.shape)}'
               for k, v in expected.items() if k in saved and tuple(saved[k].shape) != v.shape]
  if problems:
    shown = '\n  '.join(problems[:12]) + ('\n  ...' if len(problems) > 12 else '')
    raise ValueError(f'checkpoint {path} does not match the model config '
                     f'({len(problems)} problems); check the model.* fields:\n  {shown}')
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), pure)
  nnx.replace_by_pure_dict(state, checkpointer.restore(path, abstract))
  nnx.update(model, state)
  return model
