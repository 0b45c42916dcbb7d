"""Data: the revisit mask, the procedural TFDS builders, user videos, TFDS by name, the pipeline."""

import hashlib
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import data as data_config
from pafukv_jax.data import folder as folder_lib
from pafukv_jax.data import photo_pan as photo_pan_lib
from pafukv_jax.data import procedural
from pafukv_jax.data import sources
from pafukv_jax.data import tfds_video
from pafukv_jax.data.occluded_objects import OccludedObjects
from pafukv_jax.data.photo_pan import PhotoPan
from pafukv_jax.data.pipeline import Pipeline
from pafukv_jax.data.revisit import revisit_mask

SIZES = dict(num_frames=8, height=16, width=16, train_examples=6, test_examples=3,
             revisit_horizon=2, seed=0)


# ---------------------------------------------------------------- revisit mask

def reference_revisit_mask(ids, horizon):
  """The definition, pixel by pixel: content whose visible run began at frame s, and whose
  previous sighting a (before s) satisfies s - a > horizon."""
  t_len = ids.shape[0]
  seen = [set(ids[t].ravel().tolist()) for t in range(t_len)]
  mask = np.zeros(ids.shape, bool)
  for t, y, x in np.ndindex(*ids.shape):
    c = ids[t, y, x]
    if c < 0:
      continue
    start = t
    while start > 0 and c in seen[start - 1]:
      start -= 1
    previous = [a for a in range(start) if c in seen[a]]
    mask[t, y, x] = bool(previous) and start - previous[-1] > horizon
  return mask


@pytest.mark.parametrize('gap', [1, 2, 3, 4, 6])
def test_revisit_mask_object_leaves_and_returns(gap):
  """An object last visible at frame a, back at frame b = a + gap: marked from b on iff gap > N."""
  horizon, a, t_len = 3, 2, 12
  b = a + gap
  ids = np.broadcast_to(np.arange(25).reshape(5, 5), (t_len, 5, 5)).copy()  # background
  obj = np.array([[100, 101], [102, 103]])
  for t in range(t_len):
    if t <= a:
      ids[t, 0:2, 0:2] = obj           # visible at frames 0..a, top left
    elif t >= b:
      ids[t, 3:5, 2:4] = obj           # hidden in between; returns elsewhere at frame b
  mask = revisit_mask(ids, horizon)
  expected = np.zeros_like(mask)
  if gap > horizon:
    expected[b:, 3:5, 2:4] = True      # the returning object, from b to the end
  np.testing.assert_array_equal(mask, expected)


def test_revisit_mask_matches_the_definition_on_random_visibility():
  rng = np.random.default_rng(0)
  for trial in range(20):
    ids = rng.integers(-2, 12, (10, 3, 3))        # few ids: many leave-and-return events
    horizon = int(rng.integers(1, 4))
    got = revisit_mask(ids, horizon)
    np.testing.assert_array_equal(got, reference_revisit_mask(ids, horizon), err_msg=str(trial))
  assert got.any() and not got.all()


def test_revisit_mask_rejects_bad_input():
  with pytest.raises(ValueError, match='horizon'):
    revisit_mask(np.zeros((2, 2, 2), int), 0)
  with pytest.raises(ValueError, match='integer'):
    revisit_mask(np.zeros((2, 2, 2)), 1)


# ---------------------------------------------------------------- procedural builders

def build(cls, data_dir, **overrides):
  return procedural.prepare(cls(data_dir=os.fspath(data_dir), **{**SIZES, **overrides}))


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds')
  return {cls: build(cls, root) for cls in (OccludedObjects, PhotoPan)}


