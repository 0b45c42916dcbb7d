"""A folder of the user's videos end to end (#18 item 5): the model's frame_cond follows the
dataset, generation continues folder clips with any student, and a run that failed before its
first checkpoint does not lock its workdir against the corrected run."""

import importlib

import numpy as np
import pytest
from PIL import Image

from pafukv_jax import checkpoints, generation
from pafukv_jax.training import loop
from tests.helpers import override
from tests.test_generate import tiny_config


@pytest.fixture(scope='module')
def videos(tmp_path_factory):
  root = tmp_path_factory.mktemp('videos')
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for i in range(2):
      frames = [Image.fromarray(f) for f in rng.integers(0, 255, (8, 16, 16, 3), np.uint8)]
      (root / split).mkdir(exist_ok=True)
      frames[0].save(root / split / f'v{i}.gif', save_all=True, append_images=frames[1:],
                     duration=100, loop=0)
  return root


def _teacher(videos, **overrides):
  cfg = importlib.import_module('configs.teacher').get_config('tiny')
  return override(cfg, **{'data.dataset': 'folder', 'data.folder': str(videos),
                          'total_steps': 2, 'batch_size': 8, **overrides})


def test_a_teacher_trains_on_a_folder_and_a_student_continues_its_clips(videos, tmp_path, capsys):
  """Also: the first attempt fails before its first checkpoint (a bad learning rate), and the
  corrected run, with another model, is not bound by the config.json it left."""
  work = tmp_path / 'teacher'
  with pytest.raises(FloatingPointError):  # non-finite at the first log, nothing saved
    loop.train(_teacher(videos, **{'optimizer.learning_rate': float('nan')}), str(work))
  assert (work / 'config.json').exists() and not (work / 'checkpoints').exists()
  cfg = _teacher(videos, **{'model.dim': 48})
  assert cfg.model.frame_cond_dim == 2  # the config's default, for the procedural datasets
  loop.train(cfg, str(work))
  assert 'model.frame_cond_dim=0, as data.dataset=\'folder\' gives' in capsys.readouterr().err
  saved = checkpoints.saved_config(str(work))
  assert saved['model']['frame_cond_dim'] == 0 and saved['model']['dim'] == 48
  assert np.isfinite(saved['optimizer']['learning_rate'])
  with pytest.raises(ValueError, match='holds a run with other model.dim'):  # now it is bound
    loop.train(_teacher(videos), str(work))
  # a student with frame_cond (trained on photo_pan, say) continues folder clips, camera still
  gen = tiny_config(context='test', context_frames=2, policy='full',
                    **{'data.dataset': 'folder', 'data.folder': str(videos),
                       'model.frame_cond_dim': 2})
  generation.generate(gen, str(tmp_path / 'gen'))
  out = np.load(tmp_path / 'gen' / 'samples.npz')['videos']
  from pafukv_jax import data
  first = data.first_clips(gen.data, 'test', 2)['video']
  np.testing.assert_allclose(out[:, :2], first[:, :2], atol=1e-6)
