"""Wan2.1 VAE weights into `AutoencoderKLWan`, without PyTorch: the one place that knows the
names of the two formats.

  * a diffusers `AutoencoderKLWan` directory (`config.json` + safetensors or a shard index),
    e.g. Wan2.1-T2V-1.3B-Diffusers/vae: `load_diffusers(directory)`;
  * Wan2.1's own `Wan2.1_VAE.pth` (a torch.save state dict, read by weight_files without torch)
    or a safetensors file of its names: `load_original(path, cfg=None)`. It has no config: its
    layout comes from the weights' shapes, its latent statistics are Wan2.1's (z_dim 16), or
    pass `cfg`.
`load_vae(path)` picks by the path. Everything is read and checked before a model is built: a
file that is not this VAE, a missing or unknown weight, or a shape that does not fit is refused
with the weights' names (as the file has them) listed.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pafukv_jax import checkpoints
from pafukv_jax.models import weight_files
from pafukv_jax.vae.config import (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, NotAWanVae, VaeConfig,
                                   read_config)
from pafukv_jax.vae.model import AutoencoderKLWan, abstract_vae

_LEAVES = {'weight': 'kernel', 'bias': 'bias', 'gamma': 'scale'}
# Wan2.1's residual blocks are Sequentials (norm, SiLU, conv, norm, SiLU, dropout, conv)
_RESIDUAL = {'residual.0': 'norm1', 'residual.2': 'conv1', 'residual.3': 'norm2',
             'residual.6': 'conv2', 'shortcut': 'conv_shortcut'}
_MIDDLE = {'0': 'resnets.0', '1': 'attentions.0', '2': 'resnets.1'}
_ENDS = {'conv1': 'conv_in', 'head.0': 'norm_out', 'head.2': 'conv_out'}  # head.1 is the SiLU


def original_to_diffusers(name: str, num_res_blocks: int = 2) -> str:
  """diffusers' name of a Wan2.1 VAE weight (as diffusers' convert_wan_vae_to_diffusers renames
  Wan2.1's layout, for any num_res_blocks); an unknown name comes back unchanged."""
  m = re.fullmatch(r'conv([12])\.(weight|bias)', name)
  if m:
    return f'{"quant_conv" if m[1] == "1" else "post_quant_conv"}.{m[2]}'
  m = re.fullmatch(r'(encoder|decoder)\.(conv1|head\.0|head\.2)\.(\w+)', name)
  if m:
    return f'{m[1]}.{_ENDS[m[2]]}.{m[3]}'
  m = re.fullmatch(r'(encoder|decoder)\.middle\.([012])\.(.+)', name)
  if m:
    prefix, rest = f'{m[1]}.mid_block.{_MIDDLE[m[2]]}', m[3]
  elif m := re.fullmatch(r'encoder\.downsamples\.(\d+)\.(.+)', name):
    prefix, rest = f'encoder.down_blocks.{m[1]}', m[2]
  elif m := re.fullmatch(r'decoder\.upsamples\.(\d+)\.(.+)', name):
    level, j = divmod(int(m[1]), num_res_blocks + 2)  # each level: resnets, then its upsampler
    inner = 'upsamplers.0' if j == num_res_blocks + 1 else f'resnets.{j}'
    prefix, rest = f'decoder.up_blocks.{level}.{inner}', m[2]
  else:
    return name
  for a, b in _RESIDUAL.items():
    if rest.startswith(a + '.'):
      rest = b + rest[len(a):]
  return f'{prefix}.{rest}'


def _param_path(name: str) -> str | None:
  """This model's parameter path ('encoder/down_blocks/0/conv1/kernel') of a diffusers name."""
  *parts, leaf = name.replace('.resample.1.', '.resample.').split('.')
  return '/'.join(parts + [_LEAVES[leaf]]) if leaf in _LEAVES and parts else None


