"""Writes tests/fixtures/vae/: a tiny random Wan2.1 VAE (diffusers' AutoencoderKLWan) in the two
formats pafukv_jax.vae.weights reads, with a video, its latents and its decoding to match (the
reference for tests/test_vae.py).

Needs PyTorch and diffusers, never the package or its tests:
  python -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.13.0 "diffusers>=0.33" safetensors numpy
  /tmp/torchenv/bin/python tools/make_vae_fixtures.py
(pin torch: an unpinned install pulls a multi-GB CUDA build). Written:
  diffusers/        AutoencoderKLWan.save_pretrained (config.json + float32 safetensors)
  wan2.1_vae.pth    torch.save of the same weights under Wan2.1's own names (its Wan2.1_VAE.pth
                    layout), in float16: the weights are rounded to float16 values before
                    anything is computed, so both files hold the same numbers
  wan2.1_shapes.json  the weights' names and shapes of the full-size Wan2.1 VAE (diffusers'
                    default AutoencoderKLWan, 127M weights) under both namings, for checking
                    the name mapping at full size without the weights
  io.npz            in diffusers' layout [B, C, T, H, W]: video (9 frames), moments (the encoder's
                    mean and log-variance, before DiagonalGaussianDistribution's clamp), latents
                    (the mean), normalized ((mean - latents_mean) / latents_std, as Wan's
                    pipelines do), decoded (vae.decode(mean), clamped to [-1, 1]) and
                    decoded_raw (the same decode before the clamp)
The Wan2.1 names (of the tiny and the full-size model) are checked against diffusers' own
converter (convert_wan_vae_to_diffusers) before anything is written. The tiny model has
Wan2.1's layout (dim_mult [1, 2, 4, 4], 2 residual blocks a level, temporal downsampling in the
last two levels) at base_dim 2: that converter knows only this layout (fixed block indices), and
it keeps the files small (59k weights).
"""

import json
import os
import re
import shutil

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

OUT = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures', 'vae')
Z = 4
CONFIG = dict(base_dim=2, z_dim=Z, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
              temperal_downsample=[False, True, True], dropout=0.0,
              latents_mean=[0.3, -0.2, 0.1, -0.4], latents_std=[1.5, 0.8, 2.0, 1.2])
B, T, H, W = 1, 9, 16, 24  # 1 + 2 x 4 frames: the first chunk and two of four; 2 x 3 latents

_RESIDUAL = (('norm1', 'residual.0'), ('conv1', 'residual.2'), ('norm2', 'residual.3'),
             ('conv2', 'residual.6'), ('conv_shortcut', 'shortcut'))


def original_name(name, num_res_blocks=2):
  """Wan2.1's name of a diffusers AutoencoderKLWan weight (the inverse of diffusers' converter)."""
  top = {'quant_conv': 'conv1', 'post_quant_conv': 'conv2'}
  first, rest = name.split('.', 1)
  if first in top:
    return f'{top[first]}.{rest}'
  part, rest = rest.split('.', 1)
  if part == 'conv_in':
    return f'{first}.conv1.{rest}'
  if part == 'norm_out':
    return f'{first}.head.0.{rest}'
  if part == 'conv_out':
    return f'{first}.head.2.{rest}'
  if part == 'mid_block':
    kind, i, rest = rest.split('.', 2)
    index = {('resnets', '0'): 0, ('attentions', '0'): 1, ('resnets', '1'): 2}[kind, i]
    prefix = f'{first}.middle.{index}'
  elif part == 'down_blocks':
    i, rest = rest.split('.', 1)
    prefix = f'encoder.downsamples.{i}'
  elif part == 'up_blocks':
    i, kind, j, rest = rest.split('.', 3)
    j = int(j) if kind == 'resnets' else num_res_blocks + 1  # upsamplers.0 follows the resnets
    prefix = f'decoder.upsamples.{int(i) * (num_res_blocks + 2) + j}'
  else:
    raise KeyError(name)
  layer = rest.rsplit('.', 1)[0]
  for a, b in _RESIDUAL:
    if layer == a:
      rest = b + rest[len(a):]
  return f'{prefix}.{rest}'


