"""Model sizes shared by every config: `model_config(size)`."""

import ml_collections

# name: (image_size, patch, dim, ffn_dim, heads, layers, cond_dim)
SIZES = {
    'tiny': ((16, 16), 4, 32, 64, 2, 2, 16),     # tests and CI: compiles in seconds
    'small': ((32, 32), 4, 64, 256, 4, 2, 32),   # demo models trained on 2 CPU cores
    'base': ((32, 32), 4, 128, 512, 4, 4, 64),   # the benchmark size (PERF_NOTES)
}


def model_config(size: str = 'base') -> ml_collections.ConfigDict:
  if size not in SIZES:
    raise ValueError(f'Unknown model size {size!r}; choose one of {list(SIZES)}.')
  image_size, patch, dim, ffn, heads, layers, cond = SIZES[size]
  return ml_collections.ConfigDict(dict(
      image_size=image_size, channels=3, patch_size=patch, dim=dim, ffn_dim=ffn,
      num_heads=heads, num_layers=layers, freq_dim=256, cond_dim=cond, num_cond_tokens=4,
      num_classes=10, frame_cond_dim=0, eps=1e-6, rope_theta=10000.0, dtype='float32',
      scan_layers=True))
