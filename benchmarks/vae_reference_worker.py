"""The reference side of benchmarks/vae_speed.py: diffusers' AutoencoderKLWan on the CPU.

  REFERENCE_VENV/bin/python benchmarks/vae_reference_worker.py \
      '{"op": "decode", "batch": 1, "frames": 9, "height": 480, "width": 832, "seed": 0}'

Run by vae_speed.py with the venv given as --reference_python (torch CPU, diffusers >= 0.33);
this project's side never imports torch. Builds Wan2.1's VAE (AutoencoderKLWan's defaults) with
random weights and runs diffusers' own chunk loop, timing each chunk: `_encode`'s (frame 0, then
4 frames a chunk, through the encoder with its feature cache; quant_conv, a 1x1x1 convolution,
applied per chunk rather than once after them), or `_decode`'s (post_quant_conv, then one latent
frame a chunk through the decoder, `first_chunk` on the first; clamped to [-1, 1]). No tiling or
slicing (diffusers' defaults). Prints one `RESULT {json}` line: ms/frame is the mean over the
chunks after the first, per video frame (4 a chunk); first_s the first chunk's wall time.
"""

import json
import os
import statistics
import sys
import time

import diffusers
import torch
from diffusers import AutoencoderKLWan

TEMPORAL = 4  # Wan2.1's VAE: 4 frames per latent frame after the first
SPATIAL = 8


def measure(cfg: dict) -> dict:
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(cfg['seed'])
  start = time.perf_counter()
  vae = AutoencoderKLWan().eval()
  b, t, h, w = cfg['batch'], cfg['frames'], cfg['height'], cfg['width']
  gen = torch.Generator().manual_seed(cfg['seed'])
  chunk_s = []
  with torch.inference_mode():
    if cfg['op'] == 'encode':
      x = torch.rand(b, 3, t, h, w, generator=gen) * 2 - 1
      setup_s = time.perf_counter() - start
      vae.clear_cache()
      outs = []
      for i in range(1 + (t - 1) // TEMPORAL):  # as AutoencoderKLWan._encode
        tick = time.perf_counter()
        vae._enc_conv_idx = [0]
        frames = x[:, :, :1] if i == 0 else x[:, :, 1 + TEMPORAL * (i - 1):1 + TEMPORAL * i]
        out = vae.encoder(frames, feat_cache=vae._enc_feat_map, feat_idx=vae._enc_conv_idx)
        outs.append(vae.quant_conv(out))
        chunk_s.append(time.perf_counter() - tick)
      vae.clear_cache()
      out_shape = list(torch.cat(outs, 2).shape)
    else:
      n = 1 + (t - 1) // TEMPORAL
      z = torch.randn(b, vae.config.z_dim, n, h // SPATIAL, w // SPATIAL, generator=gen)
      setup_s = time.perf_counter() - start
      vae.clear_cache()
      outs = []
      for i in range(n):  # as AutoencoderKLWan._decode
        tick = time.perf_counter()
        vae._conv_idx = [0]
        zi = vae.post_quant_conv(z[:, :, i:i + 1])
        out = vae.decoder(zi, feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                          first_chunk=i == 0)
        outs.append(torch.clamp(out, -1.0, 1.0))
        chunk_s.append(time.perf_counter() - tick)
      vae.clear_cache()
      out_shape = list(torch.cat(outs, 2).shape)
  return dict(
      side='reference', op=cfg['op'], batch=b, frames=t, height=h, width=w, chunks=len(chunk_s),
      ms_per_frame=1000 * statistics.mean(chunk_s[1:]) / TEMPORAL, first_s=chunk_s[0],
      setup_s=setup_s, chunk_s=chunk_s, out_shape=out_shape, threads=torch.get_num_threads(),
      torch=torch.__version__, diffusers=diffusers.__version__)


if __name__ == '__main__':
  print('RESULT ' + json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
