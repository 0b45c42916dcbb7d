"""Video metrics against skimage and NumPy references; plots and side-by-side videos on disk."""

import imageio.v3 as iio
import numpy as np
from PIL import Image
import pytest
import skimage.data
import skimage.metrics

from pafukv_jax import video_io
from pafukv_jax.evaluation import plots
from pafukv_jax.evaluation.video_metrics import (masked_psnr, nanmean_over_frames,
                                                 pooled_masked_psnr, psnr, ssim)

# Ours run in float32, skimage in float64. PSNR: a relative MSE error ~1e-6 is ~4e-6 dB (measured
# max 2.1e-6 dB), so 1e-4 dB. SSIM: float32 rounding of the local moments (E[x^2] - mu^2), damped
# by c1 and c2; measured max 1.6e-6 on these images, so 1e-5. Both are far below the effects that
# matter (a data-range mistake moves PSNR by 6 dB, SSIM on [-1, 1] instead of [0, 1] by > 0.02).
PSNR_ATOL_DB = 1e-4
SSIM_ATOL = 1e-5


def _noisy(rng, a, scale):
  return np.clip(a + rng.normal(0.0, scale, a.shape), -1.0, 1.0)


def _pairs():
  """(name, a, b) with a, b [2, 3, H, W, 3] in [-1, 1]: noise, and photographs with flat areas."""
  rng = np.random.default_rng(0)
  noise = rng.uniform(-1.0, 1.0, (2, 3, 24, 32, 3))
  photo = skimage.data.astronaut()[::4, ::4].astype(np.float64) / 127.5 - 1.0  # 128x128
  pan = np.stack([photo[10 + 6 * t: 58 + 6 * t, 20 + 4 * t: 84 + 4 * t] for t in range(6)])
  pan = pan.reshape(2, 3, 48, 64, 3)
  pan_b = _noisy(rng, pan, 0.05)
  pan[..., :12, :16, :] = pan_b[..., :12, :16, :] = 0.3  # a flat, equal corner
  pan_b[..., 30:, 40:, :] = -1.0  # a flat, wrong patch
  return [('noise', noise, _noisy(rng, noise, 0.2)), ('photo', pan, pan_b)]


def _skimage_per_frame(metric, a, b):
  frames = lambda x: x.reshape((-1,) + x.shape[-3:])
  return np.array([metric(x, y) for x, y in zip(frames(a), frames(b))]).reshape(a.shape[:-3])


def test_psnr_and_ssim_match_skimage():
  for name, a, b in _pairs():
    got_psnr, got_ssim = np.asarray(psnr(a, b)), np.asarray(ssim(a, b))
    assert got_psnr.shape == got_ssim.shape == (2, 3), name
    # PSNR on [-1, 1] with data_range 2 is the PSNR of the frames in [0, 1].
    want_psnr = _skimage_per_frame(
        lambda x, y: skimage.metrics.peak_signal_noise_ratio(x, y, data_range=2.0), a, b)
    # SSIM's luminance term is not shift-invariant, so the convention is images in [0, 1].
    want_ssim = _skimage_per_frame(
        lambda x, y: skimage.metrics.structural_similarity(
            (x + 1) / 2, (y + 1) / 2, data_range=1.0, channel_axis=-1, gaussian_weights=True,
            sigma=1.5, use_sample_covariance=False), a, b)
    np.testing.assert_allclose(got_psnr, want_psnr, rtol=0, atol=PSNR_ATOL_DB, err_msg=name)
    np.testing.assert_allclose(got_ssim, want_ssim, rtol=0, atol=SSIM_ATOL, err_msg=name)
    assert np.ptp(want_ssim) > 10 * SSIM_ATOL, name  # frames differ, so the check sees each one


def test_identical_frames_and_single_frame():
  _, a, _ = _pairs()[1]
  assert np.all(np.isinf(np.asarray(psnr(a, a))))
  np.testing.assert_allclose(np.asarray(ssim(a, a)), 1.0, atol=1e-6)
  assert psnr(a[0, 0], a[0, 1]).shape == ssim(a[0, 0], a[0, 1]).shape == ()


