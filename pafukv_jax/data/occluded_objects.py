"""`occluded_objects`: sprites that leave the view or hide behind an occluder, and come back.

A static camera looks at a static textured background. One to three sprites (random shape from
SHAPES, two random colours) move at constant velocity: horizontally they wrap around a world wider
than the view (they leave one side, stay hidden while they cross the unseen part, and re-enter on
the other side), vertically they bounce between the top and bottom of the view. A static vertical
bar in front of everything occludes whatever passes behind it. Motion is constant, hence predictable
from context; what a returning sprite looks like, and the background it uncovers, is known only
from far back. The first sprite starts in view and completes at least one full lap, so every video
has a sprite that leaves and returns.

label = number of sprites - 1 (0, 1 or 2). frame_cond is 0 (the camera does not move).
"""

import numpy as np
from PIL import Image

from pafukv_jax.data import procedural

SHAPES = ('square', 'disc', 'triangle', 'diamond', 'cross', 'ring')
MAX_SPRITES = 3
HIDDEN_WIDTH = 1.0          # width of the unseen part of the world, in view widths
FIRST_SPRITE_LAPS = (1.0, 1.5)   # laps of the world per video: it surely leaves and comes back
OTHER_SPRITE_LAPS = (0.6, 1.5)


def shape_mask(shape: str, size: int) -> np.ndarray:
  """bool [size, size]: the sprite's silhouette."""
  c = (size - 1) / 2
  y, x = np.mgrid[:size, :size]
  r = np.hypot(y - c, x - c)
  if shape == 'square':
    return np.ones((size, size), bool)
  if shape == 'disc':
    return r <= size / 2
  if shape == 'triangle':
    return np.abs(x - c) <= (y + 1) / 2
  if shape == 'diamond':
    return np.abs(x - c) + np.abs(y - c) <= size / 2
  if shape == 'cross':
    return (np.abs(x - c) <= size / 6) | (np.abs(y - c) <= size / 6)
  if shape == 'ring':
    return (r <= size / 2) & (r >= size / 4)
  raise ValueError(f'Unknown shape {shape!r}; choose one of {SHAPES}.')


def random_colour(rng: np.random.Generator) -> np.ndarray:
  """A saturated colour, so sprites stand out from the muted background."""
  rgb = rng.uniform(0, 60, 3)
  rgb[rng.permutation(3)[:2]] = rng.uniform([150, 0], [255, 255])
  return rgb


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, 3]: smooth muted colour blobs times a fine random stripe/checker pattern."""
  cells = rng.uniform(50, 160, (3, 3, 3)).astype(np.uint8)
  smooth = np.asarray(Image.fromarray(cells).resize((width, height), Image.Resampling.BILINEAR),
                      np.float32)
  y, x = np.mgrid[:height, :width]
  period = rng.integers(3, 7)
  pattern = [(x // period) % 2, (y // period) % 2, ((x + y) // period) % 2,
             ((x // period) + (y // period)) % 2][rng.integers(4)]
  return np.clip(smooth + 16 * (pattern[..., None] - 0.5), 0, 255).astype(np.uint8)


def triangle_wave(position: np.ndarray, low: float, high: float) -> np.ndarray:
  """Bounces a freely moving coordinate between low and high."""
  span = max(high - low, 1e-6)
  m = np.mod(position - low, 2 * span)
  return low + np.where(m <= span, m, 2 * span - m)


def make_example(rng: np.random.Generator, split: str, config) -> dict:
  del split  # the splits differ by their seed stream only
  t_len, h, w = config.num_frames, config.height, config.width
  frames = np.empty((t_len, h, w, 3), np.uint8)
  ids = np.empty((t_len, h, w), np.int64)
  background = textured_background(rng, h, w)
  static_ids = np.arange(h * w).reshape(h, w)  # a background (or occluder) pixel is its position

  occluder_width = int(rng.integers(max(2, w // 5), max(3, w // 3) + 1))
  occluder_x = int(rng.integers(0, w - occluder_width + 1))
  occluder = np.broadcast_to(rng.uniform(20, 90, 3), (h, occluder_width, 3)).copy()
  occluder[:, ::3] *= 0.5   # vertical stripes: it looks like a fence, not like background

  num_sprites = int(rng.integers(1, MAX_SPRITES + 1))
  small = min(h, w)
  sprites = []
  next_id = h * w
  for k in range(num_sprites):
    size = int(rng.integers(max(3, small // 4), max(4, int(small / 2.5)) + 1))
    mask = shape_mask(SHAPES[rng.integers(len(SHAPES))], size)
    texture = np.empty((size, size, 3))
    split_rows = rng.integers(2) == 0
    half = (np.arange(size) < size // 2)
    second = half[:, None] if split_rows else half[None, :]
    texture[:] = random_colour(rng)
    texture[np.broadcast_to(second, (size, size))] = random_colour(rng)
    world = w + max(size + 1, int(round(HIDDEN_WIDTH * w)))
    laps = rng.uniform(*(FIRST_SPRITE_LAPS if k == 0 else OTHER_SPRITE_LAPS))
    vx = laps * world / t_len * rng.choice([-1.0, 1.0])
    vy = rng.uniform(-0.3, 0.3) * abs(vx)
    x0 = rng.uniform(0, w - size) if k == 0 else rng.uniform(0, world)
    y0 = rng.uniform(0, h - size)
    sprites.append(dict(size=size, mask=mask, texture=texture.astype(np.uint8), world=world,
                        x=x0 + vx * np.arange(t_len),
                        y=triangle_wave(y0 + vy * np.arange(t_len), 0, h - size),
                        first_id=next_id))
    next_id += size * size

  for t in range(t_len):
    frame, frame_ids = background.copy(), static_ids.copy()
    for s in sprites:   # later sprites are drawn over earlier ones
      size = s['size']
      cols = (int(round(s['x'][t])) + np.arange(size)) % s['world']  # wrap around the world
      rows = int(round(s['y'][t])) + np.arange(size)
      v, u = np.nonzero(s['mask'] & (cols < w)[None, :])
      frame[rows[v], cols[u]] = s['texture'][v, u]
      frame_ids[rows[v], cols[u]] = s['first_id'] + v * size + u
    frame[:, occluder_x:occluder_x + occluder_width] = occluder.astype(np.uint8)
    frame_ids[:, occluder_x:occluder_x + occluder_width] = (
        static_ids[:, occluder_x:occluder_x + occluder_width])
    frames[t], ids[t] = frame, frame_ids
  return procedural.finish_example(frames, ids, np.zeros((t_len, procedural.FRAME_COND_DIM)),
                                   num_sprites - 1, config.revisit_horizon)


class OccludedObjects(procedural.ProceduralBuilder):
  """Sprites moving over a static textured background that leave the view or pass behind an
  occluder for many frames and come back. label = number of sprites - 1; frame_cond = 0 (static
  camera); revisit_mask marks content unseen for more than N frames (see pafukv_jax/data)."""

  make_example = staticmethod(make_example)
