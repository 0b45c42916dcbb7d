"""Corrupted checkpoints (#18 item 6): a truncated array file or an emptied metadata file in the
newest step is named (step and file), and resuming falls back to the newest step that restores;
with none left the error says how to start afresh. Readers (generation) fall back too."""

import importlib
import logging
import os

import jax
import numpy as np
import pytest

from pafukv_jax import checkpoints
from pafukv_jax.models.dit import DiTConfig, init_model
from pafukv_jax.training import loop
from tests.helpers import override


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny teacher run with checkpoints at steps 3 and 6, and its config."""
  root = tmp_path_factory.mktemp('broken')
  cfg = importlib.import_module('configs.teacher').get_config('tiny')
  cfg = override(cfg, **{'data.data_dir': str(root / 'tfds'), 'total_steps': 6,
                         'checkpoint_every': 3})
  loop.train(cfg, str(root / 'run'))
  return root / 'run', cfg


def _copy(src, dst):
  import shutil
  shutil.copytree(src, dst)
  return dst


def _truncate_largest_array(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir / 'state') for f in fs
           if os.sep + 'd' + os.sep in os.path.join(d, f)]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(1000)


def test_resume_falls_back_to_the_newest_step_that_restores(trained, tmp_path, caplog):
  run, cfg = trained
  work = _copy(run, tmp_path / 'run')
  _truncate_largest_array(work / 'checkpoints' / '6')
  names = f'in OCDBT database at local file "{work}/checkpoints/6/state/"'
  with caplog.at_level(logging.WARNING):
    last = loop.train(override(cfg, total_steps=9), str(work))
  warned = '\n'.join(r.getMessage() for r in caplog.records)
  assert 'do not restore' in warned and 'step 6' in warned and names in warned, warned
  assert 'Resumed from step 3 instead' in warned
  assert last['step'] == 9 and os.listdir(work / 'broken_checkpoints')  # set aside, not deleted
  assert sorted(os.listdir(work / 'checkpoints')) == ['3', '6', '9']  # 6 made anew


def test_no_step_that_restores_says_how_to_start_afresh(trained, tmp_path):
  run, cfg = trained
  work = _copy(run, tmp_path / 'run')
  for step in ('3', '6'):
    (work / 'checkpoints' / step / 'meta' / 'metadata').write_text('')
  with pytest.raises(ValueError, match=r'No step restores\. To start afresh, move them aside: mv '):
    loop.train(override(cfg, total_steps=9), str(work))


def test_a_reader_falls_back_without_moving_anything(trained, tmp_path, caplog):
  run, cfg = trained
  work = _copy(run, tmp_path / 'run')
  (work / 'checkpoints' / '6' / 'state' / '_METADATA').write_text('')  # emptied: no file named
  model = init_model(DiTConfig.from_config(cfg.model))                 # in the JSON error
  with caplog.at_level(logging.WARNING):
    checkpoints.load_params(str(work), model)
  warned = '\n'.join(r.getMessage() for r in caplog.records)
  assert f'step 6 ({work}/checkpoints/6/state/_METADATA): JSONDecodeError' in warned, warned
  assert 'Read step 3.' in warned
  assert sorted(os.listdir(work / 'checkpoints')) == ['3', '6']
  # the values are step 3's: what a workdir holding only step 3 gives
  import shutil
  shutil.rmtree(work / 'checkpoints' / '6')
  want = checkpoints.load_params(str(work), init_model(DiTConfig.from_config(cfg.model)))
  for a, b in zip(jax.tree.leaves(nnx_params(model)), jax.tree.leaves(nnx_params(want))):
    np.testing.assert_array_equal(a, b)
  fresh = jax.tree.leaves(nnx_params(init_model(DiTConfig.from_config(cfg.model))))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx_params(model)), fresh))


def nnx_params(model):
  from flax import nnx
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))
