"""The one grammar of every config's arg (configs/common.py: parse_arg), in any order."""

import importlib

import pytest

from configs import common

MODULES = ('configs.teacher', 'configs.student', 'configs.salience', 'configs.generate',
           'configs.data', 'configs.sweeps.budget')


@pytest.mark.parametrize('arg, size, dataset', [
    ('', None, None), ('tiny', 'tiny', None), ('photo_pan', None, 'photo_pan'),
    ('small,photo_pan', 'small', 'photo_pan'), ('photo_pan,small', 'small', 'photo_pan'),
    (' base , tfds:moving_mnist ', 'base', 'tfds:moving_mnist'), ('folder,tiny', 'tiny', 'folder'),
])
def test_parse_arg(arg, size, dataset):
  assert common.parse_arg(arg) == common.ConfigArg(size, dataset)


@pytest.mark.parametrize('arg, match', [
    ('tiny,small', "At most one model size .*got tiny, small"),
    ('photo_pan,photopan', "At most one dataset name .*got photo_pan, photopan"),
])
def test_parse_arg_errors_name_the_tokens_and_the_choices(arg, match):
  with pytest.raises(ValueError, match=match) as e:
    common.parse_arg(arg)
  assert "['tiny', 'small', 'base']" in str(e.value)


@pytest.mark.parametrize('module', MODULES)
@pytest.mark.parametrize('a, b', [('tiny', 'tiny,'), ('small,photo_pan', 'photo_pan,small'),
                                  ('photo_pan', 'small,photo_pan')])
def test_order_does_not_matter(module, a, b):
  get = importlib.import_module(module).get_config
  assert get(a).to_dict() == get(b).to_dict()
  if 'photo_pan' in a:
    cfg = get(a)
    assert (cfg.dataset if module == 'configs.data' else cfg.data.dataset) == 'photo_pan'


def test_training_and_data_configs_take_the_dataset_with_any_size():
  from configs import data, teacher
  assert teacher.get_config('photo_pan,tiny').data.dataset == 'photo_pan'
  assert teacher.get_config('photo_pan,tiny').to_dict() == teacher.get_config('tiny,photo_pan').to_dict()
  assert data.get_config('small,photo_pan').to_dict() == data.get_config('base,photo_pan').to_dict()


@pytest.mark.parametrize('module', ['configs.generate', 'configs.sweeps.budget'])
def test_a_dataset_without_a_demo_model_is_refused(module):
  # a dataset there selects a demo model, which exists for size small only
  with pytest.raises(ValueError, match='goes with size small'):
    importlib.import_module(module).get_config('tiny,photo_pan')


@pytest.mark.parametrize('arg, demo', [('small', 'demo'), ('small,photo_pan', 'demo/photo_pan')])
def test_a_demo_config_draws_the_clips_its_student_was_trained_on(arg, demo):
  """The held-out clips of a demo's generation and sweep configs come from the data its student
  was trained with (its camera paths and revisit mask), read here from the shipped config.json."""
  import json
  import os
  from configs import generate
  from configs.sweeps import budget
  with open(os.path.join(generate.REPO, demo, 'student', 'config.json')) as f:
    trained = json.load(f)['data']
  for c in (generate.get_config(arg), budget.get_config(arg)):
    for field in generate.DEMO_DATA_FIELDS:
      if field in trained:
        assert c.data[field] == trained[field], field
  assert ('fov' in budget.get_config(arg).policies) == ('photo_pan' in arg)
