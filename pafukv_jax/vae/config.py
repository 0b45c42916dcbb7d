"""VaeConfig: the static description of a Wan2.1 VAE, as diffusers' AutoencoderKLWan config.json
gives it (its field names, its defaults: Wan2.1's own VAE)."""

import dataclasses
import json
import os

# Wan2.1's per-channel latent statistics (diffusers' defaults; Wan's `WanVAE.mean` and `.std`)
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


class NotAWanVae(ValueError):
  """A config or weight file that is not a Wan2.1 VAE this package reads (says why)."""


@dataclasses.dataclass(frozen=True)
class VaeConfig:
  """diffusers' AutoencoderKLWan fields (`temperal` is its spelling). The defaults are Wan2.1's
  VAE: 8x spatial and 4x temporal compression to 16 channels."""
  base_dim: int = 96
  decoder_base_dim: int | None = None  # None: base_dim
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  dropout: float = 0.0  # training only; inference has none
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD
  is_residual: bool = False   # Wan2.2's VAE: not supported
  in_channels: int = 3
  out_channels: int = 3
  patch_size: int | None = None  # Wan2.2's VAE: not supported
  scale_factor_temporal: int = 4
  scale_factor_spatial: int = 8

  @property
  def decoder_dim(self) -> int:
    return self.decoder_base_dim or self.base_dim

  @property
  def temporal_factor(self) -> int:
    """Video frames per latent frame after the first (2 per temporal down/upsampling)."""
    return 2 ** sum(self.temperal_downsample)

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  def validate(self) -> 'VaeConfig':
    problems = []
    if self.is_residual:
      problems.append('is_residual: Wan2.2\'s residual VAE is not supported (Wan2.1\'s only)')
    if self.patch_size not in (None, 1):
      problems.append(f'patch_size {self.patch_size}: Wan2.2\'s patchified VAE is not supported')
    if self.attn_scales:
      problems.append(f'attn_scales {list(self.attn_scales)}: Wan2.1 has no attention outside the '
                      'middle blocks (and diffusers\' decoder ignores them)')
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      problems.append(f'temperal_downsample has {len(self.temperal_downsample)} entries for '
                      f'{len(self.dim_mult)} levels (one per downsampling)')
    if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
      problems.append(f'latents_mean and latents_std need z_dim = {self.z_dim} entries '
                      f'(have {len(self.latents_mean)} and {len(self.latents_std)})')
    if any(s <= 0 for s in self.latents_std):
      problems.append('latents_std must be positive')
    if self.temporal_factor != self.scale_factor_temporal or \
        self.spatial_factor != self.scale_factor_spatial:
      problems.append(f'scale factors {self.scale_factor_temporal}, {self.scale_factor_spatial} '
                      f'do not match the layers\' {self.temporal_factor}, {self.spatial_factor}')
    if problems:
      raise NotAWanVae('unsupported VAE config: ' + '; '.join(problems))
    return self

  @classmethod
  def from_diffusers(cls, config: dict) -> 'VaeConfig':
    """From an AutoencoderKLWan config.json dict; unknown fields and other classes refused."""
    cls_name = config.get('_class_name', 'AutoencoderKLWan')
    if cls_name != 'AutoencoderKLWan':
      raise NotAWanVae(f'the config describes a {cls_name!r}, not an AutoencoderKLWan.')
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in config.items() if not k.startswith('_')}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise NotAWanVae(f'unknown AutoencoderKLWan config fields {unknown} (known: '
                       f'{sorted(fields)}).')
    for key in ('dim_mult', 'attn_scales', 'temperal_downsample', 'latents_mean', 'latents_std'):
      if key in values:
        values[key] = tuple(values[key])
    return cls(**values).validate()

  @classmethod
  def from_json(cls, path: str) -> 'VaeConfig':
    try:
      with open(path) as f:
        return cls.from_diffusers(json.load(f))
    except json.JSONDecodeError as e:
      raise NotAWanVae(f'{path} is not valid JSON ({e}).')

  def to_diffusers(self) -> dict:
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
    return {'_class_name': 'AutoencoderKLWan', **out}


def read_config(directory: str) -> VaeConfig:
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    raise NotAWanVae(f'{directory} has no config.json: give the vae/ directory of a diffusers '
                     'Wan2.1 model.')
  return VaeConfig.from_json(path)
