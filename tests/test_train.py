import glob
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from pafukv_jax import data, parallel
from pafukv_jax.training import loop, steps
from tests.helpers import override

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage_config(stage, data_dir, **overrides):
  cfg = importlib.import_module(f'configs.{stage}').get_config('tiny')
  cfg.data.data_dir = str(data_dir)
  return override(cfg, **overrides)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def _one_step(cfg, mesh):
  graphdef, state, shardings, tx = loop.build(cfg, mesh)
  with cfg.unlocked():
    cfg.data.batch_size = cfg.batch_size
  batch = data.make_pipeline(cfg.data, 'train', mesh=mesh, data_axes=parallel.BATCH_AXES).batch(0)
  step_fn = steps.make_train_step(graphdef, steps.stage_loss(cfg), tx, cfg.optimizer.ema_decay)
  step = jax.jit(step_fn, out_shardings=(shardings, None))
  with jax.set_mesh(mesh):  # as the loop runs it: activations constrained to the batch axes
    state, metrics = step(state, batch, jax.random.key(cfg.seed))
  return jax.device_get(state['params']), float(metrics['loss']), state


@pytest.mark.parametrize('stage', ['teacher', 'student'])
def test_one_step_on_8_devices_equals_one_device(stage, data_dir):
  cfg = stage_config(stage, data_dir)
  mesh8 = parallel.make_mesh(ml_collections.ConfigDict(dict(data=4, fsdp=2)))
  mesh1 = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1)), jax.devices()[:1])
  p8, loss8, state8 = _one_step(cfg, mesh8)
  p1, loss1, _ = _one_step(cfg, mesh1)
  # parameters really are split over fsdp on the 8-device mesh
  kernel = state8['params']['blocks']['self_attn']['q']['kernel']
  assert tuple(kernel.sharding.spec)[:2] == (None, 'fsdp')
  assert abs(loss8 - loss1) <= 1e-5 * abs(loss1)
  for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_loss_decreases_on_a_tiny_dataset(tmp_path, data_dir):
  cfg = stage_config('teacher', data_dir, total_steps=40, checkpoint_every=40, log_every=1,
                     **{'optimizer.learning_rate': 3e-3, 'optimizer.warmup_steps': 5})
  loop.train(cfg, str(tmp_path))
  losses = [json.loads(line)['loss'] for line in open(tmp_path / 'metrics.jsonl')]
  assert len(losses) == 40
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert last < 0.7 * first, (first, last)
  assert glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))


def _run_train(workdir, data_dir, *flags):
  return subprocess.Popen(
      [sys.executable, 'train.py', '--config=configs/teacher.py:tiny', f'--workdir={workdir}',
       f'--config.data.data_dir={data_dir}', '--config.total_steps=40',
       '--config.checkpoint_every=5', '--config.log_every=5', *flags],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final_params(workdir):
  cfg = stage_config('teacher', '/unused')
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1)), jax.devices()[:1])
  _, state, _, _ = loop.build(cfg, mesh)
  from pafukv_jax.checkpoints import TrainCheckpoints
  restored, meta = TrainCheckpoints(str(workdir)).restore(
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))
  assert meta['step'] == 40
  return jax.device_get(restored)


def test_sigkill_and_resume_equals_an_uninterrupted_run(tmp_path, data_dir):
  # the dataset is prepared once, so that the killed run is killed while training
  data.open_source(stage_config('teacher', data_dir).data, 'train')
  killed = _run_train(tmp_path / 'killed', data_dir)
  deadline = time.time() + 240
  while not os.path.isdir(tmp_path / 'killed' / 'checkpoints' / '5') and time.time() < deadline:
    time.sleep(0.02)
  killed.send_signal(signal.SIGKILL)
  out = killed.communicate()[0]
  assert killed.returncode == -signal.SIGKILL, out[-2000:]
  lines = open(tmp_path / 'killed' / 'metrics.jsonl').read().splitlines()
  assert json.loads(lines[-1])['step'] < 40  # it died before the end
  resumed = _run_train(tmp_path / 'killed', data_dir)
  out = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0 and 'Resumed' in out, out[-2000:]
  # the same run uninterrupted, in this process (the same 8 devices: XLA_FLAGS is inherited)
  loop.train(stage_config('teacher', data_dir, total_steps=40, checkpoint_every=5, log_every=5),
             str(tmp_path / 'straight'))
  a, b = _final_params(tmp_path / 'killed'), _final_params(tmp_path / 'straight')
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  # every step logged once: the rows the killed run wrote past its last checkpoint are dropped
  rows = lambda d: [json.loads(line) for line in open(tmp_path / d / 'metrics.jsonl')]
  assert [r['step'] for r in rows('killed')] == [r['step'] for r in rows('straight')] == list(
      range(5, 41, 5))
  np.testing.assert_allclose([r['loss'] for r in rows('killed')],
                             [r['loss'] for r in rows('straight')], rtol=1e-5)


