"""Encodes a folder of videos once with the Wan2.1 VAE into the latent clips of dataset='latents'.

  python -m pafukv_jax.vae.prepare --vae=PATH --videos=DIR --out=DIR [--num_frames=N] [--size=HxW]

Every video under DIR (recursively, dataset='folder''s formats) becomes OUT/<same path>.npz in
the format of pafukv_jax/data/latents.py: `video`, its normalised latents [1 + k, H/8, W/8, z_dim]
(as the DiT takes them), and its conditioning, given as for dataset='folder':
  * a prompt embedding: NAME.npz beside NAME.mp4 holding `prompt_embedding` [L, D] (every video
    has one, or none does), copied as `prompt_embedding`;
  * and always a class `label`: the index of the video's sub-folder among the sorted sub-folders
    of its split folder (0 for videos directly in it).
Sub-folders are kept, so DIR/train/ and DIR/test/ become OUT/train/ and OUT/test/.

Frames: the VAE encodes 1 + 4k frames. --num_frames=N (1 + 4k) takes each video's first N
frames and refuses a shorter video; without it each whole video is kept, less its last
(T - 1) mod 4 frames. Frames are centre-cropped to --size's aspect ratio and resized (H and W
multiples of 8); without --size, the videos' own size (all alike) is kept.

Resumable: a video whose .npz exists is skipped, and each file is written under a temporary name
and renamed, so an interrupted run leaves no half file; OUT/prepare.json records the settings, and
a rerun with others is refused. Every check that needs no encoding comes before the first video is
encoded.
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

from pafukv_jax import conditioning, progress
from pafukv_jax.data import folder as folder_lib
from pafukv_jax.data import latents as latents_lib
from pafukv_jax.vae import codec, weights

SETTINGS = 'prepare.json'
PARTIAL = '.partial'  # a file being written; never *.npz, so dataset='latents' never reads one


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
  vae: str                              # a diffusers vae/ directory or a Wan2.1_VAE.pth
  videos: str                           # the folder of videos
  out: str                              # the latent folder written
  num_frames: int = 0                   # video frames per file (1 + 4k); 0: each whole video
  size: tuple[int, int] | None = None   # (H, W) multiples of 8; None: the videos' own


@dataclasses.dataclass(frozen=True)
class Job:
  src: Path      # the video
  dst: Path      # its .npz
  label: int
  prompt: Path | None


def parse_size(text: str) -> tuple[int, int] | None:
  """'480x832' -> (480, 832); '' -> None."""
  if not text:
    return None
  parts = text.lower().replace(',', 'x').split('x')
  if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
    raise ValueError(f'--size must be HxW (two whole numbers, e.g. 480x832), got {text!r}.')
  return int(parts[0]), int(parts[1])


def _check_size(size, factor: int, what: str) -> None:
  if size[0] < factor or size[1] < factor or size[0] % factor or size[1] % factor:
    fix = tuple(max(factor, s // factor * factor) for s in size)
    raise ValueError(f'{what} is {size[0]}x{size[1]}; the VAE needs H and W multiples of '
                     f'{factor}: pass --size={fix[0]}x{fix[1]} (frames are centre-cropped to its '
                     'aspect ratio and resized).')


def plan(cfg: PrepareConfig) -> list[Job]:
  """Every video's job, its label and prompt: refuses name clashes, an output folder inside the
  input, and prompts given for some videos only."""
  src, out = Path(cfg.videos).expanduser().resolve(), Path(cfg.out).expanduser().resolve()
  if not src.is_dir():
    raise FileNotFoundError(f'--videos={cfg.videos} is not a directory of videos.')
  if out == src or src in out.parents or out in src.parents:
    raise ValueError(f'--out={cfg.out} and --videos={cfg.videos} overlap: write the latents to a '
                     'folder outside the videos (its .npz files would read as prompt embeddings).')
  files = sorted(p for p in src.rglob('*') if p.is_file()
                 and p.suffix.lower() in folder_lib.VIDEO_EXTENSIONS)
  if not files:
    raise FileNotFoundError(f'No videos under {src} (looked for '
                            f'{", ".join(folder_lib.VIDEO_EXTENSIONS)}).')
  split_roots = [src / s for s in folder_lib.SPLIT_FOLDERS if (src / s).is_dir()] or [src]
  jobs, seen = [], {}
  for root in split_roots:
    mine = [p for p in files if root == src or root in p.parents]
    classes = sorted({p.parent.relative_to(root).as_posix() for p in mine})
    for p in mine:
      dst = out / p.relative_to(src).with_suffix('.npz')
      if dst in seen:
        raise ValueError(f'{seen[dst]} and {p} would both be written to {dst}: rename one.')
      seen[dst] = p
      sidecar = p.with_suffix('.npz')
      jobs.append(Job(p, dst, classes.index(p.parent.relative_to(root).as_posix()),
                      sidecar if sidecar.is_file() else None))
  if split_roots != [src]:
    outside = sorted(set(files) - {j.src for j in jobs})
    if outside:
      raise ValueError(f'{src} has split folders {[r.name for r in split_roots]}, but '
                       f'{outside[0]} is outside them: move it into one.')
  have = [j for j in jobs if j.prompt]
  if have and len(have) != len(jobs):
    missing = [str(j.src) for j in jobs if not j.prompt]
    raise ValueError(f'{len(have)} of {len(jobs)} videos have a prompt embedding (NAME.npz beside '
                     f'NAME.mp4); these do not: {", ".join(missing[:5])}. Give every video one, '
                     'or none (then the label conditions it).')
  widths = {}
  for j in have:
    shape = latents_lib.npz_shapes(j.prompt).get(conditioning.PROMPT_KEY)
    if shape is None or len(shape) != 2:
      raise ValueError(f'{j.prompt} needs `{conditioning.PROMPT_KEY}` [L, D] (found '
                       f'{latents_lib.npz_shapes(j.prompt)}).')
    widths.setdefault(shape[1], j.prompt)
  if len(widths) > 1:
    (a, pa), (b, pb) = list(widths.items())[:2]
    raise ValueError(f'Prompt embeddings of two widths: {pa} has D={a}, {pb} has D={b}; one text '
                     'encoder embeds them all (umT5: 4096).')
  return jobs


def _first_frame_size(path: Path) -> tuple[int, int]:
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  try:
    return tuple(np.asarray(next(iter(iio.imiter(path)))).shape[:2])
  except Exception as e:  # pylint: disable=broad-except  (decoders raise anything)
    raise ValueError(f'Cannot read the video {path} ({type(e).__name__}: {e}). Re-encode it or '
                     'remove it from the folder.') from e


def _check_settings(out: Path, settings: dict) -> None:
  path = out / SETTINGS
  if path.exists():
    saved = json.loads(path.read_text())
    changed = [f'{k} (saved {saved.get(k)!r}, now {v!r})' for k, v in settings.items()
               if k != 'vae' and saved.get(k) != v]  # the VAE by its config: it may move
    if changed:
      raise ValueError(f'{out} holds latents made with other settings: {"; ".join(changed)}. Use '
                       'a new --out, or delete it to encode again.')
  else:
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PARTIAL)
    tmp.write_text(json.dumps(settings, indent=1))
    os.replace(tmp, path)


def encode_file(vae, job: Job, size, num_frames: int) -> dict:
  """The arrays of one video's .npz."""
  from pafukv_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  frames = folder_lib.read_video(job.src, size, num_frames or None)
  f = vae.cfg.temporal_factor
  keep = num_frames or 1 + (len(frames) - 1) // f * f
  if len(frames) < keep:
    raise ValueError(f'{job.src} has {len(frames)} frames, fewer than --num_frames={num_frames}: '
                     'lower --num_frames (1 + 4k) or remove the video (the files already written '
                     'are kept; a rerun resumes).')
  video = pipeline.uint8_to_float(frames[:keep])[None]
  out = {'video': np.asarray(codec.encode(vae, video, chunked=True, normalized=True)[0],
                             np.float32), 'label': np.int64(job.label)}
  if job.prompt:
    with np.load(job.prompt) as p:
      out[conditioning.PROMPT_KEY] = np.asarray(p[conditioning.PROMPT_KEY], np.float32)
  return out


