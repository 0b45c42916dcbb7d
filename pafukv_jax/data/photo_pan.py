"""`photo_pan`: a camera window moving over a larger real photograph, away and back again.

The photographs are the ones shipped inside scikit-image (`skimage.data`) and scikit-learn
(`load_sample_images`), so nothing is downloaded. The test split uses photographs the train split
never uses (TEST_PHOTOS). Each photograph is resized so its shorter side is PHOTO_ZOOM times the
larger side of the view; the camera moves by whole pixels (frames are exact crops) along a
trajectory that leaves a region and returns to it. The families (the config's `trajectories`;
by default the first two, the label is the family's index in TRAJECTORIES):
  0 out_and_back: straight out in a random direction, then straight back to the start;
  1 loop: once around a circle, back to the start on the last frame;
  2 waypoints: from the start to a waypoint W (the view leaves the start), out to a far point and
    back to W. What returns was first seen in the middle of the clip: neither the first frames
    (a sink) nor the last ones (a window) hold it, so no heuristic cache wins by construction.
frame_cond[t] = (dx, dy), the camera displacement in pixels since frame t-1 (the image content
moves by the opposite amount), so continuing a video has one ground truth. With the config's
camera_step = the model's patch size, the camera stops on whole patches: a patch token shows the
very pixels some earlier token of the same scene position showed, so memory is a lookup. Extra feature:
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
TRAJECTORIES = ('out_and_back', 'loop', 'waypoints')
DEFAULT_TRAJECTORIES = ('out_and_back', 'loop')
WAYPOINT_TIMES = (0.3, 0.65)      # waypoints: at W, then at the far point (fractions of the clip)
WAYPOINT_TRIES = 1000


def parse_trajectories(spec: str) -> tuple[str, ...]:
  """'out_and_back,waypoints' -> the families drawn ('' = DEFAULT_TRAJECTORIES)."""
  names = tuple(n.strip() for n in spec.split(',') if n.strip()) or DEFAULT_TRAJECTORIES
  unknown = [n for n in names if n not in TRAJECTORIES]
  if unknown or len(set(names)) != len(names):
    raise ValueError(f'trajectories={spec!r}: give distinct names of {TRAJECTORIES}, separated by '
                     f'commas (e.g. "out_and_back,loop,waypoints"); unknown: {unknown}.')
  return names


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


def trajectory(rng: np.random.Generator, kind: int, num_frames: int, view: int,
               room=None) -> np.ndarray:
  """float [T, 2] camera offsets (x, y) from the first frame, in pixels, of family
  TRAJECTORIES[kind]; room (x, y): how far the camera may move inside the photograph (waypoints)."""
  t = np.arange(num_frames) / max(num_frames - 1, 1)
  if TRAJECTORIES[kind] == 'out_and_back':   # a tent from 0 to 1 and back to 0
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    direction /= np.abs(direction).max()   # the distance along the main axis: the view leaves
    reach = 1 - np.abs(1 - 2 * t)
    return reach[:, None] * rng.uniform(*OUT_DISTANCE) * view * direction
  if TRAJECTORIES[kind] == 'waypoints':
    start, waypoint, far = _waypoints(rng, view, room)
    knots = np.array([0.0, *WAYPOINT_TIMES, 1.0])
    points = np.stack([start, waypoint, far, waypoint])
    path = np.stack([np.interp(t, knots, points[:, i]) for i in range(2)], -1)
    return path - start
  radius = rng.uniform(*LOOP_RADIUS) * view
  start = rng.uniform(0, 2 * np.pi)
  phase = start + rng.choice([-1.0, 1.0]) * 2 * np.pi * t
  return radius * np.stack([np.cos(phase) - np.cos(start), np.sin(phase) - np.sin(start)], -1)


def _waypoints(rng, view, room):
  """Start S, waypoint W and far point F inside `room` such that the way W -> F -> W never shows
  what the way S -> W showed before it neared W (views at least a view apart along some axis):
  S's content is in the first frames only, W's around WAYPOINT_TIMES[0] and at the end."""
  along = np.linspace(0, 1, 33)[:, None]
  for _ in range(WAYPOINT_TRIES):
    s, w, f = rng.uniform(0, room, size=(3, 2))
    approach = s + along * (w - s)
    approach = approach[np.abs(approach - w).max(-1) >= view]   # before the view reaches W
    away = w + along * (f - w)
    gaps = np.abs(away[:, None] - approach[None]).max(-1)
    if len(approach) and np.abs(f - w).max() >= view and gaps.min() >= view:
      return s, w, f
  raise ValueError(f'waypoints: the photograph leaves the camera room {tuple(room)} px, too '
                   f'little for three views of {view} px apart; raise PHOTO_ZOOM.')


def make_example(rng: np.random.Generator, split: str, config) -> dict:
  t_len, h, w = config.num_frames, config.height, config.width
  photos = SPLIT_PHOTOS[split]
  name = photos[rng.integers(len(photos))]
  photo = scaled_photo(name, int(round(PHOTO_ZOOM * max(h, w))))
  photo_h, photo_w = photo.shape[:2]
  families = parse_trajectories(config.trajectories)
  kind = TRAJECTORIES.index(families[rng.integers(len(families))])
  room = np.array([photo_w - w, photo_h - h], np.float64)
  offsets = trajectory(rng, kind, t_len, max(h, w), room)
  # A start such that the whole trajectory stays inside the photograph.
  low = -offsets.min(0)
  high = room - offsets.max(0)
  start = rng.uniform(low, np.maximum(high, low))
  step = config.camera_step   # positions on a grid of `step` pixels (the patch size: the scene
  top = (room // step).astype(np.int64) * step   # point of a token is then a whole patch)
  position = np.clip(np.round((start + offsets) / step).astype(np.int64) * step, 0, top)
  frames = np.stack([photo[y:y + h, x:x + w] for x, y in position])
  rows, cols = np.mgrid[:h, :w]
  ids = (position[:, 1, None, None] + rows) * photo_w + position[:, 0, None, None] + cols
  frame_cond = np.diff(position, axis=0, prepend=position[:1]).astype(np.float32)
  return procedural.finish_example(frames, ids, frame_cond, kind, config.revisit_horizon,
                                   photo_index=np.int64(PHOTOS.index(name)))


class PhotoPan(procedural.ProceduralBuilder):
  """A camera window panning over a larger real photograph (shipped with scikit-image and
  scikit-learn) on trajectories that leave a region and return; the test split uses photographs
  the train split never uses. label: the trajectory family, its index in TRAJECTORIES (0
  out_and_back, 1 loop, 2 waypoints; the config's `trajectories` picks those drawn). frame_cond: camera displacement
  (dx, dy) in pixels since the previous frame. photo_index: the photograph, in PHOTOS."""

  make_example = staticmethod(make_example)
  STATIC_SCENE = True

  @classmethod
  def check_config(cls, config):
    parse_trajectories(config.trajectories)
    if config.camera_step > min(config.height, config.width):
      raise ValueError(f'camera_step={config.camera_step} px is more than the view '
                       f'({config.height}x{config.width}): use the patch size, e.g. 4.')

  def extra_features(self):
    return {'photo_index': tfds.features.Tensor(shape=(), dtype=np.int64)}
