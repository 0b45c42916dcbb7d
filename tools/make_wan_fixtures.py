"""Writes tests/fixtures/wan/: a tiny random Wan2.1 transformer from diffusers in the three
formats the loaders read, with inputs and outputs to match (the reference for tests/test_wan_import.py).

Needs PyTorch and diffusers, never the package or its tests:
  python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 diffusers safetensors
  /tmp/torchenv/bin/python tools/make_wan_fixtures.py
(pin torch: an unpinned install pulls a multi-GB CUDA build). Written:
  diffusers/            WanTransformer3DModel.save_pretrained (config.json + safetensors)
  diffusers_sharded/    the same in shards, with diffusion_pytorch_model.safetensors.index.json
  original/             Wan2.1's own names and config.json (WanModel), one safetensors file
  self_forcing.pt       torch.save({'generator': ..., 'generator_ema': ...}), 'model.'-prefixed
                        original names; generator_ema holds these weights, generator others
  reader.pt, reader.safetensors, reader.npz   odd tensors (bfloat16, strided, scalar) and values
  io.npz                inputs and diffusers' outputs: bidirectional with one t per sample and one
                        per frame, and block-causal (chunks of 2 frames) through a masked processor
The original-named weights are checked against diffusers' own converter
(convert_wan_transformer_to_diffusers) before anything is written.
"""

import json
import os
import shutil

import numpy as np
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fixtures', 'wan')
CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
              out_channels=4, text_dim=16, freq_dim=32, ffn_dim=48, num_layers=2,
              cross_attn_norm=True, qk_norm='rms_norm_across_heads', eps=1e-6, rope_max_seq_len=64)
B, F, H, W, L = 2, 4, 8, 8, 8  # batch, latent frames, latent height and width, text tokens
CHUNK = 2

# diffusers name piece -> Wan2.1 name piece, applied in order (the inverse of diffusers' renames)
TO_ORIGINAL = [
    ('condition_embedder.time_embedder.linear_1', 'time_embedding.0'),
    ('condition_embedder.time_embedder.linear_2', 'time_embedding.2'),
    ('condition_embedder.text_embedder.linear_1', 'text_embedding.0'),
    ('condition_embedder.text_embedder.linear_2', 'text_embedding.2'),
    ('condition_embedder.time_proj', 'time_projection.1'),
    ('attn1', 'self_attn'), ('attn2', 'cross_attn'), ('.to_out.0.', '.o.'), ('.to_q.', '.q.'),
    ('.to_k.', '.k.'), ('.to_v.', '.v.'), ('ffn.net.0.proj', 'ffn.0'), ('ffn.net.2', 'ffn.2'),
    ('norm2', 'norm__swap'), ('norm3', 'norm2'), ('norm__swap', 'norm3'),
    ('proj_out', 'head.head')]


def original_name(name):
  if name == 'scale_shift_table':
    return 'head.modulation'
  for a, b in TO_ORIGINAL:
    name = name.replace(a, b)
  return name.replace('scale_shift_table', 'modulation')


class MaskedSelfAttention(WanAttnProcessor):
  """diffusers' processor with a visibility mask on the self-attention (block-causal)."""

  def __init__(self, mask):
    super().__init__()
    self.mask = mask

  def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
               rotary_emb=None):
    if encoder_hidden_states is None:
      attention_mask = self.mask
    return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)


def random_model(seed):
  torch.manual_seed(seed)
  model = WanTransformer3DModel(**CONFIG).eval()
  with torch.no_grad():  # every weight random, norms and biases too, so a misplaced one shows
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.2) + (1.0 if p.ndim == 1 else 0))
  return model


def main():
  shutil.rmtree(OUT, ignore_errors=True)
  os.makedirs(OUT)
  model = random_model(0)
  model.save_pretrained(os.path.join(OUT, 'diffusers'), safe_serialization=True)
  model.save_pretrained(os.path.join(OUT, 'diffusers_sharded'), safe_serialization=True,
                        max_shard_size='40KB')
  sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
  original = {original_name(k): v for k, v in sd.items()}
  back = convert_wan_transformer_to_diffusers(dict(original))
  assert set(back) == set(sd), sorted(set(back) ^ set(sd))
  assert all(torch.equal(back[k], sd[k]) for k in sd)
  os.makedirs(os.path.join(OUT, 'original'))
  save_file(original, os.path.join(OUT, 'original', 'diffusion_pytorch_model.safetensors'))
  with open(os.path.join(OUT, 'original', 'config.json'), 'w') as f:
    json.dump(dict(_class_name='WanModel', model_type='t2v', patch_size=[1, 2, 2], text_len=512,
                   in_dim=4, dim=24, ffn_dim=48, freq_dim=32, text_dim=16, out_dim=4,
                   num_heads=2, num_layers=2, window_size=[-1, -1], qk_norm=True,
                   cross_attn_norm=True, eps=1e-6), f, indent=1)
  other = {original_name(k): v for k, v in random_model(1).state_dict().items()}
  torch.save(dict(generator={'model.' + k: v for k, v in other.items()},
                  generator_ema={'model.' + k: v for k, v in original.items()}, step=7),
             os.path.join(OUT, 'self_forcing.pt'))

  # the readers' odd cases: bfloat16, a transposed (strided) view, a scalar, int64
  g = torch.Generator().manual_seed(2)
  odd = dict(bf16=torch.randn(3, 5, generator=g).to(torch.bfloat16),
             strided=torch.randn(4, 6, generator=g).t(), scalar=torch.tensor(3.5),
             ints=torch.arange(6).reshape(2, 3))
  torch.save(odd, os.path.join(OUT, 'reader.pt'))
  save_file({k: v.contiguous() for k, v in odd.items()}, os.path.join(OUT, 'reader.safetensors'))
  np.savez(os.path.join(OUT, 'reader.npz'), **{k: v.float().numpy() if k == 'bf16' else v.numpy()
                                                 for k, v in odd.items()})

  g = torch.Generator().manual_seed(3)
  video = torch.randn(B, CONFIG['in_channels'], F, H, W, generator=g)
  text = torch.randn(B, L, CONFIG['text_dim'], generator=g)
  t_sample = torch.tensor([900.0, 250.0])
  t_frame = torch.tensor([[1000.0, 750.0, 500.0, 0.0], [0.0, 0.0, 600.0, 300.0]])
  tokens = (H // 2) * (W // 2)
  with torch.no_grad():
    out_sample = model(video, t_sample, text, return_dict=False)[0]
    out_frame = model(video, t_frame.repeat_interleave(tokens, 1), text, return_dict=False)[0]
    chunk = torch.arange(F).repeat_interleave(tokens) // CHUNK
    mask = (chunk[:, None] >= chunk[None, :])[None, None]
    model.set_attn_processor(MaskedSelfAttention(mask))
    out_causal = model(video, t_frame.repeat_interleave(tokens, 1), text, return_dict=False)[0]
  np.savez(os.path.join(OUT, 'io.npz'), video=video.numpy(), text=text.numpy(),
           t_sample=t_sample.numpy(), t_frame=t_frame.numpy(), chunk_frames=CHUNK,
           out_sample=out_sample.numpy(), out_frame=out_frame.numpy(),
           out_causal=out_causal.numpy())
  print('wrote', os.path.abspath(OUT))
  for root, _, files in os.walk(OUT):
    for name in sorted(files):
      print(f'  {os.path.relpath(os.path.join(root, name), OUT)}: '
            f'{os.path.getsize(os.path.join(root, name))} bytes')


if __name__ == '__main__':
  main()
