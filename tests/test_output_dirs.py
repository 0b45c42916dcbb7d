"""Output directories that cannot be written are refused before any work, by every entry point
(#18: a file as workdir, a path under a file, a directory without write permission)."""

import importlib
import os

import pytest

from configs.sweeps import budget as budget_config
from pafukv_jax import generation, output_dirs
from pafukv_jax.evaluation import sweep
from pafukv_jax.training import loop
from tests.helpers import override
from tests.test_generate import tiny_config


@pytest.fixture
def bad_dirs(tmp_path):
  (tmp_path / 'a_file').write_text('x')
  return {'is a file': tmp_path / 'a_file', 'which is a file': tmp_path / 'a_file' / 'run'}


def _entry_points(data_dir):
  teacher = importlib.import_module('configs.teacher').get_config('tiny')
  teacher.data.data_dir = str(data_dir)
  budget = override(budget_config.get_config('tiny'), **{'data.data_dir': str(data_dir)})
  return {'generate.py': lambda d: generation.generate(tiny_config(), d),
          'train.py': lambda d: loop.train(teacher, d),
          'evaluate.py': lambda d: sweep.Sweep(budget, d)}


def test_every_entry_point_refuses_an_unwritable_workdir_before_any_work(tmp_path, bad_dirs):
  data_dir = tmp_path / 'tfds'
  for name, run in _entry_points(data_dir).items():
    for message, path in bad_dirs.items():
      with pytest.raises(ValueError, match=f'--workdir={path}.*{message}'):
        run(str(path))
  assert not data_dir.exists()  # no dataset was prepared, no model built first
  assert (tmp_path / 'a_file').read_text() == 'x'


def test_a_directory_without_write_permission_is_refused(tmp_path):
  if os.geteuid() == 0:
    pytest.skip('root may write anywhere: the permission case cannot be made')
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o500)
  try:
    with pytest.raises(ValueError, match='nothing can be written in'):
      output_dirs.check_writable(str(locked / 'run'))
  finally:
    locked.chmod(0o700)


def test_writable_paths_pass_and_nothing_is_created(tmp_path):
  output_dirs.check_writable(str(tmp_path / 'new' / 'deeper'))
  output_dirs.check_writable(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == []


def test_tables_written_atomically_get_the_usual_file_mode(tmp_path):
  from pafukv_jax.evaluation import report
  mask = os.umask(0o022)
  try:
    report.atomic(str(tmp_path / 'results.csv'), lambda p: open(p, 'w').write('a\n'))
    assert (tmp_path / 'results.csv').stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
  finally:
    os.umask(mask)
  assert sorted(os.listdir(tmp_path)) == ['results.csv']  # no temporary left
