"""The sweep: its scores against NumPy, its resumption, its report, and its early errors."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs.sweeps import budget as budget_config
from pafukv_jax.evaluation import sweep
from tests.helpers import override

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_config(data_dir, **overrides):
  cfg = budget_config.get_config('tiny')
  cfg.data.data_dir = str(data_dir)
  cfg.policies = ('full', 'window', 'h2o')
  cfg.paired_references = ('window',)
  cfg.sampling.timesteps = (1000,)
  cfg.batch_size = 4  # the 4 clips in one batch
  cfg.budgets = (2, 8)  # 8 = the whole video: window must then equal full
  return override(cfg, **overrides)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def test_one_sweep_scores_reports_and_resumes(tmp_path, data_dir):
  # one test, so that pytest-xdist's two workers do not each run the sweep
  workdir = tmp_path / 'sweep'
  rows = sweep.Sweep(sweep_config(data_dir), str(workdir)).run()
  _check_scores_match_numpy_on_the_saved_videos(workdir, rows, data_dir)
  _check_report(workdir, rows)
  _check_resumes_only_the_missing_runs(workdir, rows, data_dir)  # last: it re-runs h2o


def _check_scores_match_numpy_on_the_saved_videos(workdir, rows, data_dir):
  cfg = sweep_config(data_dir)
  clips = sweep.load_clips(cfg)
  c = cfg.context_frames
  full = np.load(workdir / 'runs' / 'full_s0.npz')['videos']
  window = np.load(workdir / 'runs' / 'window_b2_s0.npz')['videos']
  np.testing.assert_array_equal(window[:, :c], clips['video'][:, :c])  # the context is given
  gen, gt, mask = window[:, c:], clips['video'][:, c:], clips['revisit_mask'][:, c:]
  err = (gen.astype(np.float64) - gt) ** 2
  # memory score: one MSE over each clip's revisited pixels (all channels), in [0, 1] units
  pooled = [10 * np.log10(1 / (e[m].mean() / 4)) for e, m in zip(err, mask) if m.any()]
  psnr_gt = 10 * np.log10(1 / (err.mean(axis=(2, 3, 4)) / 4))
  row = next(r for r in rows if r['policy'] == 'window' and r['budget_frames'] == 2)
  assert pooled, 'the tiny clips should contain revisited content'
  np.testing.assert_allclose(row['memory_psnr'], np.mean(pooled), rtol=1e-4)
  np.testing.assert_allclose(row['psnr_gt'], np.mean(psnr_gt), rtol=1e-4)
  # a window as long as the video keeps everything: it is `full`, frame for frame
  np.testing.assert_allclose(np.load(workdir / 'runs' / 'window_b8_s0.npz')['videos'], full,
                             atol=1e-5)
  assert next(r for r in rows if r['policy'] == 'window' and r['budget_frames'] == 8)[
      'ssim_full'] > 0.999


def test_a_teacher_forced_sweep_scores_the_predictions_from_the_true_frames(tmp_path, data_dir):
  """mode='teacher_forced': every run's videos are the context and then each chunk predicted
  over a cache of the true frames (what teacher_forced.predict gives, tested against the model
  run on those frames); the scores, the whole-video window == full and the report as in a
  rollout sweep."""
  import jax.numpy as jnp
  from pafukv_jax import rollout, sampling
  from pafukv_jax.evaluation import teacher_forced
  from pafukv_jax.models.dit import DiTConfig, init_model
  from tests.helpers import make_rollout
  workdir = tmp_path / 'tf'
  cfg = sweep_config(data_dir, mode='teacher_forced', noise_level=0.5, policies=('full', 'window'))
  rows = sweep.Sweep(cfg, str(workdir)).run()
  _check_scores_match_numpy_on_the_saved_videos(workdir, rows, data_dir)
  clips = sweep.load_clips(cfg)
  model = init_model(DiTConfig.from_config(cfg.model), cfg.init_seed)
  want = teacher_forced.predict(
      make_rollout(model, sweep.generation.rollout_config(cfg), 'full', cfg.cache),
      rollout.inputs(sampling.sample_keys(0, np.arange(4)), clips['label']),
      jnp.asarray(clips['video']), 0.5).videos
  full = np.load(workdir / 'runs' / 'full_s0.npz')['videos']
  np.testing.assert_allclose(full, np.clip(np.asarray(want), -1, 1), atol=1e-5)
  assert json.loads((workdir / 'runs' / 'full_s0.json').read_text())['run_key']['mode'] == dict(
      name='teacher_forced', noise_level=0.5)
  assert (workdir / 'plots' / 'memory_psnr_vs_budget.png').exists()


def _check_report(workdir, rows):
  with open(workdir / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert [(r['policy'], r['budget_frames']) for r in table] == [
      ('full', ''), ('window', '2'), ('window', '8'), ('h2o', '2'), ('h2o', '8')]
  assert json.loads((workdir / 'results.json').read_text()) == rows
  full = rows[0]
  assert full['psnr_full'] is None and full['cache_bytes_per_sample'] > rows[1]['cache_bytes_per_sample']
  for name in ('memory_psnr_vs_budget', 'memory_psnr_vs_ms_per_frame', 'psnr_gt_per_frame'):
    image = np.asarray(Image.open(workdir / 'plots' / f'{name}.png').convert('L'))
    assert image.std() > 0
  # paired.csv: h2o minus window, clip by clip, at the same budget
  with open(workdir / 'paired.csv') as f:
    paired = {(r['policy'], r['budget_frames']): r for r in csv.DictReader(f)}
  runs = {name: json.loads((workdir / 'runs' / f'{name}_b2_s0.json').read_text())
          for name in ('h2o', 'window')}
  diffs = [a - b for a, b in zip(runs['h2o']['memory_psnr'], runs['window']['memory_psnr'])
           if a is not None and b is not None]
  np.testing.assert_allclose(float(paired[('h2o', '2')]['memory_gain_db']), np.mean(diffs),
                             rtol=1e-6, atol=1e-9)
  assert int(paired[('h2o', '2')]['clips']) == len(diffs) and ('window', '2') not in paired
  gif = Image.open(workdir / 'videos' / 'side_by_side_00.gif')
  assert gif.n_frames == 8 and gif.size[0] > 3 * 16 * 2  # three labelled panels, upscaled x2


def _check_resumes_only_the_missing_runs(workdir, rows, data_dir):
  runs = workdir / 'runs'
  kept = os.path.getmtime(runs / 'window_b2_s0.npz')
  os.remove(runs / 'h2o_b2_s0.json')
  again = sweep.Sweep(sweep_config(data_dir), str(workdir)).run()
  assert os.path.getmtime(runs / 'window_b2_s0.npz') == kept
  assert (runs / 'h2o_b2_s0.json').exists()
  for a, b in zip(again, rows):  # the re-run h2o scores the same; timings may differ
    assert {k: v for k, v in a.items() if 'second' not in k} == \
        {k: v for k, v in b.items() if 'second' not in k}


def test_policy_variants_run_with_their_own_granularity(data_dir, tmp_path):
  # budget 4 of 8 frames: with 1 sink frame, 2 would leave no choice to make
  common = dict(budgets=(4,), compare_budget=4, paired_references=())
  variants = sweep.Sweep(sweep_config(data_dir, policies=('full', 'window', 'window@frame', 'random',
                                                          'random@frame'), **common),
                         str(tmp_path / 'variants')).run()
  whole = sweep.Sweep(sweep_config(data_dir, policies=('full', 'random'), side_by_side=('full',),
                                   **common, **{'cache.granularity': 'frame'}),
                      str(tmp_path / 'frame')).run()
  videos = lambda d, name: np.load(tmp_path / d / 'runs' / f'{name}_b4_s0.npz')['videos']
  # random@frame is random in a sweep whose cache config says frame, not token-level random
  np.testing.assert_array_equal(videos('variants', 'random@frame'), videos('frame', 'random'))
  assert np.abs(videos('variants', 'random@frame') - videos('variants', 'random')).max() > 1e-3
  # window keeps whole frames anyway (recency is constant within a chunk of one frame)
  np.testing.assert_array_equal(videos('variants', 'window@frame'), videos('variants', 'window'))
  assert [r['policy'] for r in variants] == ['full', 'window', 'window@frame', 'random',
                                               'random@frame']
  assert {r['policy'] for r in whole} == {'full', 'random'}


@pytest.mark.parametrize('overrides, match', [
    (dict(policies=('full', 'lru')), 'Unknown policies'),
    (dict(policies=('full', 'window@pixel')), 'policy variant'),
    (dict(policies=('full', 'full@frame')), 'policy variant'),
    (dict(policies=('window',)), "must include 'full'"),
    (dict(compare_budget=3), 'compare_budget'),
    (dict(policies=('full', 'window', 'pafu')), 'head.checkpoint'),
    (dict(budgets=(0, 2)), 'smaller than one chunk'),
    (dict(budgets=('3,x',)), r"budgets must be whole numbers of frames.*'x' is not"),  # 3,x
    (dict(budgets=('',)), 'budgets is empty'),  # --config.budgets=
    (dict(context_frames=0), 'context_frames'),
    (dict(paired_references=('sink_window',)), 'paired_references'),
    (dict(mode='teacher'), 'mode must be one of'),
    (dict(mode='teacher_forced', noise_level=0.0), r'noise_level must be in \(0, 1\]'),
])
def test_bad_config_fails_before_any_work(data_dir, tmp_path, overrides, match):
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    sweep.Sweep(sweep_config(data_dir, **overrides), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def test_split_name_lists():
  cfg = budget_config.get_config('tiny')
  cfg.policies = ('full,window', ' h2o ')   # what --config.policies=full,window,... gives
  cfg.side_by_side = ('ground_truth,full',)
  sweep.split_name_lists(cfg)
  assert cfg.policies == ('full', 'window', 'h2o')
  assert cfg.side_by_side == ('ground_truth', 'full')
  # 'auto' (the default) keeps the listed references that the sweep runs, in their order
  assert cfg.paired_references == ('window', 'h2o')


def test_auto_names_follow_the_policies():
  cfg = budget_config.get_config('small')
  cfg.policies = ('full,window',)
  sweep.split_name_lists(cfg)
  assert cfg.side_by_side == ('ground_truth', 'full', 'window')
  assert cfg.paired_references == ('window',)
  cfg = sweep.split_name_lists(budget_config.get_config('small'))  # every policy: all named
  assert cfg.side_by_side == sweep.AUTO_NAMES['side_by_side']
  assert cfg.paired_references == sweep.AUTO_NAMES['paired_references']


def test_command_line_error(tmp_path):
  # a comma-separated list on the command line is split: the error is the missing 'full'
  out = subprocess.run([sys.executable, 'evaluate.py', '--config=configs/sweeps/budget.py:tiny',
                        f'--workdir={tmp_path}', '--config.policies=window,sink_window'],
                       cwd=REPO, capture_output=True, text=True)
  assert out.returncode != 0 and "evaluate.py: error: policies must include 'full'" in out.stderr


def test_oracle_scores_the_sweeps_own_full_rollout(data_dir, tmp_path):
  import jax.numpy as jnp
  from pafukv_jax import checkpoints, rollout, sampling
  from pafukv_jax.models.dit import DiTConfig, init_model
  from pafukv_jax.salience.oracle import oracle_scores
  from tests.helpers import make_rollout
  cfg = sweep_config(data_dir, policies=('full', 'oracle'), budgets=(2,), paired_references=(),
                     side_by_side=('ground_truth', 'full'), num_videos=0)
  model_cfg = DiTConfig.from_config(cfg.model)
  checkpoints.save_params(str(tmp_path / 'teacher'), init_model(model_cfg, 7))
  cfg.oracle.teacher = str(tmp_path / 'teacher')
  sweep.Sweep(cfg, str(tmp_path / 'sweep')).run()
  # by hand: the teacher's salience on the saved full videos, then the oracle rollout
  full = np.load(tmp_path / 'sweep' / 'runs' / 'full_s0.npz')['videos']
  clips = sweep.load_clips(cfg)
  label = jnp.asarray(clips['label'], jnp.int32)
  cond = jnp.asarray(clips['frame_cond'], jnp.float32) if model_cfg.frame_cond_dim else None
  scores = oracle_scores(init_model(model_cfg, 7), jnp.asarray(full), label, cond,
                         chunk_frames=1)
  want = make_rollout(init_model(model_cfg, cfg.init_seed), sweep.generation.rollout_config(cfg),
                      'oracle', override(cfg.cache.copy_and_resolve_references(),
                                         budget_frames=2)).generate(
      rollout.inputs(sampling.sample_keys(0, np.arange(4)), label, cond, token_scores=scores),
      jnp.asarray(clips['video'][:, :2])).videos
  got = np.load(tmp_path / 'sweep' / 'runs' / 'oracle_b2_s0.npz')['videos']
  np.testing.assert_allclose(got, np.clip(np.asarray(want), -1, 1), atol=1e-5)


def test_a_rerun_with_other_settings_is_refused_naming_what_changed(data_dir, tmp_path):
  """Runs on disk are keyed by what decides their result: another num_clips, or other weights,
  must not be reported as the new config's numbers (nor overwrite config.json); another budget
  or seed only adds runs."""
  workdir = tmp_path / 'sweep'
  small = dict(policies=('full', 'window'), paired_references=(), budgets=(2,),
               side_by_side=('ground_truth', 'full'), num_videos=0)
  sweep.Sweep(sweep_config(data_dir, **small), str(workdir)).run()
  saved_config = (workdir / 'config.json').read_text()
  for change, message in [(dict(num_clips=2), 'num_clips (saved 4, now 2)'),
                          (dict(init_seed=1), 'init_seed (saved 0, now 1)'),
                          ({'sampling.shift': 3.0}, 'rollout.shift (saved 5.0, now 3.0)'),
                          (dict(mode='teacher_forced'), "mode.name (saved None, now 'teacher_")]:
    with pytest.raises(ValueError, match=re.escape(message)) as e:
      sweep.Sweep(sweep_config(data_dir, **small, **change), str(workdir)).run()
    assert 'full_s0.json' in str(e.value) and 'new --workdir' in str(e.value)
    assert (workdir / 'config.json').read_text() == saved_config
  kept = os.path.getmtime(workdir / 'runs' / 'window_b2_s0.npz')
  rows = sweep.Sweep(sweep_config(data_dir, **{**small, 'budgets': (2, 4)}), str(workdir)).run()
  assert os.path.getmtime(workdir / 'runs' / 'window_b2_s0.npz') == kept  # reused, not rerun
  assert [r['budget_frames'] for r in rows] == [None, 2, 4]
