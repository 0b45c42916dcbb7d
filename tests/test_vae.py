"""The Wan2.1 VAE (pafukv_jax.vae) against fixtures that diffusers' AutoencoderKLWan wrote
(tools/make_vae_fixtures.py): whole and chunked passes, one compile for a chunked pass, the two
weight formats and their refusals."""

import json
import os
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pafukv_jax import checkpoints
from pafukv_jax.compile_counter import CompileCounter
from pafukv_jax.models import weight_files
from pafukv_jax.vae import codec, model, weights
from pafukv_jax.vae.config import NotAWanVae, VaeConfig, read_config

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'vae')
DIFFUSERS = os.path.join(FIXTURES, 'diffusers')
ORIGINAL = os.path.join(FIXTURES, 'wan2.1_vae.pth')
# The tiny random VAE amplifies float32 rounding along the video (2-channel RMS norms): diffusers'
# own float32 decode is 1e-4 from its float64 one at the last frame, where outputs reach 2.9. So
# errors are measured against the reference's largest magnitude (in float64 this port and
# diffusers agree to 1e-13).
RTOL = 1e-4


def close(got, want, rtol=RTOL):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  err = np.max(np.abs(got - want)) / max(1.0, np.max(np.abs(want)))
  assert err <= rtol, err


def channels_last(a):
  return np.moveaxis(a, 1, -1)  # diffusers' [B, C, T, H, W] -> [B, T, H, W, C]


@pytest.fixture(scope='module')
def io():
  with np.load(os.path.join(FIXTURES, 'io.npz')) as f:
    return {k: channels_last(f[k]) for k in f.files}


@pytest.fixture(scope='module')
def vae():
  return weights.load_vae(DIFFUSERS)


@pytest.fixture(scope='module')
def whole(vae, io):
  """The whole-video passes: moments of the video, decoding of its latents (unclipped)."""
  return dict(moments=codec.encode_moments(vae, jnp.asarray(io['video'])),
              decoded=codec.decode(vae, jnp.asarray(io['latents']), clip=False))


def test_whole_video_matches_diffusers(vae, io, whole):
  close(whole['moments'], io['moments'])
  mean = whole['moments'][..., :vae.cfg.z_dim]
  close(mean, io['latents'])
  close(codec.normalize(vae.cfg, mean), io['normalized'])
  close(codec.denormalize(vae.cfg, jnp.asarray(io['normalized'])), io['latents'])
  close(whole['decoded'], io['decoded_raw'])
  close(jnp.clip(whole['decoded'], -1, 1), io['decoded'])
  assert np.mean(np.abs(io['decoded_raw']) > 1) > 0.05  # the clamp matters in this fixture


def test_chunked_equals_whole(vae, io, whole):
  video = jnp.asarray(io['video'])
  close(codec.encode_moments(vae, video, chunked=True), whole['moments'])
  close(codec.encode(vae, video, chunked=True, normalized=True), io['normalized'])
  chunks = list(codec.decode_chunks(vae, jnp.asarray(io['latents']), clip=False))
  assert [c.shape[1] for c in chunks] == [1, 4, 4]  # frame 0, then 4 per latent frame
  close(jnp.concatenate(chunks, axis=1), whole['decoded'])
  close(codec.decode(vae, jnp.asarray(io['normalized']), chunked=True, normalized=True),
        io['decoded'])


def test_causal_a_first_frame_alone(vae, io):
  # latent 0 sees frame 0 only, frame 0 sees latent 0 only: the video's start alone gives them
  close(codec.encode_moments(vae, jnp.asarray(io['video'][:, :1])), io['moments'][:, :1])
  close(codec.decode(vae, jnp.asarray(io['latents'][:, :1]), clip=False),
        io['decoded_raw'][:, :1])
  close(codec.decode(vae, jnp.asarray(io['latents'][:, :2]), clip=False),
        io['decoded_raw'][:, :5])


