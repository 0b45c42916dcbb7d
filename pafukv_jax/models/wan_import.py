"""Wan2.1 and Self-Forcing weights into a params directory: the one place that knows their names.

  python -m pafukv_jax.models.wan_import --src=PATH --out=DIR [--image_size=60,104]

PATH is any of:
  * a diffusers `WanTransformer3DModel` directory (`config.json` + safetensors, or shards with
    `diffusion_pytorch_model.safetensors.index.json`), e.g. Wan2.1-T2V-1.3B-Diffusers/transformer;
  * an original Wan2.1 checkpoint directory (Wan's `config.json`, `_class_name: WanModel`, and
    its safetensors), e.g. Wan2.1-T2V-1.3B;
  * a Self-Forcing `.pt` (`generator_ema`, else `generator`, names prefixed `model.`), read without
    PyTorch. It has no config: sizes come from the weights' shapes, heads from `--num_heads`
    (default dim // 128, Wan's head size at every scale).
DIR gets the parameters (Orbax, as `checkpoints.save_params` writes them) and a `config.json`
whose `model` fields are the DiTConfig of these weights (text-conditioned: num_classes 0,
num_cond_tokens 512, the prompt length Wan pads to) and whose `stage` says teacher (Wan2.1,
bidirectional) or student (Self-Forcing, block-causal). Everything is read and checked before DIR
is created: a file that is not a Wan text-to-video transformer, a missing or unknown weight, or a
shape that does not fit is refused with the names listed.
"""

import argparse
import json
import os
import re

import jax
import numpy as np
from flax import nnx

from pafukv_jax import checkpoints
from pafukv_jax.models import weight_files
from pafukv_jax.models.dit import DiTConfig, VideoDiT

WAN_HEAD_DIM = 128  # every Wan2.1 size (1.3B: 12 x 128, 14B: 40 x 128)
TEXT_LEN = 512      # Wan pads umT5 prompt embeddings to this many tokens

# Wan2.1-T2V-1.3B (and Self-Forcing, built on it) at 480x832 video: 60x104 latents of 16 channels
# through the Wan VAE, 1560 tokens per latent frame; 1,418,996,800 parameters, as diffusers counts
WAN_PRESETS = {'wan1.3b': dict(
    image_size=(60, 104), channels=16, patch_size=2, dim=1536, ffn_dim=8960, num_heads=12,
    num_layers=30, freq_dim=256, cond_dim=4096, num_cond_tokens=TEXT_LEN, num_classes=0,
    frame_cond_dim=0, eps=1e-6)}

# diffusers name pieces -> Wan2.1's, in this order (norm2 and norm3 trade places)
_DIFFUSERS_TO_WAN = (
    ('condition_embedder.time_embedder.linear_1', 'time_embedding.0'),
    ('condition_embedder.time_embedder.linear_2', 'time_embedding.2'),
    ('condition_embedder.text_embedder.linear_1', 'text_embedding.0'),
    ('condition_embedder.text_embedder.linear_2', 'text_embedding.2'),
    ('condition_embedder.time_proj', 'time_projection.1'),
    ('.attn1.', '.self_attn.'), ('.attn2.', '.cross_attn.'), ('.to_out.0.', '.o.'),
    ('.to_q.', '.q.'), ('.to_k.', '.k.'), ('.to_v.', '.v.'),
    ('.ffn.net.0.proj.', '.ffn.0.'), ('.ffn.net.2.', '.ffn.2.'),
    ('.norm2.', '.norm_swap.'), ('.norm3.', '.norm2.'), ('.norm_swap.', '.norm3.'),
    ('proj_out.', 'head.head.'), ('.scale_shift_table', '.modulation'))

