"""Wan2.1 / Self-Forcing weights in: the readers and the loader against fixtures that diffusers and
PyTorch wrote (tools/make_wan_fixtures.py), and the refusals."""

import json
import os
import pickle
import shutil
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pafukv_jax import checkpoints, rollout, sampling
from pafukv_jax.models import wan_import, weight_files
from pafukv_jax.models.dit import DiTConfig, init_model
from tests.helpers import make_rollout

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'wan')
SOURCES = dict(diffusers='diffusers', diffusers_sharded='diffusers_sharded', wan='original',
               self_forcing='self_forcing.pt')


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """Every fixture format imported once: {name: params directory}."""
  root = tmp_path_factory.mktemp('imported')
  out = {}
  for name, src in SOURCES.items():
    wan_import.main([f'--src={os.path.join(FIXTURES, src)}', f'--out={root / name}',
                     '--image_size=8,8', '--num_heads=2'])
    out[name] = str(root / name)
  return out


def load(directory):
  cfg = DiTConfig(**{**checkpoints.saved_config(directory)['model'], 'image_size': (8, 8)})
  return checkpoints.load_params(directory, init_model(cfg, seed=1))


def test_readers_match_what_torch_wrote():
  want = np.load(os.path.join(FIXTURES, 'reader.npz'))
  for path in ('reader.pt', 'reader.safetensors'):
    got = weight_files.read_weights(os.path.join(FIXTURES, path))
    assert sorted(got) == sorted(want.files)
    for name in want.files:  # bfloat16, a transposed (strided) tensor, a scalar, int64
      array = np.asarray(got[name])
      assert array.shape == want[name].shape == got[name].shape
      np.testing.assert_array_equal(array.astype(want[name].dtype), want[name])


def test_every_format_gives_the_same_parameters_and_config(imported):
  configs = {k: checkpoints.saved_config(v) for k, v in imported.items()}
  assert {c['stage'] for k, c in configs.items() if k != 'self_forcing'} == {'teacher'}
  assert configs['self_forcing']['stage'] == 'student'
  assert len({json.dumps(c['model'], sort_keys=True) for c in configs.values()}) == 1
  model = configs['diffusers']['model']
  assert (model['dim'], model['num_heads'], model['num_layers'], model['channels'],
          model['cond_dim'], model['num_classes'], model['num_cond_tokens']) == (
              24, 2, 2, 4, 16, 0, 512)
  params = {k: jax.tree.leaves(checkpoints.load_params(v, init_model(DiTConfig(
      **{**configs[k]['model'], 'image_size': (8, 8)}), seed=1))) for k, v in imported.items()}
  for name in ('diffusers_sharded', 'wan', 'self_forcing'):  # the EMA weights of the .pt
    for a, b in zip(params['diffusers'], params[name]):
      np.testing.assert_array_equal(a, b)


def test_imported_model_computes_what_diffusers_computes(imported):
  """Bidirectional with one t per sample and one per frame, and block-causal, to 1e-5 of the
  outputs' scale in float32 (diffusers' RoPE is float64)."""
  io = np.load(os.path.join(FIXTURES, 'io.npz'))
  model = load(imported['diffusers'])
  video = jnp.asarray(io['video'].transpose(0, 2, 3, 4, 1))  # [B, C, F, H, W] -> [B, F, H, W, C]
  b, f = video.shape[:2]
  forward = jax.jit(lambda t, mode: model(video, t, jnp.arange(f), jnp.asarray(io['text']),
                                          mode=mode, chunk_frames=int(io['chunk_frames']))[0],
                    static_argnums=1)
  cases = (('out_sample', np.broadcast_to(io['t_sample'][:, None], (b, f)), 'bidirectional'),
           ('out_frame', io['t_frame'], 'bidirectional'), ('out_causal', io['t_frame'], 'block_causal'))
  for name, t, mode in cases:
    got = np.asarray(forward(jnp.asarray(t / 1000.0), mode)).transpose(0, 4, 1, 2, 3)
    err = np.max(np.abs(got - io[name])) / np.max(np.abs(io[name]))
    assert err < 1e-5, (name, err)