def split_examples(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def digest(example):
  return hashlib.sha256(b''.join(np.asarray(example[k]).tobytes()
                                 for k in sorted(example))).hexdigest()


@pytest.mark.parametrize('cls', [OccludedObjects, PhotoPan])
def test_builder_shapes_and_dtypes(built, cls):
  t, h, w = SIZES['num_frames'], SIZES['height'], SIZES['width']
  builder = built[cls]
  assert builder.info.file_format.value == 'array_record'
  for split, count in (('train', SIZES['train_examples']), ('test', SIZES['test_examples'])):
    examples = split_examples(builder, split)
    assert len(examples) == count
    for e in examples:
      assert e['video'].shape == (t, h, w, 3) and e['video'].dtype == np.uint8
      assert e['revisit_mask'].shape == (t, h, w) and e['revisit_mask'].dtype == bool
      assert e['frame_cond'].shape == (t, 2) and e['frame_cond'].dtype == np.float32
      assert int(e['label']) in ((0, 1, 2) if cls is OccludedObjects else (0, 1))
      assert not e['revisit_mask'][0].any()        # nothing can be revisited in the first frame
  videos = np.stack([e['video'] for e in split_examples(builder, 'train')])
  assert videos.std() > 10                          # not blank


@pytest.mark.parametrize('cls', [OccludedObjects, PhotoPan])
def test_builder_is_deterministic(built, cls, tmp_path):
  again = build(cls, tmp_path / 'again')
  other_seed = build(cls, tmp_path / 'other', seed=1)
  for split in ('train', 'test'):
    first = [digest(e) for e in split_examples(built[cls], split)]
    assert [digest(e) for e in split_examples(again, split)] == first
    assert not set(digest(e) for e in split_examples(other_seed, split)) & set(first)


@pytest.mark.parametrize('cls', [OccludedObjects, PhotoPan])
def test_splits_are_disjoint(built, cls):
  train = {e['video'].tobytes() for e in split_examples(built[cls], 'train')}
  test = {e['video'].tobytes() for e in split_examples(built[cls], 'test')}
  assert len(train) == SIZES['train_examples'] and len(test) == SIZES['test_examples']
  assert not train & test


def contains_crop(photo, frame):
  h, w = frame.shape[:2]
  windows = np.lib.stride_tricks.sliding_window_view(photo, (h, w, 3))[..., 0, :, :, :]
  return bool((windows == frame).all(axis=(-3, -2, -1)).any())


def test_photo_pan_test_split_uses_other_photographs(built):
  shorter = round(photo_pan_lib.PHOTO_ZOOM * max(SIZES['height'], SIZES['width']))
  train_photos = [photo_pan_lib.scaled_photo(n, shorter) for n in photo_pan_lib.TRAIN_PHOTOS]
  for e in split_examples(built[PhotoPan], 'test'):
    name = photo_pan_lib.PHOTOS[e['photo_index']]
    assert name in photo_pan_lib.TEST_PHOTOS and name not in photo_pan_lib.TRAIN_PHOTOS
    assert contains_crop(photo_pan_lib.scaled_photo(name, shorter), e['video'][0])
    assert not any(contains_crop(p, e['video'][0]) for p in train_photos)


def test_photo_pan_frame_cond_is_the_camera_motion_and_the_mask_follows_it(built):
  """Independent of the generator's content ids: camera positions come from summing frame_cond;
  frames must be shifted crops of each other, and the mask must follow the definition applied to
  the world points each pixel shows."""
  t_len, h, w, horizon = (SIZES[k] for k in ('num_frames', 'height', 'width', 'revisit_horizon'))
  checked_overlap = 0
  for e in split_examples(built[PhotoPan], 'train') + split_examples(built[PhotoPan], 'test'):
    video, cond = e['video'].astype(int), e['frame_cond'].astype(int)
    assert np.array_equal(cond[0], [0, 0])
    pos = np.cumsum(cond, axis=0)                 # (x, y) of each frame, relative to frame 0
    for t in range(1, t_len):
      dx, dy = cond[t]
      if abs(dx) < w and abs(dy) < h:             # the overlap shows the same photo pixels
        cur = video[t, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        prev = video[t - 1, max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
        np.testing.assert_array_equal(cur, prev)
        checked_overlap += 1
    if e['label'] == 0:                           # out and back: frame t and T-1-t coincide
      np.testing.assert_array_equal(pos, pos[::-1])
      np.testing.assert_array_equal(video, video[::-1])
    else:                                         # loop: back at the start on the last frame
      np.testing.assert_array_equal(pos[-1], pos[0])
      np.testing.assert_array_equal(video[-1], video[0])
    assert max(np.abs(pos[:, 0]).max() / w, np.abs(pos[:, 1]).max() / h) >= 1  # left the view
    world = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1)   # [H, W, (x, y)]

    def in_view(points, t):
      rel = points - pos[t]
      return (rel[..., 0] >= 0) & (rel[..., 0] < w) & (rel[..., 1] >= 0) & (rel[..., 1] < h)

    expected = np.zeros((t_len, h, w), bool)
    for t in range(t_len):
      points = world + pos[t]
      start = np.full((h, w), t)
      running = np.ones((h, w), bool)
      for s in range(t - 1, -1, -1):             # walk back while the point stays in view
        running &= in_view(points, s)
        start[running] = s
      last = np.full((h, w), -1)
      for s in range(t_len):
        last[(s < start) & in_view(points, s)] = s
      expected[t] = (last >= 0) & (start - last > horizon)
    np.testing.assert_array_equal(e['revisit_mask'], expected)
  assert checked_overlap > 0


def waypoint_examples(count, num_frames=16, size=32, horizon=4):
  cfg = procedural.procedural_config(num_frames=num_frames, height=size, width=size,
                                     revisit_horizon=horizon, trajectories='waypoints')
  return [photo_pan_lib.make_example(procedural.example_rng(0, 'test', i), 'test', cfg)
          for i in range(count)]


def test_photo_pan_waypoints_revisit_what_neither_the_first_frames_nor_the_last_hold():
  """Independent of the generator: from the camera path (summed frame_cond), every revisited
  pixel (the mask) shows a scene point outside the first frame's view, and where its return
  begins, outside the `horizon` frames before (a window of that size does not hold it)."""
  size, horizon = 32, 4
  for e in waypoint_examples(6, horizon=horizon):
    assert e['label'] == photo_pan_lib.TRAJECTORIES.index('waypoints')
    pos = np.cumsum(e['frame_cond'].astype(int), axis=0)
    mask = e['revisit_mask']
    assert mask[-1].mean() > 0.5    # the camera ends back at the waypoint
    ys, xs = np.mgrid[:size, :size]
    in_view = lambda points, s: ((points - pos[s] >= 0) & (points - pos[s] < size)).all(-1)
    returns = 0
    for t in np.flatnonzero(mask.any(axis=(1, 2))):
      points = np.stack([xs[mask[t]], ys[mask[t]]], -1) + pos[t]    # scene points, revisited
      assert not in_view(points, 0).any(), t
      back = points[~in_view(points, t - 1)]                          # their return begins at t
      returns += len(back)
      for s in range(t - horizon, t):
        assert not in_view(back, s).any(), (t, s)
    assert returns > 0


def test_photo_pan_trajectory_families_keep_their_labels_and_the_default_data():
  # the default ('' = out_and_back,loop) draws what it always did; a subset keeps the labels
  default = procedural.procedural_config(num_frames=8, height=16, width=16)
  explicit = procedural.procedural_config(num_frames=8, height=16, width=16,
                                          trajectories='out_and_back,loop')
  assert default.name != explicit.name and 'waypoints' not in default.name
  for i in range(4):
    a, b = (photo_pan_lib.make_example(procedural.example_rng(0, 'train', i), 'train', c)
            for c in (default, explicit))
    np.testing.assert_array_equal(a['video'], b['video'])
  loops = procedural.procedural_config(num_frames=8, height=16, width=16, trajectories='loop')
  assert {int(photo_pan_lib.make_example(procedural.example_rng(0, 'train', i), 'train',
                                         loops)['label']) for i in range(4)} == {1}
  with pytest.raises(ValueError, match='out_and_back.*loop.*waypoints'):
    PhotoPan(num_frames=8, height=16, width=16, trajectories='spiral')
  with pytest.raises(ValueError, match='has no camera'):
    OccludedObjects(num_frames=8, height=16, width=16, trajectories='loop')


def test_photo_pan_camera_step_puts_every_view_on_the_patch_grid():
  """camera_step=4: every camera position (summed frame_cond, from frame 0) is a multiple of 4
  pixels away, and each frame is the photograph's crop at such a position; 1 keeps the dataset
  (and its folder name) as before."""
  plain = procedural.procedural_config(num_frames=16, height=32, width=32,
                                       trajectories='waypoints')
  stepped = procedural.procedural_config(num_frames=16, height=32, width=32,
                                         trajectories='waypoints', camera_step=4)
  assert '_step' not in plain.name and stepped.name == plain.name + '_step4'
  moved = 0
  for i in range(4):
    e = photo_pan_lib.make_example(procedural.example_rng(0, 'test', i), 'test', stepped)
    pos = np.cumsum(e['frame_cond'].astype(int), axis=0)
    assert (pos % 4 == 0).all() and (pos != 0).any()
    moved += int((np.abs(np.diff(pos, axis=0)).max(-1) > 0).sum())
    photo = photo_pan_lib.scaled_photo(photo_pan_lib.PHOTOS[e['photo_index']], 96)
    windows = np.lib.stride_tricks.sliding_window_view(photo, (32, 32, 3))[..., 0, :, :, :]
    a, b = np.argwhere((windows == e['video'][0]).all(axis=(-3, -2, -1)))[0]   # frame 0's crop
    for t in range(1, 16):      # frame t is the crop moved by pos[t]
      x, y = pos[t]
      np.testing.assert_array_equal(e['video'][t], photo[a + y:a + y + 32, b + x:b + x + 32])
  assert moved > 10
  with pytest.raises(ValueError, match='camera_step=64'):
    PhotoPan(num_frames=8, height=16, width=16, camera_step=64)
  with pytest.raises(ValueError, match='has no camera'):
    OccludedObjects(num_frames=8, height=16, width=16, camera_step=4)


def test_occluded_objects_have_a_static_camera_and_revisits(built):
  examples = split_examples(built[OccludedObjects], 'train')
  assert all(not e['frame_cond'].any() for e in examples)
  assert any(e['revisit_mask'].any() for e in examples)   # sprites do come back after > N frames


def test_procedural_config_rejects_bad_sizes():
  with pytest.raises(ValueError, match='revisit_horizon'):
    procedural.procedural_config(revisit_horizon=0)


# ---------------------------------------------------------------- sources and their errors

def tiny_config(data_dir, **overrides):
  cfg = data_config.get_config('tiny')
  cfg.data_dir = os.fspath(data_dir)
  cfg.update(overrides)
  return cfg


def test_data_config_variants():
  tiny, base = data_config.get_config('tiny'), data_config.get_config()
  assert tiny.num_frames < base.num_frames and tiny.dataset == base.dataset == 'occluded_objects'
  assert data_config.get_config('tiny,photo_pan').dataset == 'photo_pan'
  assert data_config.get_config('tiny,photo_pan').num_frames == tiny.num_frames


def test_open_source_prepares_the_configured_dataset(tmp_path):
  cfg = tiny_config(tmp_path, dataset='photo_pan', train_examples=3, test_examples=2)
  source = sources.open_source(cfg, 'test')
  assert len(source) == 2
  assert source[0]['video'].shape == (cfg.num_frames, *cfg.image_size, 3)
  direct = build(PhotoPan, tmp_path / 'direct', num_frames=cfg.num_frames, height=16, width=16,
                 train_examples=3, test_examples=2, revisit_horizon=cfg.revisit_horizon)
  assert digest(source[1]) == digest(direct.as_data_source('test')[1])


def test_missing_and_unknown_datasets_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='prepare=True'):
    sources.open_source(tiny_config(tmp_path, prepare=False))
  with pytest.raises(ValueError, match='Unknown dataset'):
    sources.open_source(tiny_config(tmp_path, dataset='no_such_thing'))
  with pytest.raises(ValueError, match='splits'):
    sources.open_source(tiny_config(tmp_path), 'validation')


def test_unwritable_data_dir_is_a_clear_error(tmp_path):
  a_file = tmp_path / 'not_a_directory'
  a_file.write_text('')
  with pytest.raises(PermissionError, match='data_dir'):
    sources.open_source(tiny_config(a_file / 'data'))


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0,
                    reason='root can write into read-only directories')