def test_stop_at_step_then_resume_equals_an_uninterrupted_run(tmp_path, data_dir):
  from pafukv_jax.checkpoints import TrainCheckpoints
  stopped = stage_config('teacher', data_dir, total_steps=6, checkpoint_every=100, stop_at_step=4)
  loop.train(stopped, str(tmp_path / 'stopped'))
  assert TrainCheckpoints(str(tmp_path / 'stopped')).latest_step() == 4  # saved where it stopped
  loop.train(stage_config('teacher', data_dir, total_steps=6, checkpoint_every=100),
             str(tmp_path / 'stopped'))
  loop.train(stage_config('teacher', data_dir, total_steps=6, checkpoint_every=100),
             str(tmp_path / 'straight'))
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1)), jax.devices()[:1])
  _, state, _, _ = loop.build(stage_config('teacher', data_dir), mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  (a, meta_a), (b, meta_b) = [TrainCheckpoints(str(tmp_path / d)).restore(abstract)
                              for d in ('stopped', 'straight')]
  assert meta_a['step'] == meta_b['step'] == 6
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match='stop_at_step'):
    loop.check_config(stage_config('teacher', data_dir, stop_at_step=7), str(tmp_path / 'x'))


def test_sigterm_saves_and_exits(tmp_path, data_dir):
  data.open_source(stage_config('teacher', data_dir).data, 'train')
  # SIGTERM while checkpoints are being written: the step it stops at is saved all the same
  run = _run_train(tmp_path, data_dir, '--config.total_steps=100000', '--config.checkpoint_every=3',
                   '--config.log_every=1')
  deadline = time.time() + 240
  while not os.path.isdir(tmp_path / 'checkpoints' / '3') and time.time() < deadline:
    time.sleep(0.02)
  run.send_signal(signal.SIGTERM)
  out = run.communicate(timeout=120)[0]
  assert run.returncode == 0, out[-2000:]
  saved = sorted(int(p) for p in os.listdir(tmp_path / 'checkpoints') if p.isdigit())
  last_logged = json.loads(open(tmp_path / 'metrics.jsonl').read().splitlines()[-1])['step']
  assert saved[-1] == last_logged and 3 <= last_logged < 100000


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  cfg = stage_config('teacher', data_dir, total_steps=3)
  loop.train(cfg, str(tmp_path))
  bad = stage_config('teacher', data_dir, total_steps=6, **{'optimizer.learning_rate': float('nan')})
  with pytest.raises(FloatingPointError, match='last good checkpoint'):
    loop.train(bad, str(tmp_path))
  assert sorted(int(p) for p in os.listdir(tmp_path / 'checkpoints') if p.isdigit()) == [3]


def test_resuming_with_another_model_is_refused_with_a_command_that_resumes(tmp_path, data_dir):
  import shlex
  loop.train(stage_config('teacher', data_dir, total_steps=3), str(tmp_path))
  with pytest.raises(ValueError, match=r'holds a run with other model\.dim \(saved 32, now 48\)'
                     ) as refused:
    loop.train(stage_config('teacher', data_dir, **{'model.dim': 48, 'data.image_size': (8, 8)}),
               str(tmp_path))
  flags = re.search(r'rerun with its values \((.*?); the rest', str(refused.value)).group(1)
  assert "--config.data.image_size='(16, 16)'" in flags
  resumed = subprocess.run(
      [sys.executable, 'train.py', '--config=configs/teacher.py:tiny', f'--workdir={tmp_path}',
       f'--config.data.data_dir={data_dir}', '--config.total_steps=3', *shlex.split(flags)],
      cwd=REPO, capture_output=True, text=True)
  assert resumed.returncode == 0 and 'Resumed' in resumed.stdout, resumed.stderr[-2000:]