# Wan2.1 name (regex) -> this model's parameter path; '{}' is the block index, stacked on 'layers'
_LINEARS = {r'time_embedding\.0': 'time_embedding/fc1', r'time_embedding\.2': 'time_embedding/fc2',
            r'text_embedding\.0': 'text_embedding/fc1', r'text_embedding\.2': 'text_embedding/fc2',
            r'time_projection\.1': 'time_projection', r'head\.head': 'head/head',
            r'blocks\.(\d+)\.(self_attn|cross_attn)\.([qkvo])': 'blocks/{1}/{2}',
            r'blocks\.(\d+)\.ffn\.0': 'blocks/ffn/fc1', r'blocks\.(\d+)\.ffn\.2': 'blocks/ffn/fc2'}
_OTHERS = {r'blocks\.(\d+)\.(self_attn|cross_attn)\.(norm_[qk])\.weight': 'blocks/{1}/{2}/scale',
           r'blocks\.(\d+)\.norm3\.weight': 'blocks/norm3/scale',
           r'blocks\.(\d+)\.norm3\.bias': 'blocks/norm3/bias',
           r'blocks\.(\d+)\.modulation': 'blocks/modulation', r'head\.modulation': 'head/modulation',
           r'patch_embedding\.weight': 'patch_embedding/kernel',
           r'patch_embedding\.bias': 'patch_embedding/bias'}


class NotAWanCheckpoint(ValueError):
  """The source is not a Wan2.1 text-to-video transformer this module imports (says why)."""


def detect_format(src: str) -> str:
  """'diffusers', 'wan' or 'self_forcing' for a source path (see the module docstring)."""
  if not os.path.exists(src):
    raise FileNotFoundError(f'--src {src} does not exist.')
  if os.path.isfile(src):
    if src.endswith(('.pt', '.pth', '.ckpt')):
      return 'self_forcing'
    raise NotAWanCheckpoint(f'{src} is a file but not a .pt/.pth: give a Self-Forcing .pt, or the '
                            'directory of a diffusers or Wan2.1 checkpoint (with config.json).')
  config_path = os.path.join(src, 'config.json')
  if not os.path.isfile(config_path):
    raise NotAWanCheckpoint(f'{src} has no config.json: give the transformer directory of a '
                            'diffusers Wan2.1 model or an original Wan2.1 checkpoint directory.')
  cls = _read_json(config_path).get('_class_name')
  if cls == 'WanTransformer3DModel':
    return 'diffusers'
  if cls == 'WanModel':
    return 'wan'
  raise NotAWanCheckpoint(f'{config_path} describes a {cls!r}, not a Wan2.1 transformer '
                          "('WanTransformer3DModel' in diffusers, 'WanModel' in Wan's own).")


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise NotAWanCheckpoint(f'{path} is not valid JSON ({e}).')


def read_source(src: str, fmt: str) -> tuple[dict, dict]:
  """(weights {Wan2.1 name: LazyArray}, the source's config or {})."""
  if fmt == 'self_forcing':
    obj = weight_files.read_torch(src)
    key = next((k for k in ('generator_ema', 'generator') if isinstance(obj, dict) and
                isinstance(obj.get(k), dict)), None)
    if key is None:
      found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
      raise NotAWanCheckpoint(f'{src} holds no generator_ema or generator state dict (found '
                              f'{found}): not a Self-Forcing checkpoint.')
    strip = lambda k: k[len('model.'):] if k.startswith('model.') else k
    return {strip(k): v for k, v in obj[key].items()}, {}
  config = _read_json(os.path.join(src, 'config.json'))
  files = [f for f in sorted(os.listdir(src)) if f.endswith(('.safetensors', '.index.json'))]
  index = [f for f in files if f.endswith('.index.json')]
  files = index or files
  if len(files) != 1:
    raise NotAWanCheckpoint(f'{src} should hold one .safetensors file or one shard index; '
                            f'found {files or "none"}.')
  weights = weight_files.read_weights(os.path.join(src, files[0]))
  if fmt == 'diffusers':
    weights = {_diffusers_to_wan(k): v for k, v in weights.items()}
  return weights, config


def _diffusers_to_wan(name: str) -> str:
  if name == 'scale_shift_table':  # the output head's; the blocks' are blocks.N.scale_shift_table
    return 'head.modulation'
  name = '.' + name
  for a, b in _DIFFUSERS_TO_WAN:
    name = name.replace(a, b)
  return name[1:]