def test_read_only_data_dir_is_a_clear_error(tmp_path):
  tmp_path.chmod(0o500)
  try:
    with pytest.raises(PermissionError, match='data_dir'):
      sources.open_source(tiny_config(tmp_path))
  finally:
    tmp_path.chmod(0o700)


# ---------------------------------------------------------------- a folder of videos

def write_gif(path, values, size=(24, 40)):
  """A GIF whose frame t is a flat grey of level values[t]."""
  path.parent.mkdir(parents=True, exist_ok=True)
  frames = [Image.fromarray(np.full(size, v, np.uint8)) for v in values]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def test_video_folder_clips_labels_and_resizing(tmp_path):
  write_gif(tmp_path / 'cats' / 'one.gif', [10 * t for t in range(10)])
  write_gif(tmp_path / 'dogs' / 'two.gif', [200 - 10 * t for t in range(9)])
  dataset = folder_lib.VideoFolder(tmp_path, num_frames=4, image_size=(16, 16))
  # 10 frames -> clips at 0 and 4; 9 frames -> clips at 0 and 4 (8 needs 12 frames)
  assert len(dataset) == 4
  expected = [(0, [0, 10, 20, 30]), (0, [40, 50, 60, 70]),
              (1, [200, 190, 180, 170]), (1, [160, 150, 140, 130])]
  for i, (label, levels) in enumerate(expected):
    clip = dataset[i]
    assert clip['video'].shape == (4, 16, 16, 3) and clip['video'].dtype == np.uint8
    assert int(clip['label']) == label
    np.testing.assert_allclose(clip['video'].mean(axis=(1, 2, 3)), levels, atol=1)