def test_how_to_run_the_model_may_change_on_resume(tmp_path, data_dir):
  saved = json.loads(stage_config('teacher', data_dir).to_json())
  json.dump(saved, open(tmp_path / 'config.json', 'w'))
  (tmp_path / 'checkpoints' / '5').mkdir(parents=True)
  loop.check_config(stage_config('teacher', data_dir, **{
      'model.attention_impl': 'masked', 'model.attention_query_chunk': 64,
      'model.scan_layers': False, 'model.cache_block_size': 8}), str(tmp_path))
  with pytest.raises(ValueError, match=r'model\.dtype \(saved'):  # this changes the training
    loop.check_config(stage_config('teacher', data_dir, **{'model.dtype': 'bfloat16'}),
                      str(tmp_path))


def test_a_run_saved_before_a_model_field_existed_resumes_at_its_default(tmp_path, data_dir):
  # config.json of a run from before frame_cond_scale existed: that run had the default, 1
  saved = json.loads(stage_config('teacher', data_dir).to_json())
  del saved['model']['frame_cond_scale']
  json.dump(saved, open(tmp_path / 'config.json', 'w'))
  (tmp_path / 'checkpoints' / '5').mkdir(parents=True)  # it saved a step: its config binds
  loop.check_config(stage_config('teacher', data_dir, **{'model.frame_cond_scale': 1.0}),
                    str(tmp_path))
  with pytest.raises(ValueError, match=r'model\.frame_cond_scale \(saved 1\.0, now 0\.5\)'):
    loop.check_config(stage_config('teacher', data_dir, **{'model.frame_cond_scale': 0.5}),
                      str(tmp_path))


def test_student_starts_from_the_teacher_and_generate_reads_a_workdir(tmp_path, data_dir):
  teacher = tmp_path / 'teacher'
  loop.train(stage_config('teacher', data_dir, total_steps=3), str(teacher))
  student = stage_config('student', data_dir, total_steps=3, init_from=str(teacher),
                         sample_every=3)
  loop.train(student, str(tmp_path / 'student'))
  assert len(glob.glob(str(tmp_path / 'student' / 'samples' / 'step_3' / '*.gif'))) == 2
  # the student's workdir holds its own checkpoints only: the teacher is read, never re-saved
  assert os.listdir(teacher / 'checkpoints') and sorted(os.listdir(tmp_path / 'student' / 'checkpoints')) == ['3']
  from configs import generate as generate_config
  from pafukv_jax import generation
  gen = generate_config.get_config('tiny')
  # the user's own tiny pipeline: the model fields come from the student's config.json
  # (frame_cond_dim=2 there, 0 in configs/generate.py:tiny), as generate.py takes them
  from pafukv_jax import checkpoints
  assert 'frame_cond_dim=2' in checkpoints.adopt_model_fields(gen, str(tmp_path / 'student'))
  assert gen.model.to_dict() == student.model.to_dict()
  gen.num_frames, gen.sampling.timesteps = 4, (1000, 500)
  gen.checkpoint = str(tmp_path / 'student')
  cond = np.zeros((2, 4, 2), np.float32)
  np.savez(tmp_path / 'cond.npz', frame_cond=cond)
  gen.context = str(tmp_path / 'cond.npz')
  metrics = generation.generate(gen, str(tmp_path / 'gen'))
  assert metrics['checkpoint'] == str(tmp_path / 'student')
  # restored from a training workdir, the weights sit where the rollout's state does: each jitted
  # function compiles once (it compiled the chunk step twice, at chunk 1 and 2)
  assert metrics['compiles_by_function'] == {'encode_condition': 1, 'chunk_step': 1}, \
      metrics['compiles_by_function']


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'configs', '*.py'))))
def test_every_config_loads_builds_and_runs_at_tiny_size(path, tmp_path, data_dir):
  name = os.path.basename(path)[:-3]
  if name in ('__init__', 'common'):
    return
  cfg = importlib.import_module(f'configs.{name}').get_config('tiny')
  if 'stage' in cfg:
    cfg.data.data_dir = str(data_dir)
    cfg.total_steps = 1
    if cfg.stage == 'salience':  # reads a teacher and a student: random weights will do
      from pafukv_jax import checkpoints
      from pafukv_jax.models.dit import DiTConfig, init_model
      checkpoints.save_params(str(tmp_path / 'dit'), init_model(DiTConfig.from_config(cfg.model)))
      cfg.teacher = cfg.student = str(tmp_path / 'dit')
    assert loop.train(cfg, str(tmp_path / 'run'))['step'] == 1
  elif name == 'generate':
    from pafukv_jax import generation
    cfg.num_frames, cfg.sampling.timesteps = 2, (1000,)
    assert generation.generate(cfg, str(tmp_path))['compiles'] == 2  # encode_condition, chunk_step
  elif name == 'data':
    cfg.data_dir = str(data_dir)
    assert data.open_source(cfg, 'train')[0]['video'].shape == (8, 16, 16, 3)
  else:
    pytest.fail(f'configs/{name}.py is not covered by this test')