def test_bad_inputs_raise():
  a = np.zeros((2, 16, 16, 3), np.float32)
  with pytest.raises(ValueError, match='same shape'):
    psnr(a, a[:1])
  with pytest.raises(ValueError, match='smaller than the 11x11'):
    ssim(a[:, :8], a[:, :8])
  with pytest.raises(ValueError, match='uint8'):
    psnr(a.astype(np.uint8), a.astype(np.uint8))
  with pytest.raises(ValueError, match=r'mask must have the shape \[\.\.\., H, W\]'):
    masked_psnr(a, a, np.ones((2, 16, 16, 3), bool))


def _masks(rng, shape):
  """Random masks [B, T, H, W] with a few empty frames and one full frame."""
  mask = rng.uniform(size=shape) < 0.3
  mask[0, 1] = False
  mask[1, 2] = False
  mask[1, 0] = True
  return mask


def test_masked_psnr_matches_numpy_by_hand():
  rng = np.random.default_rng(1)
  _, a, b = _pairs()[1]
  mask = _masks(rng, a.shape[:-1])
  got = np.asarray(masked_psnr(a, b, mask))
  want = np.full(mask.shape[:2], np.nan)
  for i in np.ndindex(mask.shape[:2]):
    if mask[i].any():
      error = (a[i][mask[i]] - b[i][mask[i]]) / 2.0  # [pixels, C] on the [0, 1] scale
      want[i] = 10 * np.log10(1.0 / np.mean(error ** 2))
  assert np.isnan(got[0, 1]) and np.isnan(got[1, 2])
  np.testing.assert_allclose(got, want, rtol=0, atol=PSNR_ATOL_DB)
  # A full mask is plain PSNR; the mask may be 0/1 floats.
  np.testing.assert_allclose(got[1, 0], np.asarray(psnr(a[1, 0], b[1, 0])), atol=PSNR_ATOL_DB)
  full = np.asarray(masked_psnr(a, b, np.ones(mask.shape, np.float32)))
  np.testing.assert_allclose(full, np.asarray(psnr(a, b)), rtol=0, atol=PSNR_ATOL_DB)
  # Aggregation over frames skips the empty ones.
  want_mean = [np.mean([v for v in row if not np.isnan(v)]) for row in want]
  np.testing.assert_allclose(np.asarray(nanmean_over_frames(got)), want_mean, atol=PSNR_ATOL_DB)


def test_pooled_masked_psnr_ignores_empty_frames():
  rng = np.random.default_rng(2)
  _, a, b = _pairs()[1]
  mask = _masks(rng, a.shape[:-1])
  got = np.asarray(pooled_masked_psnr(a, b, mask))
  want = [10 * np.log10(1.0 / np.mean(((a[c][mask[c]] - b[c][mask[c]]) / 2.0) ** 2))
          for c in range(2)]
  assert got.shape == (2,)
  np.testing.assert_allclose(got, want, rtol=0, atol=PSNR_ATOL_DB)
  # Ruining the frames with empty masks changes nothing; an all-empty clip has no score.
  ruined = b.copy()
  ruined[0, 1], ruined[1, 2] = -a[0, 1], -a[1, 2]
  np.testing.assert_allclose(np.asarray(pooled_masked_psnr(a, ruined, mask)), got,
                             atol=PSNR_ATOL_DB)
  mask[0] = False
  assert np.isnan(np.asarray(pooled_masked_psnr(a, b, mask))[0])
  with pytest.raises(ValueError, match='clips'):
    pooled_masked_psnr(a[0, 0], b[0, 0], mask[0, 0])


def test_line_plot_writes_png(tmp_path):
  path = str(tmp_path / 'quality_vs_budget.png')
  plots.line_plot(path, {'fifo': ([1, 2, 4], [20.0, 22.0, 25.0]),
                         'learned': ([1, 2, 4], [21.0, np.nan, np.inf])},
                  xlabel='cache budget (frames)', ylabel='PSNR (dB)', title='quality vs budget')
  with Image.open(path) as image:
    assert image.format == 'PNG'
    pixels = np.asarray(image.convert('RGB')).reshape(-1, 3).astype(int)
  assert pixels.shape[0] > 0 and len(np.unique(pixels, axis=0)) > 1
  for colour in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):  # matplotlib's first two line colours
    assert np.any(np.abs(pixels - colour).max(axis=1) <= 8), colour
  with pytest.raises(ValueError, match='equal length'):
    plots.line_plot(path, {'fifo': ([1, 2], [3.0])}, 'x', 'y', 't')


