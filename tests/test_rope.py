import jax
import jax.numpy as jnp
import numpy as np

from pafukv_jax.models.rope import apply_rope, rope_angles, rope_split, token_positions


def test_split_matches_wan():
  # Wan2.1 (head dim 128): 64 pairs -> 22 for time, 21 for height, 21 for width.
  assert rope_split(128) == (22, 21, 21)
  assert rope_split(32) == (6, 5, 5)


def test_rotation_matches_complex_multiplication():
  """Independent reference: adjacent channel pairs as complex numbers times exp(i angle)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 2, 5, 12)).astype(np.float32)  # [B, H, N, Dh]
  pos = rng.integers(0, 50, size=(1, 5, 3))
  angles = np.asarray(rope_angles(jnp.asarray(pos), 12))
  c = 6
  nt, nh, nw = c - 2 * (c // 3), c // 3, c // 3
  freqs = lambda n: 1.0 / 10000 ** (np.arange(0, 2 * n, 2) / (2 * n))
  want_angles = np.concatenate([pos[..., 0:1] * freqs(nt), pos[..., 1:2] * freqs(nh),
                                pos[..., 2:3] * freqs(nw)], axis=-1)
  np.testing.assert_allclose(angles, want_angles, rtol=1e-6)
  z = x[..., 0::2] + 1j * x[..., 1::2]
  rotated = z * np.exp(1j * want_angles)[:, None]
  want = np.stack([rotated.real, rotated.imag], axis=-1).reshape(x.shape)
  np.testing.assert_allclose(np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(angles))), want,
                             atol=1e-5)


def test_logits_depend_only_on_relative_position():
  key_q, key_k = jax.random.split(jax.random.key(0))
  q = jax.random.normal(key_q, (1, 1, 1, 32))
  k = jax.random.normal(key_k, (1, 1, 1, 32))
  logit = lambda pq, pk: float(jnp.sum(
      apply_rope(q, rope_angles(jnp.array([[pq]]), 32)) *
      apply_rope(k, rope_angles(jnp.array([[pk]]), 32))))
  base = logit((7, 2, 3), (3, 1, 0))
  for shift in [(1, 0, 0), (40, 0, 0), (0, 5, 0), (0, 0, 9), (100, 3, 2)]:
    shifted = logit(tuple(np.add((7, 2, 3), shift)), tuple(np.add((3, 1, 0), shift)))
    assert abs(shifted - base) < 1e-4 * max(1.0, abs(base))
  # and the relative position does matter
  assert abs(logit((8, 2, 3), (3, 1, 0)) - base) > 1e-3


def test_token_positions_layout():
  pos = np.asarray(token_positions(jnp.array([[5, 9]]), 2, 3))
  assert pos.shape == (1, 12, 3)
  np.testing.assert_array_equal(pos[0, :6, 0], 5)
  np.testing.assert_array_equal(pos[0, 6:, 0], 9)
  np.testing.assert_array_equal(pos[0, :6, 1], [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(pos[0, :6, 2], [0, 1, 2, 0, 1, 2])


def test_world_positions_make_a_scene_point_attend_by_its_place_not_the_path():
  """With world positions, the logit between two tokens that show the same scene point depends
  on their frames only, not on the camera path between them; a zero path gives the grid."""
  from pafukv_jax.models.rope import camera_path, rope_angles, token_positions
  gh = gw = 4
  patch = 4
  t = 5
  # two paths (dx, dy per frame, pixels) that end at the same place by different routes
  a = jnp.array([[0, 0], [4, 0], [4, 4], [-4, 0], [0, -4]], jnp.float32)
  b = jnp.array([[0, 0], [-8, 4], [12, -8], [0, 0], [0, 4]], jnp.float32)
  assert np.allclose(camera_path(a[None])[0, -1], camera_path(b[None])[0, -1])
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 1, t * gh * gw, 12)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, t * gh * gw, 12)), jnp.float32)
  frames = jnp.arange(t)[None]

  def logits(path):
    pos = token_positions(frames, gh, gw, camera_path(path[None]), patch)
    angles = rope_angles(pos, 12)
    return jnp.einsum('bhqd,bhkd->bhqk', apply_rope(q, angles), apply_rope(k, angles))[0, 0]

  la, lb = logits(a), logits(b)
  # frame 4's camera position is the same on both paths: its logits against frame 0 must be too
  last, first = slice(4 * 16, 5 * 16), slice(0, 16)
  np.testing.assert_allclose(la[last, first], lb[last, first], rtol=1e-4, atol=1e-4)
  assert float(jnp.max(jnp.abs(la[16:32, first] - lb[16:32, first]))) > 1e-2  # in between: not
  grid = token_positions(frames, gh, gw)
  np.testing.assert_array_equal(token_positions(frames, gh, gw, jnp.zeros((1, t, 2)), patch),
                                grid.astype(jnp.float32))