def _to_layout(array: np.ndarray, name: str) -> np.ndarray:
  """torch's layout to this model's: Conv3d [O, I, t, h, w] -> [t, h, w, I, O], Conv2d
  [O, I, h, w] -> [h, w, I, O], RMS norm gains [C, 1, 1(, 1)] -> [C]."""
  if name.endswith('.gamma'):
    return array.reshape(-1) if array.ndim and array.size == array.shape[0] else array
  if array.ndim == 5:
    return array.transpose(2, 3, 4, 1, 0)
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  return array


def _torch_shape(shape: tuple, got: tuple, name: str) -> tuple:
  """A model parameter's shape as torch lays it out (the inverse of `_to_layout`)."""
  if name.endswith('.gamma'):
    return (shape[0], *got[1:]) if got else shape
  if len(shape) in (4, 5):
    return (shape[-1], shape[-2], *shape[:-2])
  return shape


def to_params(weights: dict, cfg: VaeConfig, names: dict | None = None) -> dict:
  """The model's pure parameter dict (nested, float32 NumPy) of diffusers-named weights; raises
  NotAWanVae naming every unknown, missing or misshapen weight (by `names`: diffusers name ->
  the file's own, where it has others)."""
  names = names or {}
  shown = lambda k: names.get(k, k)
  expected = checkpoints.flat_paths(nnx.to_pure_dict(nnx.state(abstract_vae(cfg), nnx.Param)))
  flat, problems = {}, []
  for name in sorted(weights):
    path = _param_path(name)
    if path is None or path not in expected:
      problems.append(f'{shown(name)}: not a weight of this AutoencoderKLWan')
      continue
    want = tuple(expected[path].shape)
    got = tuple(weights[name].shape)
    array = _to_layout(np.asarray(weights[name], np.float32), name)
    if array.shape != want:
      problems.append(f'{shown(name)}: shape {got} where the model needs '
                      f'{_torch_shape(want, got, name)}')
      continue
    flat[path] = array
  reverse = {_param_path(k): k for k in weights}
  for path in expected:
    if path not in flat and path not in reverse:
      back = path.replace('/', '.').replace('.resample.', '.resample.1.')
      back = back.replace('.kernel', '.weight').replace('.scale', '.gamma')
      problems.append(f'{shown(back)}: missing in the source')
  weight_files.refuse_problems(problems, NotAWanVae, 'the VAE')
  return weight_files.nest(flat, int_indices=True)


def build(cfg: VaeConfig, params: dict, dtype=jnp.float32) -> AutoencoderKLWan:
  """A VAE holding `params` (from `to_params`)."""
  graphdef, state = nnx.split(abstract_vae(cfg, dtype))
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def _single_weights_file(directory: str) -> str:
  files = [f for f in sorted(os.listdir(directory)) if f.endswith(('.safetensors', '.index.json'))]
  files = [f for f in files if f.endswith('.index.json')] or files
  if len(files) != 1:
    raise NotAWanVae(f'{directory} should hold one .safetensors file or one shard index; found '
                     f'{files or "none"}.')
  return os.path.join(directory, files[0])


def load_diffusers(directory: str, dtype=jnp.float32) -> AutoencoderKLWan:
  """The VAE of a diffusers AutoencoderKLWan directory (its config.json and weights)."""
  cfg = read_config(directory)
  weights = weight_files.read_weights(_single_weights_file(directory))
  return build(cfg, to_params(weights, cfg), dtype)


def read_original(path: str) -> dict:
  """{Wan2.1 name: LazyArray} of a Wan2.1_VAE.pth (or a safetensors file of Wan2.1's names)."""
  obj = weight_files.read_weights(path)
  if not isinstance(obj, dict) or not all(isinstance(v, weight_files.LazyArray)
                                          for v in obj.values()):
    found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise NotAWanVae(f'{path} is not a flat state dict of tensors (found {found}): not a '
                     'Wan2.1_VAE.pth.')
  if 'encoder.conv1.weight' not in obj or 'decoder.conv1.weight' not in obj:
    raise NotAWanVae(f'{path} has no encoder.conv1.weight / decoder.conv1.weight (first names: '
                     f'{sorted(obj)[:6]}): not a Wan2.1 VAE under its original names.')
  return obj