def test_chunked_passes_compile_once_with_fixed_state_shapes(vae, io):
  # a shape no other test uses (batch 2, 5 latent frames), so the compiles counted are these
  graphdef, params = nnx.split(vae)
  z0 = jnp.asarray(io['latents'])
  other = jax.random.normal(jax.random.key(0), (1, 5, *z0.shape[2:]))
  z = jnp.concatenate([jnp.concatenate([z0, other[:, 3:]], 1), other], 0)
  spec = lambda state: jax.tree.map(lambda a: (a.shape, a.dtype), state)
  with CompileCounter(codec.decode_chunk_jit, codec.encode_chunk_jit) as compiles:
    videos = []
    for _ in range(2):  # a second video: no recompile
      state = codec.init_state(vae, 2, *z.shape[2:4], for_decode=True)
      first, frames = spec(state), []
      for i in range(z.shape[1]):
        state, out = codec.decode_chunk_jit(graphdef, params, state, z[:, i:i + 1], False)
        assert spec(state.caches) == first.caches and spec(state.first) == first.first
        frames.append(out[:, -1:] if i == 0 else out)
      videos.append(jnp.concatenate(frames, 1))
    video = codec.decode(vae, z, clip=False, chunked=False)  # whole: not counted
    encoded = codec.encode_moments(vae, videos[0][:, :9], chunked=True)
  assert compiles.by_name == {'decode_chunk': 1, 'encode_chunk': 1}
  assert videos[0].shape == (2, 17, 16, 24, 3)
  np.testing.assert_array_equal(videos[0], videos[1])
  close(videos[0], video)
  close(videos[0][:1, :9], io['decoded_raw'])  # sample 0 alone, in a batch of two
  assert encoded.shape == (2, 3, 2, 3, 2 * vae.cfg.z_dim)


def test_original_pth_gives_the_same_weights(vae):
  original = weights.read_original(ORIGINAL)
  assert all(a.dtype == np.float16 for a in original.values())  # the fixture's; any float reads
  cfg = weights.infer_config(original, vae.cfg.latents_mean, vae.cfg.latents_std)
  assert cfg == vae.cfg
  with pytest.raises(NotAWanVae, match='z_dim 4'):
    weights.load_vae(ORIGINAL)  # no statistics for 4 channels
  loaded = weights.load_vae(ORIGINAL, cfg)
  want = nnx.to_pure_dict(nnx.state(vae, nnx.Param))
  got = nnx.to_pure_dict(nnx.state(loaded, nnx.Param))
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_original_names_round_trip():
  for name in weight_files.read_weights(ORIGINAL):  # each maps to a weight of the model
    assert weights._param_path(weights.original_to_diffusers(name)) is not None, name
  assert weights.original_to_diffusers('decoder.upsamples.7.time_conv.weight') == \
      'decoder.up_blocks.1.upsamplers.0.time_conv.weight'
  assert weights.original_to_diffusers('decoder.upsamples.4.shortcut.bias') == \
      'decoder.up_blocks.1.resnets.0.conv_shortcut.bias'
  assert weights.original_to_diffusers('encoder.middle.1.to_qkv.weight') == \
      'encoder.mid_block.attentions.0.to_qkv.weight'


class Shape:
  """A weight of which only the shape is known (what infer_config and the checks read)."""

  def __init__(self, shape):
    self.shape = tuple(shape)