def test_text_conditioned_full_rollout_equals_recompute(imported):
  model = load(imported['self_forcing'])
  rc = sampling.RolloutConfig(num_frames=3, chunk_frames=1, timesteps=(1000, 500))
  text = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32)
  inputs = rollout.inputs(sampling.sample_keys(0, [0, 1]), text)
  full = make_rollout(model, rc, 'full').generate(inputs).videos
  recompute = rollout.Rollout(model, rc, None).generate(inputs).videos
  np.testing.assert_allclose(full, recompute, atol=2e-5)
  # the precomputed cross-attention K/V give the same velocity as the embeddings
  x, t = jnp.zeros((2, 1, 8, 8, 4)), jnp.full((2, 1), 0.7)
  np.testing.assert_allclose(model(x, t, jnp.arange(1), model.cross_kv(jnp.asarray(text)))[0],
                             model(x, t, jnp.arange(1), jnp.asarray(text))[0], atol=1e-5)
  with pytest.raises(ValueError, match='num_classes=0'):
    model(x, t, jnp.arange(1), jnp.asarray([0, 1]))


def test_bad_sources_are_refused_before_anything_is_written(tmp_path, imported):
  run = lambda src, out=None: wan_import.import_weights(
      str(src), str(out or tmp_path / 'out'), (8, 8), 2)
  with pytest.raises(FileExistsError):
    run(os.path.join(FIXTURES, 'diffusers'), imported['wan'])
  with pytest.raises(FileNotFoundError, match='does not exist'):
    run(tmp_path / 'no_such_dir')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(wan_import.NotAWanCheckpoint, match='no config.json'):
    run(tmp_path / 'empty')
  other = tmp_path / 'other'
  shutil.copytree(os.path.join(FIXTURES, 'diffusers'), other)
  (other / 'config.json').write_text(json.dumps({'_class_name': 'UNet2DConditionModel'}))
  with pytest.raises(wan_import.NotAWanCheckpoint, match='UNet2DConditionModel'):
    run(other)
  truncated = tmp_path / 'truncated'
  shutil.copytree(os.path.join(FIXTURES, 'diffusers'), truncated)
  weights = truncated / 'diffusion_pytorch_model.safetensors'
  weights.write_bytes(weights.read_bytes()[:4])
  with pytest.raises(weight_files.WeightFileError, match='safetensors'):
    run(truncated)
  with pytest.raises(wan_import.NotAWanCheckpoint, match='no generator_ema or generator'):
    run(os.path.join(FIXTURES, 'reader.pt'))
  # a pickle that would run a command is refused, and the command does not run
  evil = tmp_path / 'evil.pt'
  marker = tmp_path / 'ran'
  with zipfile.ZipFile(evil, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps(_Evil(str(marker))))
  with pytest.raises(weight_files.WeightFileError, match='refused'):
    run(evil)
  assert not marker.exists()
  assert not (tmp_path / 'out').exists()


def test_unknown_missing_and_misshapen_weights_are_named():
  weights, config = wan_import.read_source(os.path.join(FIXTURES, 'original'), 'wan')
  cfg = DiTConfig(**wan_import.model_fields(weights, config, 'wan', (8, 8)))
  weights = dict(weights)
  del weights['blocks.1.self_attn.q.weight']
  weights['blocks.0.lora_A.weight'] = np.zeros((2, 2), np.float32)
  weights['head.head.bias'] = np.zeros(5, np.float32)
  with pytest.raises(wan_import.NotAWanCheckpoint) as e:
    wan_import.to_params(weights, cfg)
  message = str(e.value)
  assert '3 problems' in message and 'blocks.0.lora_A.weight' in message
  assert 'blocks/self_attn/q/kernel: missing for blocks [1]' in message
  assert 'head.head.bias: (5,) where the model has (16,)' in message


class _Evil:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return os.system, (f'touch {self.path}',)


def test_the_wan1_3b_preset_has_diffusers_parameter_count():
  from flax import nnx
  cfg = DiTConfig(**wan_import.WAN_PRESETS['wan1.3b'])
  assert cfg.tokens_per_frame == 1560
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: wan_import.VideoDiT(cfg, rngs=nnx.Rngs(0)))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert count == 1_418_996_800  # WanTransformer3DModel's, Wan2.1-T2V-1.3B config