def infer_config(weights: dict, latents_mean=None, latents_std=None) -> VaeConfig:
  """The VaeConfig of Wan2.1-named weights, from their shapes; latent statistics as given, else
  Wan2.1's (for 16 latent channels only)."""
  required = ('encoder.conv1.weight', 'conv2.weight', 'decoder.head.2.weight',
              'encoder.downsamples.0.residual.2.weight')
  missing = [k for k in required if k not in weights]
  if missing:
    raise NotAWanVae(f'no {missing} among the weights: not a Wan2.1 VAE under its own names.')
  shape = lambda k: weights[k].shape
  base, in_channels = shape('encoder.conv1.weight')[:2]
  z_dim = shape('conv2.weight')[0]
  mult, temporal, blocks, level_blocks = [], [], [], 0
  indices = sorted({int(m[1]) for k in weights
                    if (m := re.match(r'encoder\.downsamples\.(\d+)\.', k))})
  for i in indices:
    key = f'encoder.downsamples.{i}'
    if f'{key}.residual.2.weight' in weights:
      level_blocks += 1
      width = shape(f'{key}.residual.2.weight')[0]
    elif f'{key}.resample.1.weight' in weights:
      temporal.append(f'{key}.time_conv.weight' in weights)
      mult.append(width // base)
      blocks.append(level_blocks)
      level_blocks = 0
    else:
      raise NotAWanVae(f'{key}.* is neither a residual block nor a downsampling.')
  mult.append(width // base)
  blocks.append(level_blocks)
  if len(set(blocks)) != 1:
    raise NotAWanVae(f'residual blocks per level {blocks}: not a Wan2.1 VAE (the same in each).')
  if latents_mean is None or latents_std is None:
    if z_dim != len(WAN21_LATENTS_MEAN):
      raise NotAWanVae(f'z_dim {z_dim}: Wan2.1\'s latent statistics are for 16 channels; give '
                       'this VAE\'s latents_mean and latents_std (or a VaeConfig).')
    latents_mean, latents_std = WAN21_LATENTS_MEAN, WAN21_LATENTS_STD
  decoder_base, out_channels = shape('decoder.head.2.weight')[1::-1]
  return VaeConfig(base_dim=int(base), z_dim=int(z_dim), dim_mult=tuple(int(m) for m in mult),
                   num_res_blocks=blocks[0], temperal_downsample=tuple(temporal),
                   in_channels=int(in_channels), out_channels=int(out_channels),
                   latents_mean=tuple(latents_mean), latents_std=tuple(latents_std),
                   decoder_base_dim=None if decoder_base == base else int(decoder_base)
                   ).validate()


def load_original(path: str, cfg: VaeConfig | None = None, dtype=jnp.float32) -> AutoencoderKLWan:
  """The VAE of a Wan2.1_VAE.pth; cfg None: from the weights' shapes (see `infer_config`)."""
  weights = read_original(path)
  cfg = cfg or infer_config(weights)
  renamed = {original_to_diffusers(k, cfg.num_res_blocks): k for k in weights}
  if len(renamed) != len(weights):
    raise NotAWanVae(f'{path}: two weights map to one diffusers name.')
  diffusers = {k: weights[v] for k, v in renamed.items()}
  return build(cfg, to_params(diffusers, cfg, names=renamed), dtype)


def read_vae_config(path: str) -> VaeConfig:
  """The VaeConfig of a diffusers vae/ directory or a Wan2.1_VAE.pth, without reading weights
  (a .pth's tensors are read lazily: only their shapes): to check a VAE before any work."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'The VAE {path} does not exist: give a diffusers vae/ directory or a '
                            'Wan2.1_VAE.pth.')
  return read_config(path) if os.path.isdir(path) else infer_config(read_original(path))


def load_vae(path: str, cfg: VaeConfig | None = None, dtype=jnp.float32) -> AutoencoderKLWan:
  """A diffusers vae/ directory or a Wan2.1_VAE.pth (cfg: for the latter, see load_original)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist.')
  if os.path.isdir(path):
    return load_diffusers(path, dtype)
  return load_original(path, cfg, dtype)