# ffmpeg runs as a subprocess (fork + exec at once), which jax's fork warning does not concern.
FFMPEG_SUBPROCESS = pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')


@FFMPEG_SUBPROCESS
def test_video_folder_reads_mp4(tmp_path):
  pytest.importorskip('imageio_ffmpeg')
  import imageio.v3 as iio
  levels = [20 * t for t in range(8)]
  video = np.stack([np.full((32, 48, 3), v, np.uint8) for v in levels])
  iio.imwrite(tmp_path / 'clip.mp4', video, fps=8)
  dataset = folder_lib.VideoFolder(tmp_path, num_frames=8, image_size=(16, 16))
  assert len(dataset) == 1
  np.testing.assert_allclose(dataset[0]['video'].mean(axis=(1, 2, 3)), levels, atol=6)


@FFMPEG_SUBPROCESS
def test_video_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    folder_lib.VideoFolder(tmp_path / 'nowhere', 4, (16, 16))
  with pytest.raises(FileNotFoundError, match='No video files'):
    folder_lib.VideoFolder(tmp_path, 4, (16, 16))
  write_gif(tmp_path / 'short.gif', [0, 50, 100])
  with pytest.raises(ValueError, match='longer than 1 of the 1 videos: short.gif'):
    folder_lib.VideoFolder(tmp_path, 4, (16, 16))
  (tmp_path / 'broken.mp4').write_bytes(b'this is not a video')
  with pytest.raises(ValueError, match='Cannot read the video .*broken.mp4'):
    folder_lib.VideoFolder(tmp_path, 2, (16, 16))


