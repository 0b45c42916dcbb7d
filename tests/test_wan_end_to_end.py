"""A Self-Forcing checkpoint and a Wan2.1 teacher from files to videos and a salience head, through
the command lines a user runs: wan_import, generate.py with prompt embeddings, and the salience
stage on a folder of latent clips with their prompt embeddings. Tiny fixture models (4 latent
channels, 8x8 latents) stand in for the real ones."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from pafukv_jax import generation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures', 'wan')
TEXT_DIM, CHANNELS = 16, 4  # the fixture model's text_dim and latent channels


def _run(*args):
  out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, (args, out.stdout[-3000:], out.stderr[-3000:])
  return out


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  root = tmp_path_factory.mktemp('weights')
  for name, src in (('student', 'self_forcing.pt'), ('teacher', 'diffusers')):
    _run('-m', 'pafukv_jax.models.wan_import', f'--src={os.path.join(FIXTURES, src)}',
         f'--out={root / name}', '--image_size=8,8', '--num_heads=2')
  return root


def _generate(weights, workdir, prompts, policy='full'):
  out = _run('generate.py', '--config=configs/generate.py:tiny', f'--workdir={workdir}',
             f'--config.checkpoint={weights / "student"}', f'--config.prompts={prompts}',
             f'--config.policy={policy}', '--config.num_frames=4', '--config.num_samples=3',
             '--config.batch_size=3', '--config.cache.budget_frames=4')
  return out, np.load(workdir / 'samples.npz')['videos']


def test_self_forcing_checkpoint_generates_from_prompt_embeddings(weights, tmp_path):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / 'prompts.npz', prompt_embedding=rng.normal(size=(2, 5, TEXT_DIM)))
  out, full = _generate(weights, tmp_path / 'full', tmp_path / 'prompts.npz')
  # the model's fields come from the checkpoint's config.json, not from configs/generate.py:tiny
  assert 'model fields from' in out.stderr and 'channels=4' in out.stderr
  assert full.shape == (3, 4, 8, 8, CHANNELS) and np.isfinite(full).all()
  metrics = json.load(open(tmp_path / 'full' / 'metrics.json'))
  assert metrics['compiles_by_function'] == {'encode_condition': 1, 'chunk_step': 1}
  manifest = json.load(open(tmp_path / 'full' / 'manifest.json'))
  assert [m['prompt_row'] for m in manifest] == [0, 1, 0]
  # the same config in this process (the library behind generate.py): the full cache is the
  # exact reference, recompute, which reruns every chunk's whole context; and the prompt
  # reaches the model: another prompt, other videos from the same noise
  cfg = json.load(open(tmp_path / 'full' / 'config.json'))

  def again(name, **changes):
    generation.generate(ml_collections.ConfigDict({**cfg, **changes}), str(tmp_path / name))
    return np.load(tmp_path / name / 'samples.npz')['videos']

  np.testing.assert_allclose(again('recompute', policy='recompute'), full, atol=2e-4)
  np.savez(tmp_path / 'other.npz', prompt_embedding=rng.normal(size=(2, 5, TEXT_DIM)))
  assert np.abs(again('other', prompts=str(tmp_path / 'other.npz')) - full).mean() > 1e-3


def test_generate_refuses_a_prompt_model_without_prompts(weights, tmp_path):
  out = subprocess.run([sys.executable, 'generate.py', '--config=configs/generate.py:tiny',
                        f'--workdir={tmp_path / "w"}', f'--config.checkpoint={weights / "student"}'],
                       cwd=REPO, capture_output=True, text=True)
  assert out.returncode != 0 and '--config.prompts=FILE.npz' in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / 'w' / 'samples.npz').exists()


def _latent_clips(root, n, seed):
  """n clips of 4 latent frames, each with its own prompt embedding of 3 to 6 tokens."""
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True)
  for i in range(n):
    np.savez(root / f'clip_{i:02d}.npz', video=rng.normal(size=(4, 8, 8, CHANNELS)),
             prompt_embedding=rng.normal(size=(3 + i % 4, TEXT_DIM)))


def test_salience_stage_on_latents_with_prompt_embeddings(weights, tmp_path):
  _latent_clips(tmp_path / 'latents' / 'train', 8, 1)
  _latent_clips(tmp_path / 'latents' / 'test', 8, 2)
  _run('train.py', '--config=configs/salience.py:tiny', f'--workdir={tmp_path / "head"}',
       f'--config.teacher={weights / "teacher"}', f'--config.student={weights / "student"}',
       '--config.data.dataset=latents', f'--config.data.folder={tmp_path / "latents"}',
       '--config.data.image_size=(8, 8)', '--config.data.num_frames=4')
  rows = [json.loads(line) for line in open(tmp_path / 'head' / 'metrics.jsonl')]
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert losses and all(np.isfinite(losses))
  assert any(k.startswith('eval/') for r in rows for k in r)
  saved = json.load(open(tmp_path / 'head' / 'config.json'))
  assert saved['model']['channels'] == CHANNELS and saved['model']['num_classes'] == 0