def model_fields(weights: dict, config: dict, fmt: str, image_size=(60, 104),
                 num_heads: int = 0) -> dict:
  """DiTConfig fields of these weights: from the source's config where it has one, else shapes."""
  if any(k.startswith(('img_emb.', 'blocks.0.cross_attn.k_img')) for k in weights) or \
      config.get('model_type', 't2v') != 't2v' or config.get('added_kv_proj_dim') or \
      config.get('image_dim'):
    raise NotAWanCheckpoint('this is an image-to-video Wan model (image embedder, image keys): '
                            'only text-to-video transformers are imported.')
  required = ('patch_embedding.weight', 'text_embedding.0.weight', 'time_embedding.0.weight',
              'blocks.0.ffn.0.weight')
  missing = [k for k in required if k not in weights]
  if missing:
    raise NotAWanCheckpoint(f'no {missing} among the weights (first names: '
                            f'{sorted(weights)[:6]}): not a Wan2.1 transformer.')
  dim, channels, pt, p, q = weights['patch_embedding.weight'].shape
  if pt != 1 or p != q:
    raise NotAWanCheckpoint(f'patch size {(pt, p, q)}: only (1, p, p) patches are supported.')
  if fmt == 'diffusers':
    heads = config['num_attention_heads']
    if heads * config['attention_head_dim'] != dim:
      raise NotAWanCheckpoint(f'config heads x head dim != patch embedding width {dim}.')
  else:
    heads = config.get('num_heads') or num_heads or dim // WAN_HEAD_DIM
  out = weights['head.head.weight'].shape[0] if 'head.head.weight' in weights else None
  if out is not None and out != channels * p * q:
    raise NotAWanCheckpoint(f'output channels {out // (p * q)} != input channels {channels}.')
  return dict(image_size=tuple(int(s) for s in image_size), channels=int(channels),
              patch_size=int(p), dim=int(dim), ffn_dim=int(weights['blocks.0.ffn.0.weight'].shape[0]),
              num_heads=int(heads),
              num_layers=1 + max(int(m.group(1)) for k in weights
                                 if (m := re.match(r'blocks\.(\d+)\.', k))),
              freq_dim=int(weights['time_embedding.0.weight'].shape[1]),
              cond_dim=int(weights['text_embedding.0.weight'].shape[1]),
              num_cond_tokens=int(config.get('text_len', TEXT_LEN)), num_classes=0,
              frame_cond_dim=0, eps=float(config.get('eps', 1e-6)), rope_theta=10000.0,
              rope_positions='grid')


def _target(name: str):
  """(parameter path, layer index or None, kind) of a Wan2.1 weight name, or None."""
  for table, kind in ((_LINEARS, 'linear'), (_OTHERS, 'other')):
    for pattern, path in table.items():
      suffix = r'\.(weight|bias)' if kind == 'linear' else ''
      m = re.fullmatch(pattern + suffix, name)
      if m:
        groups = m.groups()
        layer = int(groups[0]) if path.startswith('blocks/') else None
        path = path.format(*groups)
        if kind == 'linear':
          path += '/kernel' if groups[-1] == 'weight' else '/bias'
        return path, layer, kind
  return None