def write_atomic(path: Path, arrays: dict) -> None:
  """np.savez to NAME.npz.partial, then renamed: a killed run leaves no .npz half written."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + PARTIAL)
  try:
    with open(tmp, 'wb') as f:  # a file object: np.savez adds no .npz to the name
      np.savez(f, **arrays)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def prepare(cfg: PrepareConfig, tty: bool | None = None) -> dict:
  """Encodes the videos not encoded yet: {written, skipped, files, z_dim, latent_size (h, w),
  latent_frames (the shortest file's), prompts (whether they carry prompt embeddings)}."""
  vae_cfg = weights.read_vae_config(cfg.vae)
  f, s = vae_cfg.temporal_factor, vae_cfg.spatial_factor
  if cfg.num_frames < 0 or (cfg.num_frames and (cfg.num_frames - 1) % f):
    lower = max(1, 1 + (cfg.num_frames - 1) // f * f)
    raise ValueError(f'--num_frames={cfg.num_frames}: the VAE encodes 1 + {f}k frames (1, 5, '
                     f'9, ..., 81); pass --num_frames={lower} (or 0: each whole video).')
  if cfg.size:
    _check_size(cfg.size, s, '--size')
  jobs = plan(cfg)
  out = Path(cfg.out).expanduser().resolve()
  for stale in out.rglob('*' + PARTIAL) if out.is_dir() else ():
    stale.unlink()  # an interrupted write
  todo = [j for j in jobs if not j.dst.exists()]
  size = cfg.size
  if size is None:  # the videos' own: one size for all (dataset='latents' needs one shape)
    sizes = {j.src: _first_frame_size(j.src) for j in todo}
    done = [j for j in jobs if j.dst.exists()]
    if done:  # a resumed run: the size of what is written
      h, w = latents_lib.npz_shapes(done[0].dst)['video'][1:3]
      sizes = {done[0].src: (h * s, w * s), **sizes}
    for path, got in sizes.items():
      _check_size(got, s, str(path))
    (a, first), *rest = sizes.items()
    other = next(((p, z) for p, z in rest if z != first), None)
    if other:
      raise ValueError(f'The videos differ in size ({a}: {first[0]}x{first[1]}, {other[0]}: '
                       f'{other[1][0]}x{other[1][1]}): pass --size=HxW to centre-crop and resize '
                       'them all to one.')
    size = first
  settings = dict(vae=os.path.abspath(cfg.vae), vae_config=vae_cfg.to_diffusers(),
                  num_frames=cfg.num_frames, size=list(cfg.size) if cfg.size else None,
                  normalized=True)
  _check_settings(out, settings)
  skipped = len(jobs) - len(todo)
  if todo:
    vae = weights.load_vae(cfg.vae)
    with progress.progress(len(jobs), 'prepare', 'video', initial=skipped, tty=tty) as bar:
      for job in todo:
        bar.set_postfix_str(job.src.name)
        write_atomic(job.dst, encode_file(vae, job, size, cfg.num_frames))
        bar.update(1)
  shapes = [latents_lib.npz_shapes(j.dst)['video'] for j in jobs]
  return dict(written=len(todo), skipped=skipped, files=len(jobs), z_dim=vae_cfg.z_dim,
              latent_size=tuple(shapes[0][1:3]), latent_frames=min(t[0] for t in shapes),
              prompts=bool(jobs[0].prompt))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--vae', required=True, help='diffusers vae/ directory or Wan2.1_VAE.pth')
  parser.add_argument('--videos', required=True, help='folder of videos (train/ test/ kept)')
  parser.add_argument('--out', required=True, help='latent folder (resumed if it exists)')
  parser.add_argument('--num_frames', type=int, default=0,
                      help='video frames per file, 1 + 4k (default 0: each whole video)')
  parser.add_argument('--size', default='', help='HxW, multiples of 8 (default: the videos\' own)')
  args = parser.parse_args(argv)
  try:
    cfg = PrepareConfig(args.vae, args.videos, args.out, args.num_frames, parse_size(args.size))
    done = prepare(cfg)
  except (ValueError, FileNotFoundError) as e:  # bad input: say what, not where
    sys.exit(f'prepare: error: {e}')
  h, w = done['latent_size']
  print(f'{args.out}: {done["written"]} written, {done["skipped"]} already there. Train on it '
        f'with --config.data.dataset=latents --config.data.folder={args.out} '
        f"--config.data.image_size='({h}, {w})' --config.model.image_size='({h}, {w})' "
        f"--config.model.channels={done['z_dim']} "
        f'--config.data.num_frames=N (N <= {done["latent_frames"]} latent frames)'
        + (' --config.model.num_classes=0' if done['prompts'] else ''))


if __name__ == '__main__':
  main()