def test_side_by_side_panels_equal_upscaled_inputs():
  rng = np.random.default_rng(3)
  t, h, w, scale = 3, 5, 7, 2
  videos = {'ground truth': rng.uniform(-1, 1, (t, h, w, 3)),
            'fifo': rng.uniform(-1, 1, (t, h, w, 1)),  # grey panels become RGB
            'pafu-kv': rng.uniform(-1, 1, (t, h, w, 3))}
  out = video_io.side_by_side(videos, scale=scale)
  strip = out.shape[1] - h * scale
  assert out.dtype == np.uint8 and 6 <= strip <= 40
  assert out.shape == (t, strip + h * scale, 3 * w * scale + 2 * video_io.SEPARATOR_WIDTH, 3)
  rows, cols = np.arange(h * scale) // scale, np.arange(w * scale) // scale
  for k, video in enumerate(videos.values()):
    left = k * (w * scale + video_io.SEPARATOR_WIDTH)
    want = np.round((video + 1) * 127.5).astype(np.uint8)[:, rows][:, :, cols]
    np.testing.assert_array_equal(out[:, strip:, left:left + w * scale],
                                  np.broadcast_to(want, want.shape[:-1] + (3,)))
    label = out[:, :strip, left:left + w * scale]
    assert len(np.unique(label)) > 1 and np.all(label == label[:1])  # text, the same each frame
    if k:
      assert np.all(out[:, :, left - video_io.SEPARATOR_WIDTH:left] == 255)
  with pytest.raises(ValueError, match=r'same \[T, H, W\]'):
    video_io.side_by_side({'a': videos['fifo'], 'b': videos['fifo'][:2]}, scale=1)


def test_side_by_side_marks_given_and_generated_frames():
  videos = {'full': np.zeros((4, 8, 8, 3)), 'window 2f': np.zeros((4, 8, 8, 3))}
  plain = video_io.side_by_side(videos, scale=4)
  marked = video_io.side_by_side(videos, scale=4, given_frames=2)
  strip = marked.shape[1] - plain.shape[1]
  np.testing.assert_array_equal(marked[:, :plain.shape[1]], plain)
  below = marked[:, plain.shape[1]:]
  assert strip > 0 and below.shape[2] == plain.shape[2]
  for t, frame in enumerate(below.reshape(4, -1, 3).astype(int)):  # the text: grey, then orange
    text = frame[frame.sum(1) > 0]
    assert len(text)
    orange = np.any(text[:, 0] - text[:, 2] > 50)  # (anti-aliased: compare channels, not values)
    assert orange == (t >= 2) and (orange or np.all(text[:, 0] == text[:, 2]))
  assert not np.array_equal(below[2], below[3])  # each frame says its own index


def test_a_policy_has_one_colour_in_every_plot():
  from pafukv_jax.evaluation import plots
  style = plots.series_style
  assert style('window')['color'] == style('window 4f')['color'] == style('window@frame')['color']
  assert style('full')['color'] == style('full (whole video)')['color']
  assert style('window@frame')['linestyle'] == '--' and 'linestyle' not in style('window')
  from pafukv_jax.cache.policies import POLICIES
  assert len({style(p)['color'] for p in POLICIES}) == len(POLICIES)


# ffmpeg runs in a subprocess (fork, then exec at once), which JAX warns about needlessly.
@pytest.mark.filterwarnings('ignore:os.fork')
def test_write_video_round_trips_frame_count(tmp_path):
  # Distinct grey levels per frame: Pillow merges identical GIF frames, and the order is checked.
  levels = np.array([30, 90, 150, 210, 250])
  frames = np.broadcast_to(levels[:, None, None, None], (5, 21, 35, 3)).astype(np.uint8)
  for extension, size in (('.gif', (21, 35)), ('.mp4', (22, 36))):  # H.264 pads to even sizes
    path = str(tmp_path / f'clip{extension}')
    video_io.write_video(path, frames, fps=8)
    back = iio.imread(path, index=None)
    assert back.shape == (5,) + size + (3,), extension
    np.testing.assert_allclose(back.mean(axis=(1, 2, 3)), levels, atol=4, err_msg=extension)
  with pytest.raises(ValueError, match='.gif or .mp4'):
    video_io.write_video(str(tmp_path / 'clip.avi'), frames, fps=8)
  with pytest.raises(ValueError, match='to_uint8'):
    video_io.write_video(str(tmp_path / 'clip.gif'), frames.astype(np.float32), fps=8)