def test_bf16_compute_keeps_float32_master_weights(data_dir):
  cfg = stage_config('student', data_dir, **{'model.dtype': 'bfloat16'})
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1)), jax.devices()[:1])
  params, loss, _ = _one_step(cfg, mesh)
  assert np.isfinite(loss)
  assert {str(p.dtype) for p in jax.tree.leaves(params)} == {'float32'}
  _, loss32, _ = _one_step(stage_config('student', data_dir), mesh)
  assert abs(loss - loss32) < 0.05 * abs(loss32) and loss != loss32  # bf16 really ran


def test_ema_warms_up_then_averages(data_dir):
  """After step t the EMA weight of the new parameters is 1 - min(decay, (1+t)/(10+t))."""
  cfg = stage_config('teacher', data_dir, **{'optimizer.ema_decay': 0.5})
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1)), jax.devices()[:1])
  graphdef, state, shardings, tx = loop.build(cfg, mesh)
  with cfg.unlocked():
    cfg.data.batch_size = cfg.batch_size
  batch = data.make_pipeline(cfg.data, 'train', mesh=mesh).batch(0)
  step = jax.jit(steps.make_train_step(graphdef, steps.stage_loss(cfg), tx,
                                       cfg.optimizer.ema_decay))
  ema = jax.device_get(state['params'])
  for t in range(3):
    state, _ = step(state, batch, jax.random.key(0))
    d = min(0.5, (1 + t) / (10 + t))
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, jax.device_get(state['params']))
    for a, b in zip(jax.tree.leaves(jax.device_get(state['ema'])), jax.tree.leaves(ema)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('stage', ['teacher', 'student', 'salience'])
def test_config_arg_picks_model_size_and_dataset(stage):
  from configs import common
  get = importlib.import_module(f'configs.{stage}').get_config
  assert get().to_dict() == get('small').to_dict()      # the default is the demo size
  base_pan = get('base,photo_pan')
  assert base_pan.model.dim == common.SIZES['base'][2]
  assert base_pan.model.num_layers == common.SIZES['base'][5]
  assert (base_pan.data.dataset, base_pan.data.num_frames) == ('photo_pan', 16)
  assert get('photo_pan,base').to_dict() == base_pan.to_dict()  # order does not matter
  tiny_pan = get('tiny,photo_pan')
  tiny = get('tiny')
  assert tiny_pan.data.dataset == 'photo_pan'
  assert tiny_pan.total_steps == tiny.total_steps and tiny_pan.model == tiny.model
  with pytest.raises(ValueError, match='At most one model size'):
    get('small,base')
  with pytest.raises(ValueError, match='At most one dataset'):
    get('photo_pan,occluded_objects')
