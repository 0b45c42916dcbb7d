"""`fov`: keep what the planned camera path will see again (a non-learned policy).

When the whole camera path is known before generation (frame_cond, as in generation and in the
sweep), the scene point under every token is known, and so is every later frame whose view
contains it. Content that stays in view is refreshed by every new frame; what a cache must hold is
content the view leaves and comes back to. A token's score is the number of later frames that
show its patch's scene centre *after* the view has lost it at least once: what the path comes
back to stays, what it has left for good (or still shows) goes, newest first among equals (a
still camera gives a window). Context-as-Memory retrieves memory frames by field-of-view
overlap; this is that idea as a cache policy, a strong baseline wherever the path is planned,
against which a learned policy is to be compared.
"""

import jax.numpy as jnp

from pafukv_jax.models.rope import camera_path

# Among tokens that later frames see equally often the newer one stays (as in a window): a tie
# break far below one frame's count.
RECENCY_TIE_BREAK = 1e-3


def fov_scores(frame_cond, image_size, patch_size) -> jnp.ndarray:
  """Scores [B, T * S] (token order: frame-major, patches row-major) from the camera motion
  frame_cond [B, T, 2] ((dx, dy) pixels since the previous frame): for the token of patch p in
  frame f, the number of frames t > f whose view contains p's scene centre while some frame
  between f and t did not, plus a recency tie break."""
  h, w = image_size
  camera = camera_path(jnp.asarray(frame_cond, jnp.float32))               # [B, T, 2] (x, y)
  rows, cols = jnp.meshgrid(jnp.arange(h // patch_size), jnp.arange(w // patch_size),
                            indexing='ij')
  centre = (jnp.stack([cols, rows], -1).reshape(-1, 2) + 0.5) * patch_size  # [S, 2] (x, y)
  rel = camera[:, :, None, None] + centre[:, None] - camera[:, None, None]  # [B, T, S, T', 2]
  seen = (rel >= 0).all(-1) & (rel[..., 0] < w) & (rel[..., 1] < h)         # [B, T, S, T']
  t = camera.shape[1]
  later = (jnp.arange(t)[None, :] > jnp.arange(t)[:, None])[None, :, None]  # t' > f
  lost = ~seen & later
  lost_before = jnp.cumsum(lost, axis=-1) - lost                            # in (f, t')
  count = jnp.sum(seen & later & (lost_before > 0), axis=-1).astype(jnp.float32)
  count = count + RECENCY_TIE_BREAK * jnp.arange(t)[None, :, None] / t
  return count.reshape(count.shape[0], -1)
