"""A latent model's videos as pixels: the VAE checked against the model, latents decoded chunk by
chunk, and the latent timeline (context frames, revisit masks) mapped onto the pixel one.

Latents here are the DiT's (normalised, as dataset='latents' stores them and a latent model
generates them); the decoded videos are float32 [T, H, W, 3] in [-1, 1] with
T = 1 + 4 (n - 1) for n latent frames (4: the VAE's temporal factor).
"""

import numpy as np

from pafukv_jax import progress
from pafukv_jax.vae import codec, weights
from pafukv_jax.vae.config import VaeConfig


def check_vae(path: str, channels: int, field: str = 'vae') -> VaeConfig:
  """The VaeConfig at `path` (no weights read) if it decodes a model of `channels` latent
  channels; else a ValueError naming both numbers."""
  cfg = weights.read_vae_config(path)
  if cfg.z_dim != channels:
    raise ValueError(f'{field}={path} has z_dim {cfg.z_dim} latent channels, but the model has '
                     f'model.channels={channels}: give the VAE the model\'s latents were encoded '
                     'with (or the model trained on this VAE\'s latents).')
  return cfg


def load_vae(path: str, channels: int, field: str = 'vae'):
  """The VAE at `path`, checked against the model (check_vae) before its weights are read."""
  check_vae(path, channels, field)
  return weights.load_vae(path)


def pixel_frames(cfg: VaeConfig, latent_frames: int) -> int:
  """Video frames decoded from `latent_frames` latent frames (0 for 0)."""
  return 0 if latent_frames <= 0 else 1 + cfg.temporal_factor * (latent_frames - 1)


def latent_index(cfg: VaeConfig, num_pixel_frames: int) -> np.ndarray:
  """For each video frame, the latent frame it is decoded from: 0 for frame 0, then each latent
  frame for the next temporal_factor frames (the decoder is causal: a frame depends on its own
  latent frame and earlier ones only)."""
  f = np.arange(num_pixel_frames)
  return np.where(f == 0, 0, (f - 1) // cfg.temporal_factor + 1)


def upsample_mask(cfg: VaeConfig, mask: np.ndarray) -> np.ndarray:
  """A per-latent-pixel mask [N, n, h, w] on the decoded timeline [N, 1 + 4 (n - 1), 8h, 8w]."""
  s = cfg.spatial_factor
  mask = np.asarray(mask)[:, latent_index(cfg, pixel_frames(cfg, mask.shape[1]))]
  return mask.repeat(s, axis=2).repeat(s, axis=3)


def decode_video(vae, latents) -> np.ndarray:
  """Latents [n, h, w, z_dim] (the DiT's) -> float32 [1 + 4 (n - 1), 8h, 8w, 3] in [-1, 1],
  through the chunked decoder (memory: one latent frame's activations, whatever n)."""
  chunks = codec.decode_chunks(vae, np.asarray(latents, np.float32)[None], normalized=True)
  return np.concatenate([np.asarray(c[0], np.float32) for c in chunks])


def decode_videos(vae, latents, desc: str = 'decode', uint8: bool = False) -> np.ndarray:
  """Latents [N, n, h, w, z_dim] -> float32 [N, 1 + 4 (n - 1), 8h, 8w, 3], one video at a time
  (one compile for all), with a progress bar; `uint8`: as video_io.to_uint8 gives them (a
  quarter of the memory, for writing)."""
  from pafukv_jax import video_io  # pylint: disable=g-import-not-at-top
  out = []
  with progress.progress(len(latents), desc, 'video') as bar:
    for video in latents:
      pixels = decode_video(vae, video)
      out.append(video_io.to_uint8(pixels) if uint8 else pixels)
      bar.update(1)
  return np.stack(out)
