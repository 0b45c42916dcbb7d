"""`photo_pan`: a camera window moving over a larger real photograph, away and back again.

The photographs are the ones shipped inside scikit-image (`skimage.data`) and scikit-learn
(`load_sample_images`), so nothing is downloaded. The test split uses photographs the train split
never uses (TEST_PHOTOS). Each photograph is resized so its shorter side is PHOTO_ZOOM times the
larger side of the view; the camera moves by whole pixels (frames are exact crops) along one of two
trajectories that leave a region and return to it:
  label 0, out and back: straight out in a random direction, then straight back to the start;
  label 1, loop: once around a circle, back to the start on the last frame.
frame_cond[t] = (dx, dy), the camera displacement in pixels since frame t-1 (the image content
moves by the opposite amount), so continuing a video has one ground truth. Extra feature:
photo_index, the index of the photograph in PHOTOS.
"""

import functools

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from pafukv_jax.data import procedural

TRAIN_PHOTOS = ('skimage:astronaut', 'skimage:chelsea', 'skimage:rocket',
                'skimage:hubble_deep_field', 'skimage:immunohistochemistry', 'skimage:camera',
                'skimage:coins', 'skimage:brick', 'skimage:grass', 'skimage:gravel')
TEST_PHOTOS = ('sklearn:china.jpg', 'sklearn:flower.jpg', 'skimage:coffee')
PHOTOS = TRAIN_PHOTOS + TEST_PHOTOS
SPLIT_PHOTOS = {'train': TRAIN_PHOTOS, 'test': TEST_PHOTOS}
PHOTO_ZOOM = 3.0                  # photo's shorter side, in (larger) view sides
OUT_DISTANCE = (1.0, 1.5)         # out-and-back: how far out (along the main axis), in views
LOOP_RADIUS = (0.65, 0.9)         # loop: circle radius, in view sides (the view leaves)


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
  """uint8 [h, w, 3] of a photograph shipped with scikit-image or scikit-learn ('pkg:name')."""
  package, _, item = name.partition(':')
  try:
    if package == 'skimage':
      import skimage.data  # pylint: disable=g-import-not-at-top
      image = getattr(skimage.data, item)()
    elif package == 'sklearn':
      from sklearn.datasets import load_sample_image  # pylint: disable=g-import-not-at-top
      image = load_sample_image(item)
    else:
      raise ValueError(f'Unknown photo source {package!r} in {name!r}: use skimage: or sklearn:.')
  except ImportError as e:
    raise ImportError(f'photo_pan needs the photographs shipped with scikit-image and '
                      f'scikit-learn ({name} failed: {e}): pip install scikit-image scikit-learn'
                      ) from e
  image = np.asarray(image)
  if image.dtype == bool:
    image = image.astype(np.uint8) * 255
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3].astype(np.uint8))


@functools.lru_cache(maxsize=64)
def scaled_photo(name: str, shorter_side: int) -> np.ndarray:
  photo = load_photo(name)
  h, w = photo.shape[:2]
  scale = shorter_side / min(h, w)
  size = (max(shorter_side, round(w * scale)), max(shorter_side, round(h * scale)))
  return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR))


def trajectory(rng: np.random.Generator, kind: int, num_frames: int, view: int) -> np.ndarray:
  """float [T, 2] camera offsets (x, y) from the first frame, in pixels."""
  t = np.arange(num_frames) / max(num_frames - 1, 1)
  if kind == 0:   # out and back: a tent from 0 to 1 and back to 0
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    direction /= np.abs(direction).max()   # the distance along the main axis: the view leaves
    reach = 1 - np.abs(1 - 2 * t)
    return reach[:, None] * rng.uniform(*OUT_DISTANCE) * view * direction
  radius = rng.uniform(*LOOP_RADIUS) * view
  start = rng.uniform(0, 2 * np.pi)
  phase = start + rng.choice([-1.0, 1.0]) * 2 * np.pi * t
  return radius * np.stack([np.cos(phase) - np.cos(start), np.sin(phase) - np.sin(start)], -1)


def make_example(rng: np.random.Generator, split: str, config) -> dict:
  t_len, h, w = config.num_frames, config.height, config.width
  photos = SPLIT_PHOTOS[split]
  name = photos[rng.integers(len(photos))]
  photo = scaled_photo(name, int(round(PHOTO_ZOOM * max(h, w))))
  photo_h, photo_w = photo.shape[:2]
  kind = int(rng.integers(2))
  offsets = trajectory(rng, kind, t_len, max(h, w))
  # A start such that the whole trajectory stays inside the photograph.
  low = -offsets.min(0)
  high = np.array([photo_w - w, photo_h - h]) - offsets.max(0)
  start = rng.uniform(low, np.maximum(high, low))
  position = np.clip(np.round(start + offsets).astype(np.int64), 0, [photo_w - w, photo_h - h])
  frames = np.stack([photo[y:y + h, x:x + w] for x, y in position])
  rows, cols = np.mgrid[:h, :w]
  ids = (position[:, 1, None, None] + rows) * photo_w + position[:, 0, None, None] + cols
  frame_cond = np.diff(position, axis=0, prepend=position[:1]).astype(np.float32)
  return procedural.finish_example(frames, ids, frame_cond, kind, config.revisit_horizon,
                                   photo_index=np.int64(PHOTOS.index(name)))


class PhotoPan(procedural.ProceduralBuilder):
  """A camera window panning over a larger real photograph (shipped with scikit-image and
  scikit-learn) on trajectories that leave a region and return; the test split uses photographs
  the train split never uses. label: 0 out-and-back, 1 loop. frame_cond: camera displacement
  (dx, dy) in pixels since the previous frame. photo_index: the photograph, in PHOTOS."""

  make_example = staticmethod(make_example)

  def extra_features(self):
    return {'photo_index': tfds.features.Tensor(shape=(), dtype=np.int64)}