def test_folder_source_uses_the_split_subfolder(tmp_path):
  write_gif(tmp_path / 'train' / 'a.gif', range(8))   # distinct frames: GIF merges equal ones
  write_gif(tmp_path / 'test' / 'b.gif', range(248, 256))
  cfg = tiny_config(tmp_path, dataset='folder', folder=os.fspath(tmp_path))
  assert sources.open_source(cfg, 'train')[0]['video'].max() <= 7
  assert sources.open_source(cfg, 'test')[0]['video'].min() >= 248
  with pytest.raises(FileNotFoundError, match='validation'):
    sources.open_source(cfg, 'validation')


# ---------------------------------------------------------------- TFDS datasets by name

def test_tfds_dataset_not_prepared_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='tfds build moving_mnist'):
    tfds_video.TfdsVideo('moving_mnist', 'train', os.fspath(tmp_path), 8, (16, 16))


def test_tfds_dataset_without_tensorflow_says_what_to_install(tmp_path, monkeypatch):
  version_dir = tmp_path / 'moving_mnist' / '1.0.0'
  version_dir.mkdir(parents=True)
  (version_dir / 'dataset_info.json').write_text(
      json.dumps({'name': 'moving_mnist', 'fileFormat': 'tfrecord'}))
  monkeypatch.setattr(tfds_video, 'tensorflow_available', lambda: False)
  with pytest.raises(ImportError, match='pip install tensorflow'):
    sources.open_source(tiny_config(tmp_path, dataset='tfds:moving_mnist'))


