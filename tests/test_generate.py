import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import generate as generate_config
from pafukv_jax import checkpoints, generation
from pafukv_jax import context as context_lib
from pafukv_jax.models.dit import DiTConfig, init_model
from tests.helpers import override

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  cfg = generate_config.get_config('tiny')
  cfg.num_frames = 4
  cfg.sampling.timesteps = (1000, 500)
  return override(cfg, **overrides)


def test_outputs_and_metrics(tmp_path):
  cfg = tiny_config(num_samples=3, batch_size=2)
  metrics = generation.generate(cfg, str(tmp_path))
  videos = np.load(tmp_path / 'samples.npz')['videos']
  assert videos.shape == (3, 4, 16, 16, 3) and videos.dtype == np.float32
  assert videos.min() >= -1 and videos.max() <= 1
  gifs = sorted(os.listdir(tmp_path / 'videos'))
  assert gifs == ['sample_0000.gif', 'sample_0001.gif', 'sample_0002.gif']
  assert Image.open(tmp_path / 'videos' / gifs[0]).n_frames == 4
  manifest = json.loads((tmp_path / 'manifest.json').read_text())
  assert [m['video'] for m in manifest] == [f'videos/{g}' for g in gifs]
  labels = context_lib.sample_conditioning(cfg, DiTConfig.from_config(cfg.model))[0]
  assert [m['label'] for m in manifest] == labels.tolist() and manifest[2]['sample'] == 2
  on_disk = json.loads((tmp_path / 'metrics.json').read_text())
  assert on_disk == json.loads(json.dumps(metrics))
  for key in ('policy', 'budget_tokens', 'cache_bytes', 'tokens_per_frame', 'num_frames',
              'seconds_per_frame', 'compile_seconds', 'compiles'):
    assert key in on_disk
  assert on_disk['tokens_per_frame'] == 16 and on_disk['budget_tokens'] == 3 * 16
  # k + v of 2 layers x batch 2 x 48 slots x 32 channels in float32, plus frame and score
  assert on_disk['cache_bytes'] == 2 * (2 * 2 * 48 * 32 * 4) + 2 * (2 * 2 * 48 * 4)
  # each jitted function once: the prompt's cross-attention K/V, then the chunk step
  assert on_disk['compiles_by_function'] == {'encode_condition': 1, 'chunk_step': 1}
  assert on_disk['compiles'] == 2 and on_disk['seconds_per_frame'] > 0


def test_same_seed_same_videos(tmp_path):
  generation.generate(tiny_config(), str(tmp_path / 'a'))
  generation.generate(tiny_config(), str(tmp_path / 'b'))
  generation.generate(tiny_config(seed=1), str(tmp_path / 'c'))
  load = lambda d: np.load(tmp_path / d / 'samples.npz')['videos']
  np.testing.assert_array_equal(load('a'), load('b'))
  assert np.max(np.abs(load('a') - load('c'))) > 1e-2


def test_refuses_a_workdir_with_results_and_keeps_them(tmp_path):
  generation.generate(tiny_config(), str(tmp_path))
  before = (tmp_path / 'samples.npz').read_bytes()
  with pytest.raises(FileExistsError, match='--overwrite'):
    generation.generate(tiny_config(seed=5), str(tmp_path))
  with pytest.raises(ValueError, match='Unknown policy'):  # a failed overwrite keeps them too
    generation.generate(tiny_config(policy='lru'), str(tmp_path), overwrite=True)
  assert (tmp_path / 'samples.npz').read_bytes() == before
  generation.generate(tiny_config(seed=5), str(tmp_path), overwrite=True)
  assert (tmp_path / 'samples.npz').read_bytes() != before
  assert not [p for p in os.listdir(tmp_path) if p.startswith('.generate-')]