def test_full_size_wan21_names_and_shapes_map():
  with open(os.path.join(FIXTURES, 'wan2.1_shapes.json')) as f:
    shapes = json.load(f)
  original = {k: Shape(v) for k, v in shapes['original'].items()}
  cfg = weights.infer_config(original)  # Wan2.1's own statistics (16 channels)
  assert cfg == VaeConfig()  # diffusers' defaults are Wan2.1's VAE
  expected = checkpoints.flat_paths(nnx.to_pure_dict(nnx.state(model.abstract_vae(cfg),
                                                               nnx.Param)))
  assert sum(int(np.prod(a.shape)) for a in expected.values()) == 126_892_531  # diffusers' count
  mapped = {}
  for name, shape in shapes['original'].items():
    diffusers = weights.original_to_diffusers(name)
    assert shapes['diffusers'][diffusers] == shape, name
    layout = weights._to_layout(np.zeros(shape, np.float16), diffusers).shape
    mapped[weights._param_path(diffusers)] = layout
  assert mapped == {k: v.shape for k, v in expected.items()}


def write_safetensors(path, arrays):
  """A float32 safetensors file (the format, without the safetensors package)."""
  header, blobs, offset = {}, [], 0
  for name, array in arrays.items():
    data = np.ascontiguousarray(array, np.float32).tobytes()
    header[name] = dict(dtype='F32', shape=list(array.shape), data_offsets=[offset,
                                                                            offset + len(data)])
    blobs.append(data)
    offset += len(data)
  head = json.dumps(header).encode()
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(head)) + head + b''.join(blobs))


def test_mismatched_weights_are_refused_by_name(tmp_path):
  good = {k: np.asarray(v) for k, v in weight_files.read_weights(
      os.path.join(DIFFUSERS, 'diffusion_pytorch_model.safetensors')).items()}
  bad = dict(good)
  del bad['decoder.up_blocks.1.upsamplers.0.time_conv.bias']
  bad['encoder.conv_in.weight'] = good['encoder.conv_in.weight'][:, :2]
  bad['encoder.extra.weight'] = np.zeros(3)
  folder = tmp_path / 'bad'
  folder.mkdir()
  shutil.copy(os.path.join(DIFFUSERS, 'config.json'), folder)
  write_safetensors(folder / 'diffusion_pytorch_model.safetensors', bad)
  with pytest.raises(NotAWanVae, match='3 problems') as e:
    weights.load_vae(str(folder))
  for name in ('decoder.up_blocks.1.upsamplers.0.time_conv.bias: missing',
               'encoder.conv_in.weight: shape (2, 2, 3, 3, 3) where the model needs '
               '(2, 3, 3, 3, 3)',
               'encoder.extra.weight: not a weight'):
    assert name in str(e.value)
  # Wan2.1's names in the message for its file: a config of another width fits nothing
  wide = VaeConfig(**{**read_config(DIFFUSERS).__dict__, 'base_dim': 4})
  with pytest.raises(NotAWanVae, match=r'decoder\.conv1\.weight: shape \(8, 4, 3, 3, 3\) '
                     r'where the model needs \(16, 4, 3, 3, 3\)'):
    weights.load_vae(ORIGINAL, wide)


def test_configs_and_inputs_refused(vae):
  config = json.load(open(os.path.join(DIFFUSERS, 'config.json')))
  assert VaeConfig.from_diffusers(config) == read_config(DIFFUSERS)
  with pytest.raises(NotAWanVae, match=r"unknown .* \['clip_out'\]"):
    VaeConfig.from_diffusers({**config, 'clip_out': True})
  with pytest.raises(NotAWanVae, match='Wan2.2'):
    VaeConfig.from_diffusers({**config, 'is_residual': True})
  with pytest.raises(NotAWanVae, match="'AutoencoderKL'"):
    VaeConfig.from_diffusers({**config, '_class_name': 'AutoencoderKL'})
  with pytest.raises(ValueError, match=r'1 \+ 4k'):
    codec.encode(vae, jnp.zeros((1, 8, 16, 24, 3)))
  with pytest.raises(ValueError, match='multiples of 8'):
    codec.encode(vae, jnp.zeros((1, 5, 12, 24, 3)))
  with pytest.raises(ValueError, match=r'\[B, n >= 1, h, w, 4\]'):
    codec.decode(vae, jnp.zeros((1, 2, 2, 3, 16)), chunked=True)