def test_tfds_video_feature_is_found_by_shape():
  bair = {'action': (None, 4), 'image_aux1': (None, 64, 64, 3), 'image_main': (None, 64, 64, 3)}
  assert tfds_video.pick_video_key(bair) == 'image_main'
  assert tfds_video.pick_video_key({'image_sequence': (20, 64, 64, 1)}) == 'image_sequence'
  with pytest.raises(ValueError, match='video_key'):
    tfds_video.pick_video_key({'label': ()})


def test_tfds_dataset_by_name_reads_a_prepared_array_record_dataset(built):
  """A prepared dataset with Tensor features reads without TensorFlow, by name."""
  builder = built[OccludedObjects]
  name = f'occluded_objects/{builder.builder_config.name}'
  data_dir = os.fspath(builder.data_dir_root)
  dataset = tfds_video.TfdsVideo(name, 'test', data_dir, 5, (16, 16))
  original = builder.as_data_source('test')
  assert len(dataset) == len(original) == SIZES['test_examples']
  for i in range(len(dataset)):
    np.testing.assert_array_equal(dataset[i]['video'], original[i]['video'][:5])
    assert int(dataset[i]['label']) == int(original[i]['label'])
  with pytest.raises(ValueError, match='longer than the videos'):
    tfds_video.TfdsVideo(name, 'test', data_dir, SIZES['num_frames'] + 1, (16, 16))


# ---------------------------------------------------------------- the pipeline

def numbered_source(n, frames=2, size=4):
  """Example i: a video filled with i and label i, so a batch tells which examples it holds."""
  return [{'video': np.full((frames, size, size, 3), i, np.uint8), 'label': np.int64(i)}
          for i in range(n)]


def labels_of(batch):
  return np.asarray(batch['label']).tolist()


def test_pipeline_gives_the_same_batch_at_step_s_after_a_restart():
  source = numbered_source(13)
  uninterrupted = [labels_of(b) for _, b in zip(range(8), Pipeline(source, 4, seed=3))]
  resumed = Pipeline(source, 4, seed=3).iterate(start_step=5)   # a new pipeline object
  assert [labels_of(next(resumed)) for _ in range(3)] == uninterrupted[5:8]
  assert labels_of(Pipeline(source, 4, seed=3).batch(6)) == uninterrupted[6]
  other_seed = [labels_of(b) for _, b in zip(range(8), Pipeline(source, 4, seed=4))]
  assert other_seed != uninterrupted


def test_pipeline_resume_on_a_real_dataset(built):
  source = built[OccludedObjects].as_data_source('train')
  first = Pipeline(source, 4, seed=0)
  batches = [first.batch(s) for s in range(3)]
  again = Pipeline(built[OccludedObjects].as_data_source('train'), 4, seed=0).iterate(2)
  later = next(again)
  for k in batches[2]:
    np.testing.assert_array_equal(later[k], batches[2][k])
  assert batches[2]['video'].dtype == np.float32
  assert -1.0 <= batches[2]['video'].min() and batches[2]['video'].max() <= 1.0