def check_original_names(sd):
  """{Wan2.1 name: tensor} of a diffusers state dict, checked against diffusers' converter."""
  original = {original_name(k): v for k, v in sd.items()}
  assert len(original) == len(sd)
  back = convert_wan_vae_to_diffusers(dict(original))
  assert set(back) == set(sd), sorted(set(back) ^ set(sd))
  assert all(back[k] is sd[k] for k in sd)
  assert not any(re.search(r'(mid_block|down_blocks|up_blocks)', k) for k in original)
  return original


def random_model(seed):
  torch.manual_seed(seed)
  model = AutoencoderKLWan(**CONFIG).eval()
  with torch.no_grad():  # norms' gains and biases random too, so a misplaced one shows
    for name, p in model.named_parameters():
      if name.endswith('gamma'):
        p.copy_(1 + 0.3 * torch.randn_like(p))
      elif name.endswith('bias'):
        p.copy_(0.2 * torch.randn_like(p))
      if name.startswith('decoder.conv_out'):
        p.mul_(3)  # outputs past [-1, 1] somewhere, so the decode's clamp is tested
      p.copy_(p.half().float())  # float16 values: the .pth in float16 holds the same numbers
  return model


def decode_raw(model, z):
  """diffusers' AutoencoderKLWan._decode without its final clamp (one latent frame a call)."""
  model.clear_cache()
  x = model.post_quant_conv(z)
  out = []
  for i in range(x.shape[2]):
    model._conv_idx = [0]
    out.append(model.decoder(x[:, :, i:i + 1], feat_cache=model._feat_map,
                             feat_idx=model._conv_idx, first_chunk=i == 0))
  model.clear_cache()
  return torch.cat(out, 2)


def main():
  shutil.rmtree(OUT, ignore_errors=True)
  os.makedirs(OUT)
  model = random_model(0)
  model.save_pretrained(os.path.join(OUT, 'diffusers'), safe_serialization=True)
  sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
  original = check_original_names(sd)
  torch.save({k: v.half() for k, v in original.items()}, os.path.join(OUT, 'wan2.1_vae.pth'))
  with torch.device('meta'):  # shapes only
    full = AutoencoderKLWan().state_dict()
  shapes = lambda d: {k: list(v.shape) for k, v in d.items()}
  with open(os.path.join(OUT, 'wan2.1_shapes.json'), 'w') as f:
    json.dump(dict(diffusers=shapes(full), original=shapes(check_original_names(full))), f)

  g = torch.Generator().manual_seed(1)
  video = torch.rand(B, 3, T, H, W, generator=g) * 2 - 1
  with torch.no_grad():
    moments = model._encode(video)
    posterior = model.encode(video).latent_dist
    mean = posterior.mean
    assert torch.equal(mean, moments[:, :Z])
    latents_mean = torch.tensor(CONFIG['latents_mean']).view(1, Z, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(CONFIG['latents_std']).view(1, Z, 1, 1, 1)
    normalized = (mean - latents_mean) * inv_std  # as WanImageToVideoPipeline.prepare_latents
    decoded = model.decode(mean).sample
    raw = decode_raw(model, mean)
    assert torch.equal(decoded, raw.clamp(-1, 1))
  print(f'latents {tuple(mean.shape)} std {mean.std():.3f}; decoded raw range '
        f'[{raw.min():.2f}, {raw.max():.2f}], {(raw.abs() > 1).float().mean():.1%} clamped')
  np.savez(os.path.join(OUT, 'io.npz'), video=video.numpy(), moments=moments.numpy(),
           latents=mean.numpy(), normalized=normalized.numpy(), decoded=decoded.numpy(),
           decoded_raw=raw.numpy())
  print('wrote', os.path.abspath(OUT))
  total = 0
  for root, _, files in os.walk(OUT):
    for name in sorted(files):
      size = os.path.getsize(os.path.join(root, name))
      total += size
      print(f'  {os.path.relpath(os.path.join(root, name), OUT)}: {size} bytes')
  print(f'  total {total} bytes')


if __name__ == '__main__':
  main()
