"""A folder of videos through the Wan2.1 VAE end to end (#17 items 3 and 4): encoded once into a
latent folder (vae.prepare), a teacher, student and salience head trained on it, a rollout decoded
to MP4, and a sweep scored in pixel space; prepare's resuming and refusals, and a VAE of the wrong
z_dim refused. The tiny fixture VAE (4 latent channels, 8x spatial, 4x temporal) stands in."""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pafukv_jax import checkpoints, generation
from pafukv_jax.data import folder as folder_lib
from pafukv_jax.data import pipeline
from pafukv_jax.evaluation import sweep, video_metrics
from pafukv_jax.training import loop
from pafukv_jax.vae import codec, pixels, prepare, weights
from tests.helpers import override
from tests.test_generate import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE = os.path.join(REPO, 'tests', 'fixtures', 'vae', 'diffusers')
Z_DIM, SIZE, FRAMES = 4, 32, 14  # 14 frames: 13 = 1 + 4 * 3 are encoded, 4 latent frames
LATENT = dict(**{'data.dataset': 'latents', 'data.image_size': (4, 4), 'data.num_frames': 4,
                 'model.image_size': (4, 4), 'model.channels': Z_DIM, 'model.patch_size': 2})


def write_gif(path, frames):
  path.parent.mkdir(parents=True, exist_ok=True)
  images = [Image.fromarray(f) for f in frames]
  images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)


