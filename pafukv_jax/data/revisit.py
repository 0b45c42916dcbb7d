"""The mask of revisited content: what a frame shows that was last seen long before.

Every pixel of a procedural video carries a content id: the point of the world it shows (a texel of
a sprite, a pixel of the static background, a pixel of the photograph under the camera). Content is
*revisited* at frame t when it is visible at t and, the last time it was visible before its current
continuous run of visibility began, that was more than `horizon` frames earlier. The mark lasts for
the whole run: a model that forgot the content at its return frame b keeps copying its own wrong
guess from frame b on, so every frame of the run measures memory. Content seen for the first time is
new, not revisited, and is never marked.
"""

import numpy as np

UNTRACKED = -1  # a content id of pixels that are never marked (any negative id is untracked)


def revisit_mask(content_ids: np.ndarray, horizon: int) -> np.ndarray:
  """content_ids [T, H, W] int (>= 0; negative = UNTRACKED); returns bool [T, H, W].

  Pixel (t, y, x) is True when its content was visible before, and its current run of
  visibility began at frame b whose previous sighting a satisfies b - a > horizon. So content
  last visible at frame a that returns at frame b is marked from b on (while it stays visible)
  exactly when b - a > horizon; with b - a <= horizon it is never marked.
  """
  ids = np.asarray(content_ids)
  if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'content_ids must be an integer array [T, H, W]; got {ids.dtype} {ids.shape}.')
  if horizon < 1:
    raise ValueError(f'horizon must be >= 1 frame (content seen in the previous frame is never a '
                     f'revisit); got {horizon}.')
  num_ids = int(ids.max(initial=UNTRACKED)) + 1
  last_seen = np.full(num_ids + 1, -1, np.int64)      # last frame each id was visible (-1: never)
  run_is_revisit = np.zeros(num_ids + 1, bool)        # the mark of each id's current run
  mask = np.zeros(ids.shape, bool)
  for t in range(ids.shape[0]):
    frame = ids[t].reshape(-1)
    tracked = frame >= 0
    visible = np.unique(frame[tracked])
    starts_run = last_seen[visible] != t - 1           # not visible in the previous frame
    seen_before = last_seen[visible] >= 0
    gap = t - last_seen[visible]
    new_runs = visible[starts_run]
    run_is_revisit[new_runs] = (seen_before & (gap > horizon))[starts_run]
    last_seen[visible] = t
    mask[t] = np.where(tracked, run_is_revisit[np.maximum(frame, 0)], False).reshape(ids.shape[1:])
  return mask