@pytest.mark.parametrize('overrides,error,match', [
    (dict(policy='lru'), ValueError, 'Unknown policy'),
    ({'cache.budget_frames': 1, 'chunk_frames': 2}, ValueError, 'smaller than one chunk'),
    ({'cache.budget_frames': 2, 'cache.sink_frames': 2}, ValueError, 'cannot hold'),
    (dict(num_frames=5, chunk_frames=2), ValueError, 'multiples of chunk_frames'),
    ({'model.image_size': (18, 18)}, ValueError, 'not divisible by model.patch_size'),
    (dict(checkpoint='/nonexistent/ckpt'), FileNotFoundError, 'does not exist'),
    (dict(context_frames=2), ValueError, 'config.context must name'),
    (dict(policy='pafu'), ValueError, 'needs --config.head.checkpoint'),
    (dict(policy='oracle'), ValueError, 'needs --config.oracle.teacher'),
    ({'policy': 'pafu', 'head.checkpoint': '/nonexistent/head'}, FileNotFoundError, 'does not exist'),
    ({'cache.granularity': 'patch'}, ValueError, 'cache.granularity'),
])
def test_bad_input_fails_before_any_output(tmp_path, overrides, error, match):
  workdir = tmp_path / 'out'
  with pytest.raises(error, match=match):
    generation.generate(tiny_config(**overrides), str(workdir))
  assert not workdir.exists()


def test_checkpoint_round_trip_and_shape_check(tmp_path):
  cfg = tiny_config()
  checkpoints.save_params(str(tmp_path / 'ckpt'), init_model(DiTConfig.from_config(cfg.model), 5))
  generation.generate(tiny_config(checkpoint=str(tmp_path / 'ckpt')), str(tmp_path / 'a'))
  generation.generate(tiny_config(init_seed=5), str(tmp_path / 'b'))
  load = lambda d: np.load(tmp_path / d / 'samples.npz')['videos']
  np.testing.assert_array_equal(load('a'), load('b'))
  with pytest.raises(ValueError, match=r'does not match the model config[\s\S]*checkpoint \(2, 32, 32\)'):
    generation.generate(tiny_config(checkpoint=str(tmp_path / 'ckpt'), **{'model.dim': 48}),
                        str(tmp_path / 'c'))
  assert not (tmp_path / 'c').exists()
  with pytest.raises(FileExistsError):
    checkpoints.save_params(str(tmp_path / 'ckpt'), init_model(DiTConfig.from_config(cfg.model)))


def test_checkpoint_of_another_model_config_is_refused(tmp_path):
  # frame_cond_scale and rope_theta change no shape: the run's config.json tells them apart
  import json
  cfg = tiny_config()
  checkpoints.save_params(str(tmp_path / 'ckpt'), init_model(DiTConfig.from_config(cfg.model)))
  saved = cfg.model.to_dict()
  del saved['frame_cond_scale']  # a config.json from before the field: it means the default, 1
  (tmp_path / 'ckpt' / 'config.json').write_text(json.dumps({'model': saved}))
  generation.generate(tiny_config(checkpoint=str(tmp_path / 'ckpt')), str(tmp_path / 'ok'))
  for field, value in (('frame_cond_scale', 0.5), ('rope_theta', 500.0)):
    with pytest.raises(ValueError, match=rf'another model config[\s\S]*model.{field}: checkpoint'):
      generation.generate(tiny_config(checkpoint=str(tmp_path / 'ckpt'), **{f'model.{field}': value}),
                          str(tmp_path / 'bad'))
  assert not (tmp_path / 'bad').exists()


def test_context_from_npz(tmp_path):
  ctx = np.random.default_rng(0).uniform(-1, 1, (2, 2, 16, 16, 3)).astype(np.float32)
  np.savez(tmp_path / 'ctx.npz', videos=ctx)
  generation.generate(tiny_config(context_frames=2, context=str(tmp_path / 'ctx.npz'),
                                  policy='full'), str(tmp_path / 'out'))
  videos = np.load(tmp_path / 'out' / 'samples.npz')['videos']
  np.testing.assert_allclose(videos[:, :2], ctx, atol=1e-6)