def smooth_videos(root, names, frames=FRAMES, size=(SIZE, SIZE), seed=0):
  """Moving colour gradients (not noise: the GIF palette keeps them close to what was drawn)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:size[0], :size[1]] / max(size)
  for name in names:
    phase = rng.uniform(0, 6, 3)
    video = np.stack([np.stack([np.sin(4 * x + 3 * y * c + phase[c] + 0.3 * t) for c in range(3)],
                               -1) for t in range(frames)])
    write_gif(root / name, np.round((video + 1) * 127.5).astype(np.uint8))
  return root


@pytest.fixture(scope='module')
def latent_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('pipeline')
  videos = smooth_videos(root / 'videos', ['train/a.gif', 'train/b.gif', 'train/c.gif',
                                           'train/d.gif', 'test/e.gif', 'test/f.gif'])
  done = prepare.prepare(prepare.PrepareConfig(VAE, str(videos), str(root / 'latents')))
  assert done == dict(written=6, skipped=0, files=6, z_dim=Z_DIM, latent_size=(4, 4),
                      latent_frames=4, prompts=False)
  return videos, root / 'latents'


def test_prepare_writes_the_latent_format(latent_folder):
  videos, out = latent_folder
  assert sorted(p.relative_to(out).as_posix() for p in out.rglob('*.npz')) == [
      'test/e.npz', 'test/f.npz', 'train/a.npz', 'train/b.npz', 'train/c.npz', 'train/d.npz']
  with np.load(out / 'train' / 'b.npz') as f:
    assert sorted(f.files) == ['label', 'video'] and int(f['label']) == 0
    got = f['video']
  # the latents are the normalised posterior mean of the frames as dataset='folder' reads them
  frames = pipeline.uint8_to_float(folder_lib.read_video(videos / 'train' / 'b.gif', (32, 32)))
  assert len(frames) == FRAMES
  want = codec.encode(weights.load_vae(VAE), frames[None, :13], normalized=True)[0]
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert got.shape == (4, 4, 4, Z_DIM) and got.dtype == np.float32


def _stage(stage, folder, **overrides):
  cfg = importlib.import_module(f'configs.{stage}').get_config('tiny')
  return override(cfg, **{**LATENT, 'data.folder': str(folder), 'total_steps': 2,
                          'checkpoint_every': 2, **overrides})


def test_train_generate_to_mp4_and_sweep_in_pixels(latent_folder, tmp_path):
  import imageio.v3 as iio
  _, folder = latent_folder
  teacher, student, head = (str(tmp_path / n) for n in ('teacher', 'student', 'head'))
  loop.train(_stage('teacher', folder), teacher)
  loop.train(_stage('student', folder, init_from=teacher), student)
  loop.train(_stage('salience', folder, teacher=teacher, student=student, eval_examples=2,
                    eval_every=2), head)
  for workdir in (teacher, student, head):
    losses = [json.loads(l).get('loss') for l in open(os.path.join(workdir, 'metrics.jsonl'))]
    assert losses and all(np.isfinite(x) for x in losses if x is not None)

  # a rollout continuing the test clips' first latent frame, decoded to MP4 and GIF (with the
  # sweep's batch, clips and `full` cache: the sweep's full runs reuse its compiled steps)
  gen = tiny_config(policy='full', context='test', context_frames=1, vae=VAE, num_samples=2,
                    checkpoint=student, **{**LATENT, 'data.folder': str(folder)})
  checkpoints.adopt_model_fields(gen, student, {})
  metrics = generation.generate(gen, str(tmp_path / 'gen'))
  latents = np.load(tmp_path / 'gen' / 'samples.npz')['videos']
  assert latents.shape == (2, 4, 4, 4, Z_DIM)
  given = np.stack([np.load(folder / 'test' / f'{n}.npz')['video'][:1] for n in 'ef'])
  np.testing.assert_allclose(latents[:, :1], given, atol=1e-6)  # the latents as stored
  assert metrics['decoded_frames'] == 13 and metrics['decoded_size'] == [SIZE, SIZE]
  mp4 = tmp_path / 'gen' / 'videos' / 'sample_0001.mp4'
  frames = iio.imread(mp4, plugin='FFMPEG')
  assert frames.shape == (13, SIZE, SIZE, 3)
  assert Image.open(mp4.with_suffix('.gif')).size == (SIZE, SIZE)
  want = pixels.decode_video(weights.load_vae(VAE), latents[1])
  # this sample's decoding (H.264 at 32x32 is lossy, its colour subsampled: correlated, not equal)
  assert np.corrcoef((frames / 127.5 - 1).ravel(), want.ravel())[0, 1] > 0.9
  manifest = json.load(open(tmp_path / 'gen' / 'manifest.json'))
  assert manifest[1]['mp4'] == 'videos/sample_0001.mp4'

  # the sweep scores the latent runs, of the full cache and the trained head's, in pixel space
  cfg = importlib.import_module('configs.sweeps.budget').get_config('tiny')
  cfg = override(cfg, **{**LATENT, 'data.folder': str(folder), 'checkpoint': student,
                         'head.checkpoint': head, 'vae': VAE, 'policies': ('full', 'pafu'),
                         'budgets': (2,),
                         'compare_budget': 2, 'num_clips': 2, 'batch_size': 2, 'num_frames': 4,
                         'context_frames': 1, 'sampling.timesteps': (1000, 500)})
  checkpoints.adopt_model_fields(cfg, student, {})
  rows = sweep.Sweep(cfg, str(tmp_path / 'sweep')).run()
  assert [r['policy'] for r in rows] == ['full', 'pafu']
  assert all(np.isfinite(r['psnr_gt']) and r['memory_psnr'] is None for r in rows)
  run = json.load(open(tmp_path / 'sweep' / 'runs' / 'pafu_b2_s0.json'))
  assert run['run_key']['vae']['path'] == os.path.abspath(VAE)
  assert np.shape(run['psnr_gt']) == (2, 13 - 1)  # pixel frames after the given first one
  vae = weights.load_vae(VAE)
  gen_px = pixels.decode_videos(vae, np.load(tmp_path / 'sweep' / 'runs' /
                                             'pafu_b2_s0.npz')['videos'])
  from pafukv_jax import data
  gt_px = pixels.decode_videos(vae, data.first_clips(cfg.data, 'test', 2)['video'])
  np.testing.assert_allclose(run['psnr_gt'], video_metrics.psnr(gen_px[:, 1:], gt_px[:, 1:]),
                             rtol=1e-5)
  side = Image.open(tmp_path / 'sweep' / 'videos' / 'side_by_side_00.gif')
  assert side.n_frames == 13


# -- prepare: resuming, refusals ------------------------------------------------------------------

def test_prepare_skips_finished_files_and_resumes_after_an_interruption(tmp_path, monkeypatch):
  videos = smooth_videos(tmp_path / 'videos', ['x/a.gif', 'x/b.gif', 'y/c.gif'], frames=9)
  for i, name in enumerate(('x/a', 'x/b', 'y/c')):  # prompt embeddings beside the videos
    np.savez(videos / f'{name}.npz', prompt_embedding=np.full((2 + i, 3), i, np.float32))
  out = tmp_path / 'latents'
  cfg = prepare.PrepareConfig(VAE, str(videos), str(out), num_frames=5)
  real, calls = prepare.encode_file, []

  def dies_on_the_second(vae, job, size, num_frames):
    calls.append(job.src.name)
    if len(calls) == 2:
      raise KeyboardInterrupt  # killed mid-run
    return real(vae, job, size, num_frames)

  monkeypatch.setattr(prepare, 'encode_file', dies_on_the_second)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(cfg)
  monkeypatch.setattr(prepare, 'encode_file', real)
  assert sorted(p.name for p in out.rglob('*') if p.is_file()) == ['a.npz', 'prepare.json']
  first = (out / 'x' / 'a.npz').stat().st_mtime_ns
  (out / 'y').mkdir()
  (out / 'y' / 'c.npz.partial').write_bytes(b'half')  # left by a killed write
  done = prepare.prepare(cfg)
  assert (done['written'], done['skipped'], done['latent_frames']) == (2, 1, 2)
  assert (out / 'x' / 'a.npz').stat().st_mtime_ns == first  # not encoded again
  assert not list(out.rglob('*.partial'))
  with np.load(out / 'y' / 'c.npz') as f:  # sub-folders are classes, as dataset='folder' has them
    assert int(f['label']) == 1 and f['prompt_embedding'].shape == (4, 3)
  assert prepare.prepare(cfg)['written'] == 0
  with pytest.raises(ValueError, match=r'other settings: num_frames \(saved 5, now 9\)'):
    prepare.prepare(prepare.PrepareConfig(VAE, str(videos), str(out), num_frames=9))


@pytest.mark.parametrize('names, overrides, match', [
    (['a.gif'], dict(num_frames=6), r'1 \+ 4k frames .*--num_frames=5'),
    (['a.gif'], dict(size=(30, 32)), r'multiples of 8: pass --size=24x32'),
    (['a.gif'], dict(num_frames=13), r'a.gif has 9 frames, fewer than --num_frames=13'),
    (['a.gif', 'a.mp4'], {}, 'would both be written to'),
])
def test_prepare_refuses_bad_input(tmp_path, names, overrides, match):
  videos = smooth_videos(tmp_path / 'videos', names[:1], frames=9)
  for other in names[1:]:
    (videos / other).write_bytes(b'')
  with pytest.raises(ValueError, match=match):
    prepare.prepare(prepare.PrepareConfig(VAE, str(videos), str(tmp_path / 'out'), **overrides))
  assert not list((tmp_path / 'out').rglob('*.npz')) if (tmp_path / 'out').exists() else True


def test_prepare_refuses_odd_sizes_and_partial_prompts_from_the_command_line(tmp_path):
  videos = smooth_videos(tmp_path / 'videos', ['a.gif'], frames=5, size=(20, 32))
  out = subprocess.run([sys.executable, '-m', 'pafukv_jax.vae.prepare', f'--vae={VAE}',
                        f'--videos={videos}', f'--out={tmp_path / "out"}'],
                       cwd=REPO, capture_output=True, text=True)
  assert out.returncode != 0 and 'a.gif is 20x32' in out.stderr
  assert '--size=16x32' in out.stderr and not (tmp_path / 'out').exists()
  smooth_videos(videos, ['b.gif'], frames=5, size=(20, 32))
  np.savez(videos / 'a.npz', prompt_embedding=np.zeros((2, 3)))
  with pytest.raises(ValueError, match=r'1 of 2 videos have a prompt embedding.*b.gif'):
    prepare.prepare(prepare.PrepareConfig(VAE, str(videos), str(tmp_path / 'out'), size=(16, 32)))


# -- a VAE that does not fit the model ------------------------------------------------------------

def test_a_vae_of_another_z_dim_is_refused_before_any_work(tmp_path):
  cfg = tiny_config(vae=VAE)  # a pixel model: 3 channels
  with pytest.raises(ValueError, match=r'z_dim 4 latent channels, but the model has '
                                       r'model.channels=3'):
    generation.generate(cfg, str(tmp_path / 'gen'))
  assert not (tmp_path / 'gen').exists()
  cfg = importlib.import_module('configs.sweeps.budget').get_config('tiny')
  cfg.vae = VAE
  with pytest.raises(ValueError, match='z_dim 4 .* model.channels=3'):
    sweep.Sweep(cfg, str(tmp_path / 'sweep'))
  assert not (tmp_path / 'sweep').exists()
  with pytest.raises(FileNotFoundError, match='does not exist'):
    generation.generate(tiny_config(vae=str(tmp_path / 'nope')), str(tmp_path / 'gen'))