def test_pipeline_each_epoch_holds_each_example_once():
  source = numbered_source(10)
  pipeline = Pipeline(source, 4, seed=0)
  stream = sum((labels_of(pipeline.batch(s)) for s in range(5)), [])   # 20 slots = 2 epochs
  assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
  assert stream[:10] != list(range(10)) and stream[:10] != stream[10:]  # shuffled per epoch
  assert sum((labels_of(Pipeline(source, 5, shuffle=False).batch(s)) for s in range(2)),
             []) == list(range(10))


def test_pipeline_converts_video_to_float_in_minus_one_one():
  source = [{'video': np.array([0, 255, 51], np.uint8).reshape(1, 1, 1, 3), 'label': 0}]
  video = Pipeline(source, 1).batch(0)['video']
  np.testing.assert_allclose(video.ravel(), [-1.0, 1.0, 51 / 127.5 - 1], atol=1e-6)
  assert video.dtype == np.float32
  assert Pipeline(source, 1, as_float=False).batch(0)['video'].dtype == np.uint8


@pytest.mark.parametrize('global_batch', [8, 16])
def test_global_batch_on_8_devices_holds_each_example_once(global_batch):
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ('data',))
  source = numbered_source(32)
  pipeline = Pipeline(source, global_batch, seed=1, mesh=mesh)
  seen = []
  for step in range(32 // global_batch):                # one epoch
    batch = pipeline.batch(step)
    assert batch['video'].shape == (global_batch, 2, 4, 4, 3)
    shards = batch['label'].addressable_shards
    assert len(shards) == 8 and {s.device for s in shards} == set(mesh.devices.ravel())
    rows = [r for s in shards for r in np.asarray(s.data).tolist()]
    assert all(s.data.shape == (global_batch // 8,) for s in shards)
    assert sorted(rows) == sorted(labels_of(batch))     # every row on exactly one device
    # the video rows really are the examples their labels name
    video = np.asarray(batch['video'])
    np.testing.assert_allclose(video[:, 0, 0, 0, 0], np.asarray(labels_of(batch)) / 127.5 - 1,
                               atol=1e-6)
    seen += rows
  assert sorted(seen) == list(range(32))


def test_hosts_read_disjoint_parts_of_the_global_batch():
  source = numbered_source(20)
  whole = labels_of(Pipeline(source, 8, seed=2, process_index=0, process_count=1).batch(3))
  parts = [labels_of(Pipeline(source, 8, seed=2, process_index=p, process_count=4).batch(3))
           for p in range(4)]
  assert all(len(p) == 2 for p in parts)
  assert sum(parts, []) == whole


def test_finite_pipeline_pads_its_last_batch():
  pipeline = Pipeline(numbered_source(10), 4, shuffle=False, num_epochs=1)
  batches = list(pipeline)
  assert pipeline.num_steps == len(batches) == 3
  valid = np.concatenate([b['valid'] for b in batches])
  labels = sum((labels_of(b) for b in batches), [])
  assert valid.tolist() == [True] * 10 + [False] * 2
  assert [l for l, v in zip(labels, valid) if v] == list(range(10))


def test_pipeline_errors():
  mesh = jax.make_mesh((8,), ('data',))
  with pytest.raises(ValueError, match='not divisible by the data-parallel size 8'):
    Pipeline(numbered_source(16), 12, mesh=mesh)
  with pytest.raises(ValueError, match='does not have'):
    Pipeline(numbered_source(16), 8, mesh=mesh, data_axes=('batch',))
  with pytest.raises(ValueError, match='empty'):
    Pipeline([], 8)
  with pytest.raises(ValueError, match='number of processes'):
    Pipeline(numbered_source(16), 6, process_index=0, process_count=4)


def test_preparing_a_procedural_dataset_says_one_thing(tmp_path, capfd):
  """TFDS's "Using custom data configuration", "Variant folder ... has no dataset_info.json" and
  "Downloading and preparing dataset Unknown size" say nothing true of a dataset made here."""
  from absl import logging as absl_logging
  from configs import data as data_config
  from pafukv_jax.data import sources
  absl_logging.set_verbosity(absl_logging.WARNING)  # as the entry points set it
  cfg = data_config.get_config('tiny')
  cfg.data_dir = str(tmp_path)
  sources.open_source(cfg, 'train')
  sources.open_source(cfg, 'test')  # prepared: silent
  out, err = capfd.readouterr()
  assert out == ''
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 2 and lines[0].startswith('Preparing occluded_objects (16 train + 8 test')
  assert lines[1].startswith('Prepared occluded_objects in'), lines


def _tiny_builder(tmp_path):
  from configs import data as data_config
  from pafukv_jax.data import sources
  cfg = data_config.get_config('tiny')
  cfg.data_dir = str(tmp_path)
  return sources.procedural_builder(cfg)


def test_a_split_over_tfds_memory_buffer_is_prepared_without_tensorflow(tmp_path, monkeypatch):
  """TFDS spills a split larger than its buffer (1 GB) to disk through tf.io.gfile, which dies
  without TensorFlow; a 1 kB buffer makes the tiny split that large."""
  from tensorflow_datasets.core import shuffle
  from pafukv_jax.data import procedural
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 1000)
  builder = procedural.prepare(_tiny_builder(tmp_path))
  assert len(builder.as_data_source(split='train')) == 16
  assert shuffle.MAX_MEM_BUFFER_SIZE == 1000  # restored


def test_a_failed_preparation_leaves_nothing_that_breaks_the_next_run(tmp_path, monkeypatch):
  from pafukv_jax.data import procedural
  from pafukv_jax.data.occluded_objects import OccludedObjects
  original = OccludedObjects.__dict__['make_example']
  make = original.__get__(None, OccludedObjects)

  def failing(*args):
    if 'test' in args:
      raise KeyboardInterrupt  # a kill halfway: the train split is written, the test split not
    return make(*args)

  monkeypatch.setattr(OccludedObjects, 'make_example', staticmethod(failing))
  with pytest.raises(KeyboardInterrupt):
    procedural.prepare(_tiny_builder(tmp_path))
  left = [p for p in tmp_path.rglob('*') if 'downloads' not in p.parts]  # TFDS's, made always
  assert not [p for p in left if 'incomplete' in p.name] and not [
      p for p in left if p.is_dir() and not any(p.iterdir())], left
  monkeypatch.setattr(OccludedObjects, 'make_example', original)
  builder = procedural.prepare(_tiny_builder(tmp_path))
  assert len(builder.as_data_source(split='test')) == 8


def test_first_clips_prepare_only_what_they_read(tmp_path):
  """The first clips of a split that is not prepared yet come from a dataset of just those clips
  (and one of the other split), equal to the full dataset's."""
  from configs import data as data_config
  from pafukv_jax.data import sources
  cfg = data_config.get_config('tiny')
  cfg.data_dir = str(tmp_path)
  few = sources.first_clips(cfg, 'test', 3)
  assert [p.name for p in (tmp_path / 'occluded_objects').iterdir()] == [
      't8_16x16_train1_test3_n2_seed0']
  sources.open_source(cfg, 'test')  # the full dataset, as training prepares it
  full = sources.first_clips(cfg, 'test', 3)  # read from it, now that it exists
  assert len(list((tmp_path / 'occluded_objects').iterdir())) == 2
  for name in few:
    np.testing.assert_array_equal(few[name], full[name])


def test_quiet_tfds_nests():
  """An inner quiet block (a builder's is_prepared during a preparation) does not turn TFDS's
  progress bars back on for the rest of the outer one."""
  from tensorflow_datasets.core.utils import tqdm_utils
  from pafukv_jax.data import procedural
  with procedural.quiet_tfds():
    with procedural.quiet_tfds():
      pass
    assert isinstance(tqdm_utils.tqdm(), tqdm_utils.EmptyTqdm)
  assert not isinstance(tqdm_utils.tqdm(), tqdm_utils.EmptyTqdm)