def test_context_from_a_dataset_split(tmp_path):
  from pafukv_jax import data
  cfg = tiny_config(context='test', context_frames=2, policy='full', num_samples=3,
                    **{'data.data_dir': str(tmp_path / 'tfds')})
  generation.generate(cfg, str(tmp_path / 'out'))
  clips = [data.open_source(cfg.data, 'test')[i] for i in range(3)]
  videos = np.load(tmp_path / 'out' / 'samples.npz')['videos']
  for video, clip in zip(videos, clips):  # the given frames are the clips' own, as [-1, 1] floats
    np.testing.assert_allclose(video[:2], clip['video'][:2] / 127.5 - 1.0, atol=1e-6)
  manifest = json.loads((tmp_path / 'out' / 'manifest.json').read_text())
  assert [m['label'] for m in manifest] == [int(c['label']) for c in clips]
  assert [m['context'] for m in manifest] == [0, 1, 2]
  # a frame-conditioned model takes the clips' camera motion: as if given in an .npz
  cond = np.stack([c['frame_cond'][:4] for c in clips]).astype(np.float32)
  np.savez(tmp_path / 'cond.npz', frame_cond=cond)
  for name, context in (('split', 'test'), ('npz', str(tmp_path / 'cond.npz'))):
    generation.generate(override(cfg, context=context, context_frames=0,
                                 **{'model.frame_cond_dim': 2, 'label': 1}), str(tmp_path / name))
  load = lambda d: np.load(tmp_path / d / 'samples.npz')['videos']
  np.testing.assert_array_equal(load('split'), load('npz'))
  # a video longer than the clips: only the context is read from them (and the still camera's
  # path, zeros, is extended); a moving camera's path is not known past the clip
  long = override(cfg, context='test', num_frames=12, context_frames=2,
                  **{'model.frame_cond_dim': 2})
  generation.generate(long, str(tmp_path / 'long'))
  videos = np.load(tmp_path / 'long' / 'samples.npz')['videos']
  assert videos.shape[1] == 12
  for video, clip in zip(videos, clips):
    np.testing.assert_allclose(video[:2], clip['video'][:2] / 127.5 - 1.0, atol=1e-6)
  with pytest.raises(ValueError, match=r'the camera moves in these clips.*data\.num_frames=12'):
    generation.generate(override(long, **{'data.dataset': 'photo_pan'}), str(tmp_path / 'pan'))
  with pytest.raises(ValueError, match=r'data\.num_frames=8 is shorter than context_frames=9'):
    generation.generate(override(long, context_frames=9), str(tmp_path / 'ctx'))


def test_context_from_a_folder_of_videos(tmp_path, capsys):
  # a folder dataset has no camera motion: a model without frame_cond continues its clips
  from PIL import Image as PILImage
  (tmp_path / 'videos' / 'test' / 'cats').mkdir(parents=True)
  frames = [PILImage.fromarray(np.full((16, 16), 30 * t, np.uint8)) for t in range(8)]
  frames[0].save(tmp_path / 'videos' / 'test' / 'cats' / 'a.gif', save_all=True,
                 append_images=frames[1:], duration=100, loop=0)
  cfg = tiny_config(context='test', context_frames=2, policy='full',
                    **{'data.dataset': 'folder', 'data.folder': str(tmp_path / 'videos')})
  generation.generate(cfg, str(tmp_path / 'out'))
  videos = np.load(tmp_path / 'out' / 'samples.npz')['videos']
  np.testing.assert_allclose(videos[:, :2].mean(axis=(2, 3, 4)),
                             [[-1.0, 30 / 127.5 - 1.0]] * 2, atol=0.02)  # both samples: clip 0
  assert 'has 1 clips for 2 samples: sample i continues clip i mod 1' in capsys.readouterr().err


