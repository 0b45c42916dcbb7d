"""A latent sweep scored in pixel space: its runs' latents, the `full` reference's and the held-out
clips' decoded by the VAE, on the decoded timeline (n latent frames: 1 + 4 (n - 1) frames, the
given ones those the context's latent frames decode to). The runs on disk keep their latents.
"""

from pafukv_jax.evaluation.report import GROUND_TRUTH
from pafukv_jax.vae import pixels


class PixelSpace:
  """Decodes each video set once: the ground truth and every seed's `full` run are kept (every
  run of that seed is scored against it), other runs are decoded, scored and dropped."""

  def __init__(self, vae, clips: dict, context_frames: int, num_frames: int):
    self.vae, self.latent_clips = vae, clips
    self.context = pixels.pixel_frames(vae.cfg, context_frames)
    self.timeline = (self.context, pixels.pixel_frames(vae.cfg, num_frames))
    self._kept, self._clips = {}, None

  def decoded(self, name: str, videos, keep: bool = True):
    """The VAE's pixels [N, T, H, W, 3] in [-1, 1] of latent `videos` [N, n, h, w, z] (named
    by their run)."""
    if name in self._kept:
      return self._kept[name]
    out = pixels.decode_videos(self.vae, videos, f'decode {name}')
    if keep:
      self._kept[name] = out
    return out

  def clips(self) -> dict:
    """The held-out clips on the decoded timeline: `video` decoded, `revisit_mask` upsampled."""
    if self._clips is None:
      self._clips = dict(self.latent_clips, revisit_mask=pixels.upsample_mask(
          self.vae.cfg, self.latent_clips['revisit_mask']))
      self._clips['video'] = self.decoded(GROUND_TRUTH, self.latent_clips['video'])
    return self._clips

  def score_args(self, name: str, videos, full_name: str, full_videos) -> tuple:
    """scores.score_run's (videos, full, clips, context_frames) in pixels for the run `name`."""
    gen = self.decoded(name, videos, keep=name == full_name)
    ref = gen if name == full_name else self.decoded(full_name, full_videos)
    return gen, ref, self.clips(), self.context

  def compare(self, compare: dict, shown: int) -> dict:
    """The side-by-side videos' runs (policy -> latents), their first `shown` clips decoded."""
    return {p: pixels.decode_videos(self.vae, v[:shown], f'decode {p}') for p, v in compare.items()}