def to_params(weights: dict, cfg: DiTConfig) -> dict:
  """This model's pure parameter dict (nested, float32 NumPy) from Wan2.1-named weights; raises
  NotAWanCheckpoint naming every unknown, missing or misshapen weight."""
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: VideoDiT(cfg, rngs=nnx.Rngs(0)))
  expected = checkpoints.flat_paths(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
  flat, problems, misshapen = {}, [], set()
  for name in sorted(weights):
    target = _target(name)
    if target is None:
      problems.append(f'{name}: not a weight of a Wan2.1 text-to-video transformer')
      continue
    path, layer, kind = target
    array = np.asarray(weights[name], np.float32)
    if kind == 'linear' and path.endswith('kernel'):
      array = array.T
    elif path == 'patch_embedding/kernel':  # Conv3d [dim, C, 1, p, p] -> [(C p p), dim]
      array = array.reshape(array.shape[0], -1).T
    elif path.endswith('modulation'):       # [1, n, dim] -> [n, dim]
      array = array.reshape(array.shape[-2:])
    want = expected.get(path)
    if want is None:
      problems.append(f'{name}: no {path} in the model')
      continue
    shape = want.shape[1:] if layer is not None else want.shape
    if array.shape != tuple(shape):
      problems.append(f'{name}: {array.shape} where the model has {tuple(shape)}')
      misshapen.add(path)
      continue
    if layer is None:
      flat[path] = array
    else:
      flat.setdefault(path, {})[layer] = array
  for path, want in expected.items():
    got = flat.get(path)
    if path in misshapen:
      continue
    if isinstance(got, dict):
      absent = sorted(set(range(want.shape[0])) - set(got))
      if absent:
        problems.append(f'{path}: missing for blocks {absent}')
        continue
      flat[path] = np.stack([got[i] for i in range(want.shape[0])])
    elif got is None:
      problems.append(f'{path}: missing in the source')
  weight_files.refuse_problems(problems, NotAWanCheckpoint, 'the model')
  return weight_files.nest(flat)


def import_weights(src: str, out: str, image_size=(60, 104), num_heads: int = 0,
                   stage: str = '') -> dict:
  """Reads, converts and checks `src`, then writes the params directory `out`; returns its
  config.json dict. Nothing is written unless everything fits."""
  out = os.path.abspath(out)
  if os.path.exists(out):
    raise FileExistsError(f'{out} exists; choose a new output directory (nothing was written).')
  if not os.path.isdir(os.path.dirname(out)):
    raise FileNotFoundError(f'the parent of {out} does not exist; create it first.')
  fmt = detect_format(src)
  weights, config = read_source(src, fmt)
  fields = model_fields(weights, config, fmt, image_size, num_heads)
  cfg = DiTConfig(**fields)
  cfg.validate()
  params = to_params(weights, cfg)
  saved = dict(stage=stage or ('student' if fmt == 'self_forcing' else 'teacher'),
               model={**fields, 'image_size': list(fields['image_size'])},
               source=dict(path=os.path.abspath(src), format=fmt))
  checkpoints.save_params(out, jax.tree.map(jax.numpy.asarray, params))
  with open(os.path.join(out, 'config.json'), 'w') as f:
    json.dump(saved, f, indent=1)
  return saved


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--src', required=True, help='diffusers or Wan2.1 directory, or a Self-Forcing .pt')
  parser.add_argument('--out', required=True, help='new params directory')
  parser.add_argument('--image_size', default='60,104',
                      help='latent frame size H,W (60,104 is 480x832 video through the Wan VAE)')
  parser.add_argument('--num_heads', type=int, default=0,
                      help='heads, for a .pt without a config (default dim // 128)')
  parser.add_argument('--stage', default='', choices=['', 'teacher', 'student'],
                      help="default: 'student' for a Self-Forcing .pt, else 'teacher'")
  args = parser.parse_args(argv)
  try:
    image_size = tuple(int(s) for s in args.image_size.split(','))
    if len(image_size) != 2:
      raise ValueError
  except ValueError:
    parser.error(f'--image_size must be H,W (two integers), got {args.image_size!r}')
  try:
    saved = import_weights(args.src, args.out, image_size, args.num_heads, args.stage)
  except (weight_files.WeightFileError, NotAWanCheckpoint, FileExistsError,
          FileNotFoundError) as e:
    raise SystemExit(f'error: {e}')
  m = saved['model']
  print(f'wrote {os.path.abspath(args.out)}: {saved["source"]["format"]} weights as the '
        f'{saved["stage"]}; dim {m["dim"]}, {m["num_layers"]} layers, {m["num_heads"]} heads, '
        f'{m["channels"]} channels, latent frames {tuple(m["image_size"])}')


if __name__ == '__main__':
  main()