def test_command_line(tmp_path):
  run = lambda *flags: subprocess.run(
      [sys.executable, 'generate.py', '--config=configs/generate.py:tiny', *flags],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  ok = run(f'--workdir={tmp_path}/ok', '--config.policy=window', '--config.num_frames=4',
           '--config.sampling.timesteps=(1000,500)')
  assert ok.returncode == 0, ok.stderr
  assert json.loads((tmp_path / 'ok' / 'metrics.json').read_text())['policy'] == 'window'
  # stderr is a pipe, not a terminal: progress comes as lines, with no bar's escape codes
  assert 'window: started at 0/' in ok.stderr and ', done' in ok.stderr and '\r' not in ok.stderr
  bad = run(f'--workdir={tmp_path}/bad', '--config.policy=lru')
  assert bad.returncode != 0 and "Unknown policy 'lru'" in bad.stderr
  assert 'Traceback' not in bad.stderr


def test_frame_conditioned_model_defaults_to_a_static_camera(tmp_path):
  metrics = generation.generate(tiny_config(**{'model.frame_cond_dim': 2}), str(tmp_path / 'a'))
  assert metrics['compiles'] == 2  # encode_condition and chunk_step, once each
  np.savez(tmp_path / 'cond.npz', frame_cond=np.zeros((1, 4, 2), np.float32))
  generation.generate(tiny_config(**{'model.frame_cond_dim': 2}, context=str(tmp_path / 'cond.npz')),
                      str(tmp_path / 'b'))
  load = lambda d: np.load(tmp_path / d / 'samples.npz')['videos']
  np.testing.assert_array_equal(load('a'), load('b'))


def test_pafu_and_oracle(tmp_path):
  """pafu reads a head checkpoint; oracle = the teacher's salience on the full rollout."""
  import jax.numpy as jnp
  from pafukv_jax import rollout, sampling
  from pafukv_jax.salience.head import init_head
  from pafukv_jax.salience.oracle import oracle_scores
  from tests.helpers import make_rollout
  cfg = tiny_config(num_frames=5)
  model_cfg = DiTConfig.from_config(cfg.model)
  checkpoints.save_params(str(tmp_path / 'head'), init_head(cfg.head, model_cfg, 3))
  checkpoints.save_params(str(tmp_path / 'teacher'), init_model(model_cfg, 7))
  metrics = generation.generate(tiny_config(num_frames=5, policy='pafu',
                                            **{'head.checkpoint': str(tmp_path / 'head')}),
                                str(tmp_path / 'pafu'))
  assert metrics['compiles'] == 2 and metrics['head_checkpoint'] == str(tmp_path / 'head')
  metrics = generation.generate(tiny_config(num_frames=5, policy='oracle',
                                            **{'oracle.teacher': str(tmp_path / 'teacher')}),
                                str(tmp_path / 'oracle'))
  assert metrics['compiles'] == 2  # the oracle's own; its reference rollout is not counted
  # by hand: the full rollout, the teacher's SSE on it, then the oracle rollout with those scores
  model, teacher = init_model(model_cfg, 0), init_model(model_cfg, 7)
  rc = generation.rollout_config(cfg)
  keys = sampling.sample_keys(0, [0, 1])
  labels = context_lib.sample_conditioning(cfg, model_cfg)[0][:2]
  full = make_rollout(model, rc, 'full').generate(rollout.inputs(keys, labels)).videos
  scores = oracle_scores(teacher, full, jnp.asarray(labels), chunk_frames=1)
  want = make_rollout(model, rc, 'oracle', cfg.cache).generate(
      rollout.inputs(keys, labels, token_scores=scores)).videos
  got = np.load(tmp_path / 'oracle' / 'samples.npz')['videos']
  np.testing.assert_allclose(got, np.clip(np.asarray(want), -1, 1), atol=1e-5)


@pytest.mark.parametrize('arg, dataset', [('small', 'occluded_objects'),
                                          ('small,photo_pan', 'photo_pan')])
def test_demo_configs_point_at_shipped_models_of_their_dataset(arg, dataset):
  from configs.sweeps import budget
  for cfg in (generate_config.get_config(arg), budget.get_config(arg)):
    for path in (cfg.checkpoint, cfg.head.checkpoint, cfg.oracle.teacher):
      with open(os.path.join(REPO, path, 'config.json')) as f:
        trained = json.load(f)
      assert trained['data']['dataset'] == dataset, path
      if trained['stage'] != 'salience':  # the head's config holds its own model fields
        checkpoints.check_model_config(os.path.join(REPO, path), DiTConfig.from_config(cfg.model))
  assert budget.get_config(arg).data.dataset == dataset
  with pytest.raises(ValueError, match='goes with size small'):
    generate_config.get_config('base,photo_pan')


def test_a_checkpoint_of_another_stage_is_refused_naming_what_it_is(tmp_path):
  """A teacher given as the student (its config.json says stage: teacher) is refused before any
  work; a head of the wrong shape blames head.*, not model.*."""
  from pafukv_jax.salience.head import init_head
  cfg = tiny_config()
  model_cfg = DiTConfig.from_config(cfg.model)
  teacher = tmp_path / 'teacher'
  checkpoints.save_params(str(teacher), init_model(model_cfg))
  (teacher / 'config.json').write_text(json.dumps(dict(stage='teacher', model=cfg.model.to_dict())))
  with pytest.raises(ValueError, match=r"checkpoint=.*teacher holds the bidirectional teacher .*"
                                       r"stage 'teacher'.*must be the causal student"):
    generation.generate(tiny_config(checkpoint=str(teacher)), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()
  head = tmp_path / 'head'
  checkpoints.save_params(str(head), init_head(override(cfg.head.copy_and_resolve_references(),
                                                        hidden_dim=5), model_cfg))
  with pytest.raises(ValueError, match=r'check the head\.\* '):
    generation.build_head(override(cfg.head.copy_and_resolve_references(), checkpoint=str(head)),
                          model_cfg)
