"""Prompt embeddings as data: conditioning from batches, its dropout, the latent-clip folder, a
video folder's prompt files, and model fields taken from a checkpoint's config.json."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from pafukv_jax import checkpoints, conditioning
from pafukv_jax.data import sources
from pafukv_jax.data.latents import LatentFolder
from tests.helpers import tiny_model_config


def test_from_batch_takes_labels_or_embeddings_and_names_what_is_missing():
  labelled = tiny_model_config()
  prompted = tiny_model_config(num_classes=0, num_cond_tokens=6)
  emb = np.ones((2, 6, prompted.cond_dim), np.float32)
  assert conditioning.from_batch({'label': np.array([1, 2])}, labelled).dtype == jnp.int32
  np.testing.assert_array_equal(conditioning.from_batch({'prompt_embedding': emb}, prompted), emb)
  with pytest.raises(ValueError, match='no `prompt_embedding`'):
    conditioning.from_batch({'label': np.array([1, 2])}, prompted)
  with pytest.raises(ValueError, match=r'\(5, 16\) per clip; the model takes \(6, 16\)'):
    conditioning.from_batch({'prompt_embedding': emb[:, :5]}, prompted)


def test_drop_gives_the_null_label_or_the_zero_prompt_at_the_rate():
  key = jax.random.key(0)
  labels = jnp.full((4000,), 3, jnp.int32)
  dropped = conditioning.drop(labels, key, 0.25, num_classes=10)
  assert set(np.unique(dropped)) == {3, 10}
  assert abs(np.mean(dropped == 10) - 0.25) < 0.03
  emb = jnp.ones((4000, 2, 3))
  zeroed = np.asarray(conditioning.drop(emb, key, 0.25, num_classes=0))
  rows = zeroed.reshape(4000, -1)
  assert np.all((rows == 0).all(1) | (rows == 1).all(1))  # a row is dropped whole or kept
  np.testing.assert_array_equal((rows == 0).all(1), np.asarray(dropped == 10))  # same draws


def _save(path, **arrays):
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **arrays)


def test_latent_folder_gives_clips_with_padded_prompts(tmp_path):
  rng = np.random.default_rng(0)
  videos = [rng.normal(size=(t, 4, 6, 3)).astype(np.float32) for t in (5, 2)]
  prompts = [rng.normal(size=(n, 8)) for n in (3, 7)]
  for i, (v, p) in enumerate(zip(videos, prompts)):
    _save(tmp_path / 'sub' / f'c{i}.npz', video=v, prompt_embedding=p, label=np.int64(i))
  ds = LatentFolder(tmp_path, num_frames=2, image_size=(4, 6), prompt_tokens=9)
  assert len(ds) == 3  # frames 0-1 and 2-3 of the 5-frame file, 0-1 of the other
  np.testing.assert_array_equal(ds[1]['video'], videos[0][2:4])
  assert ds[2]['prompt_embedding'].shape == (9, 8)
  np.testing.assert_allclose(ds[2]['prompt_embedding'][:7], prompts[1])
  assert not ds[2]['prompt_embedding'][7:].any() and ds[2]['label'] == 1


def test_latent_folder_refusals_name_the_file(tmp_path):
  _save(tmp_path / 'a' / 'x.npz', video=np.zeros((2, 4, 6, 3)))
  with pytest.raises(ValueError, match=r'x.npz: `video` is \(2, 4, 6, 3\); the config wants \[T, 8, 8'):
    LatentFolder(tmp_path / 'a', 2, (8, 8))
  with pytest.raises(ValueError, match='fewer than a clip'):
    LatentFolder(tmp_path / 'a', 3, (4, 6))
  _save(tmp_path / 'a' / 'y.npz', video=np.zeros((2, 4, 6, 3)), prompt_embedding=np.zeros((2, 5)))
  with pytest.raises(ValueError, match='do not carry the same arrays'):
    LatentFolder(tmp_path / 'a', 2, (4, 6))
  _save(tmp_path / 'b' / 'z.npz', latents=np.zeros((2, 4, 6, 3)))
  with pytest.raises(ValueError, match='needs a `video` array'):
    LatentFolder(tmp_path / 'b', 2, (4, 6))
  _save(tmp_path / 'c' / 'p.npz', video=np.zeros((2, 4, 6, 3)), prompt_embedding=np.zeros((9, 5)))
  with pytest.raises(ValueError, match='9 prompt tokens, more than the 4'):
    LatentFolder(tmp_path / 'c', 2, (4, 6), prompt_tokens=4)[0]


def test_video_folder_reads_prompt_files_beside_the_videos(tmp_path):
  import imageio.v3 as iio
  rng = np.random.default_rng(0)  # distinct frames: a GIF writer merges identical ones
  for name in ('a', 'b'):
    iio.imwrite(tmp_path / f'{name}.gif', rng.integers(0, 255, (4, 8, 8, 3), np.uint8),
                duration=100, loop=0)
  cfg = ml_collections.ConfigDict(dict(dataset='folder', folder=str(tmp_path), num_frames=2,
                                       image_size=(8, 8), prompt_tokens=4))
  assert 'prompt_embedding' not in sources.open_source(cfg)[0]
  np.savez(tmp_path / 'a.npz', prompt_embedding=np.ones((2, 5)))
  with pytest.raises(ValueError, match='1 of 2 videos have a prompt embedding.*b.gif'):
    sources.open_source(cfg)
  np.savez(tmp_path / 'b.npz', prompt_embedding=np.full((3, 5), 2.0))
  ds = sources.open_source(cfg)
  np.testing.assert_array_equal(ds[len(ds) - 1]['prompt_embedding'], [[2] * 5] * 3 + [[0] * 5])


def test_model_fields_come_from_the_checkpoint_unless_set(tmp_path):
  saved = dict(common.model_config('tiny'), channels=4, image_size=[8, 8], num_classes=0)
  del saved['rope_theta']  # a field the config.json lacks was its default
  (tmp_path / 'config.json').write_text(json.dumps(dict(stage='student', model=saved)))
  cfg = ml_collections.ConfigDict(dict(model=dict(common.model_config('tiny'), rope_theta=500.0,
                                                  dim=48)))
  changed = checkpoints.adopt_model_fields(cfg, str(tmp_path), explicit={'model.dim': 48})
  assert sorted(changed) == ['channels=4', 'image_size=(8, 8)', 'num_classes=0',
                             'rope_theta=10000.0']
  assert cfg.model.dim == 48 and cfg.model.image_size == (8, 8)  # set by the user: kept
  assert checkpoints.adopt_model_fields(cfg, '', {}) == []


def test_latent_videos_are_previewed_from_their_first_channels():
  from pafukv_jax import video_io
  rng = np.random.default_rng(0)
  pixels = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  assert video_io.viewable(pixels) is not None and np.array_equal(video_io.viewable(pixels), pixels)
  latents = rng.normal(size=(2, 4, 4, 16)).astype(np.float32) * 5
  view = video_io.viewable(latents)
  assert view.shape == (2, 4, 4, 3) and view.min() == -1 and view.max() == 1
  # a monotone stretch per channel: the order of values within a channel is kept
  order = lambda x: np.argsort(x[..., 0].ravel(), kind='stable')
  np.testing.assert_array_equal(np.sort(view[..., 0].ravel())[[0, -1]], [-1, 1])
  assert np.all(np.diff(view[..., 0].ravel()[order(latents)]) >= 0)
