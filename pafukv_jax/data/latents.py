"""A folder of precomputed clips as .npz files: VAE latents (or any float videos) with their
prompt embeddings, for models of real size whose inputs are computed outside this project.

Each `NAME.npz` under the folder (recursively; `train/` and `test/` sub-folders as for
dataset='folder') holds
  video             float [T, H, W, C]: Wan2.1 VAE latents (C = 16, H x W = 60 x 104 for
                    480 x 832 video; T = 21 for 81 frames), already normalised as the model takes
                    them; T >= num_frames, and each file gives the clips 0, num_frames, ... in it;
  prompt_embedding  optional float [L, D]: the prompt's umT5 embedding (L <= prompt_tokens;
                    zero-padded to prompt_tokens, as Wan pads to 512);
  label             optional int: a class label;
  frame_cond        optional float [T, D]: per-frame conditioning (camera motion).
Every file must carry the same optional arrays. Files are read when a clip is asked for, so
memory does not grow with the folder.
"""

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pafukv_jax import conditioning

OPTIONAL = (conditioning.PROMPT_KEY, 'label', 'frame_cond')


def npz_shapes(path) -> dict[str, tuple[int, ...]]:
  """{name: shape} of the arrays in an .npz, from their headers (no array is read)."""
  try:
    with zipfile.ZipFile(path) as z:
      shapes = {}
      for name in z.namelist():
        with z.open(name) as f:
          read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
              np.lib.format.read_magic(f), np.lib.format.read_array_header_2_0)
          shapes[name.removesuffix('.npy')] = read(f)[0]
      return shapes
  except (zipfile.BadZipFile, ValueError, OSError) as e:
    raise ValueError(f'{path} is not a readable .npz file ({e}): re-save it with np.savez.') from e


class LatentFolder(Sequence):
  """Clips of `num_frames` frames of shape image_size x channels from the .npz files under
  `folder`; examples carry `video` float32 and whichever OPTIONAL arrays the files hold."""

  def __init__(self, folder: str | os.PathLike, num_frames: int, image_size: tuple[int, int],
               channels: int | None = None, prompt_tokens: int = 512):
    folder = Path(folder).expanduser()
    if not folder.is_dir():
      raise FileNotFoundError(f'The latent folder {folder} does not exist: point data.folder at '
                              'a directory of .npz clips.')
    files = sorted(p for p in folder.rglob('*.npz') if p.is_file())
    if not files:
      raise FileNotFoundError(f'No .npz files under {folder}: dataset=latents reads clips saved '
                              'as NAME.npz with a `video` array [T, H, W, C].')
    self.num_frames, self.prompt_tokens = num_frames, prompt_tokens
    self.files, self.clips, keys = files, [], {}
    for i, path in enumerate(files):
      shapes = npz_shapes(path)
      if 'video' not in shapes:
        raise ValueError(f'{path} holds {sorted(shapes)}: dataset=latents needs a `video` array '
                         '[T, H, W, C].')
      shape = shapes['video']
      keys[path] = tuple(k for k in OPTIONAL if k in shapes)
      if len(shape) != 4 or tuple(shape[1:3]) != tuple(image_size) or (
          channels is not None and shape[3] != channels):
        raise ValueError(f'{path}: `video` is {shape}; the config wants [T, '
                         f'{image_size[0]}, {image_size[1]}, {channels or "C"}] '
                         '(data.image_size, model.channels). Latents are not resized: set those '
                         'fields to the latents\' shape.')
      if shape[0] < num_frames:
        raise ValueError(f'{path} has {shape[0]} frames, fewer than a clip of data.num_frames='
                         f'{num_frames}: lower num_frames or remove the file.')
      self.clips += [(i, start) for start in range(0, shape[0] - num_frames + 1, num_frames)]
    kinds = set(keys.values())
    if len(kinds) > 1:
      first, other = files[0], next(p for p in files if keys[p] != keys[files[0]])
      raise ValueError(f'The .npz files do not carry the same arrays: {first} has '
                       f'{list(keys[first])}, {other} has {list(keys[other])}.')
    self.keys = kinds.pop()

  def __len__(self) -> int:
    return len(self.clips)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    file, start = self.clips[index]
    path, clip = self.files[file], slice(start, start + self.num_frames)
    with np.load(path) as f:
      out = {'video': np.asarray(f['video'][clip], np.float32)}
      if conditioning.PROMPT_KEY in self.keys:
        out[conditioning.PROMPT_KEY] = conditioning.pad_prompt(
            f[conditioning.PROMPT_KEY], self.prompt_tokens, str(path))
      if 'label' in self.keys:
        out['label'] = np.int64(f['label'])
      if 'frame_cond' in self.keys:
        out['frame_cond'] = np.asarray(f['frame_cond'][clip], np.float32)
    return out
