"""The Wan2.1 VAE's chunked encoding and decoding: ms per frame and peak RSS, this project's
against diffusers' AutoencoderKLWan, on the same CPU in one run, interleaved.

  python benchmarks/vae_speed.py --reference_python=/work/vae-venv/bin/python \
      [--sizes=128x128,240x416,480x832] [--frames=9] [--rounds=2] [--batch=1]
  python benchmarks/vae_speed.py --skip_reference --sizes=32x32 --frames=5 --rounds=1

Both sides build Wan2.1's VAE (VaeConfig() / AutoencoderKLWan() defaults) with random weights
(speed does not depend on them) and run it the way a rollout does, chunk by chunk: this project's
`encode_chunk_jit` (4 frames to 1 latent frame; the first chunk is 3 fillers and frame 0) and
`decode_chunks` (1 latent frame to 4 frames), each carrying a `ChunkState`; diffusers' own loop
of `AutoencoderKLWan._encode` (frame 0, then 4 frames a chunk) and `_decode` (one latent frame a
chunk) with its feature cache, each chunk timed (`benchmarks/vae_reference_worker.py`, run with
--reference_python: this side never imports torch). Encoding and decoding are measured in
separate processes, one at a time, so that each peak RSS (os.wait4's ru_maxrss: weights,
activations, caches, the runtime) is that of one operation at one size. The project and the
reference alternate per configuration, the order flipped each round, so that the host's drift
hits both alike; only ratios within a round mean much.

ms/frame is the steady state: the mean over every chunk after the first, per video frame (4 a
chunk; the batch's videos together). The first chunk (its compilation, for this project) is
reported apart: `first s` is its wall time, `compile s` XLA's backend compile time within it.
Threads: torch.set_num_threads(cpu count) on the reference; XLA uses every core. Prints a
markdown table (medians over rounds; the ratio is project / reference) and writes JSON.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

from benchmarks import quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_WORKER = os.path.join(ROOT, 'benchmarks', 'vae_reference_worker.py')
OPS = ('encode', 'decode')

flags.DEFINE_list('sizes', ['128x128', '240x416', '480x832'],
                  'Frame sizes HEIGHTxWIDTH (multiples of 8).')
flags.DEFINE_integer('frames', 9, 'Video frames, 1 + 4k with k >= 1 (k + 1 latent frames).')
flags.DEFINE_integer('rounds', 2, 'Interleaved rounds.')
flags.DEFINE_integer('batch', 1, 'Videos encoded / decoded together.')
flags.DEFINE_list('ops', list(OPS), 'encode, decode or both.')
flags.DEFINE_integer('seed', 0, 'Seed of the random weights and inputs.')
flags.DEFINE_string('reference_python', None,
                    'Python of a venv with torch (CPU) and diffusers >= 0.33, for the reference.')
flags.DEFINE_list('reference_sizes', [],
                  'Sizes the reference runs at (default: all of --sizes); e.g. leave out one it '
                  'cannot fit in memory.')
flags.DEFINE_bool('skip_reference', False, 'Measure this project only.')
flags.DEFINE_float('quiet_s', 60.0, 'Wait up to this long for idle CPUs before each process.')
flags.DEFINE_string('worker', None, 'Internal: measure one configuration (JSON) and print RESULT.')
flags.DEFINE_string('out', 'benchmarks/results/vae_speed.json', 'JSON output.')
FLAGS = flags.FLAGS


# ------------------------------------------------------------------------------ project worker

def _project_worker(cfg: dict) -> dict:
  """Times this project's chunked encoding or decoding of one configuration (this process)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from pafukv_jax.compile_counter import CompileCounter
  from pafukv_jax.vae import codec
  from pafukv_jax.vae.config import VaeConfig
  from pafukv_jax.vae.model import init_vae

  start = time.perf_counter()
  vcfg = VaeConfig()
  vae = init_vae(vcfg, cfg['seed'])
  b, t, h, w = cfg['batch'], cfg['frames'], cfg['height'], cfg['width']
  f, s = vcfg.temporal_factor, vcfg.spatial_factor
  rng = np.random.default_rng(cfg['seed'])
  graphdef, params = nnx.split(vae)
  chunk_s = []
  with CompileCounter(codec.encode_chunk_jit, codec.decode_chunk_jit) as compiles:
    if cfg['op'] == 'encode':
      video = jnp.asarray(rng.uniform(-1, 1, (b, t, h, w, vcfg.in_channels)).astype(np.float32))
      state = codec.init_state(vae, b, h, w, for_decode=False)
      fillers = jnp.zeros((b, f - 1, h, w, vcfg.in_channels), video.dtype)
      jax.block_until_ready((video, state))
      setup_s = time.perf_counter() - start
      for first in range(-(f - 1), t, f):  # as codec.encode_moments: fillers, then frame 0
        tick = time.perf_counter()
        frames = video[:, max(first, 0):first + f]
        if first < 0:
          frames = jnp.concatenate([fillers, frames], axis=1)
        state, moments = codec.encode_chunk_jit(graphdef, params, state, frames)
        moments.block_until_ready()
        chunk_s.append(time.perf_counter() - tick)
      out_shape = [b, len(chunk_s), *moments.shape[2:]]
    else:
      n = 1 + (t - 1) // f
      z = jnp.asarray(rng.standard_normal((b, n, h // s, w // s, vcfg.z_dim)).astype(np.float32))
      z.block_until_ready()
      setup_s = time.perf_counter() - start
      tick = time.perf_counter()
      for frames in codec.decode_chunks(vae, z):  # includes its init_state in the first chunk
        frames.block_until_ready()
        chunk_s.append(time.perf_counter() - tick)
        tick = time.perf_counter()
      out_shape = [b, 1 + f * (n - 1), *frames.shape[2:]]
  steady = chunk_s[1:]
  return dict(
      side='project', op=cfg['op'], batch=b, frames=t, height=h, width=w, chunks=len(chunk_s),
      ms_per_frame=1000 * statistics.mean(steady) / f, first_s=chunk_s[0],
      compile_s=compiles.seconds, compiles=compiles.count, setup_s=setup_s,
      chunk_s=chunk_s, out_shape=out_shape, threads=os.cpu_count(), jax=jax.__version__,
      device=jax.devices()[0].device_kind)


# ------------------------------------------------------------------------------ orchestration

def parse_sizes(values, name):
  """[(height, width)] of 'HxW' strings; UsageError unless multiples of the VAE's 8."""
  from pafukv_jax.vae.config import VaeConfig
  s = VaeConfig().spatial_factor
  sizes = []
  for v in values:
    try:
      h, w = (int(x) for x in v.lower().split('x'))
    except ValueError:
      raise app.UsageError(f'--{name}: {v!r} is not HEIGHTxWIDTH (e.g. 480x832).')
    if h <= 0 or w <= 0 or h % s or w % s:
      raise app.UsageError(f'--{name}: {v} is not a multiple of {s} in both height and width '
                           f'(Wan2.1\'s VAE downsamples 8x; e.g. 480x832, 240x416).')
    sizes.append((h, w))
  return sizes


def check_flags():
  from pafukv_jax.vae.config import VaeConfig
  f = VaeConfig().temporal_factor
  if FLAGS.frames < 1 + f or (FLAGS.frames - 1) % f:
    raise app.UsageError(f'--frames={FLAGS.frames}: the VAE takes 1 + {f}k frames, and the steady '
                         f'state needs k >= 1 (e.g. --frames=5 or 9).')
  if FLAGS.batch < 1 or FLAGS.rounds < 1:
    raise app.UsageError('--batch and --rounds must be at least 1.')
  bad = sorted(set(FLAGS.ops) - set(OPS))
  if bad or not FLAGS.ops:
    raise app.UsageError(f'--ops {bad}: choose from {list(OPS)}.')
  sizes = parse_sizes(FLAGS.sizes, 'sizes')
  ref_sizes = parse_sizes(FLAGS.reference_sizes, 'reference_sizes') if FLAGS.reference_sizes \
      else sizes
  if not FLAGS.skip_reference:
    if not FLAGS.reference_python:
      raise app.UsageError('Set --reference_python (a venv with torch CPU and diffusers >= 0.33, '
                           'e.g. /work/vae-venv/bin/python) or --skip_reference.')
    if not os.path.exists(FLAGS.reference_python):
      raise app.UsageError(f'--reference_python={FLAGS.reference_python} does not exist.')
    probe = subprocess.run(
        [FLAGS.reference_python, '-c', 'import torch, diffusers; '
         'from diffusers import AutoencoderKLWan; print(torch.__version__, diffusers.__version__)'],
        capture_output=True, text=True)
    if probe.returncode:
      raise app.UsageError(f'{FLAGS.reference_python} cannot import torch and diffusers\' '
                           f'AutoencoderKLWan:\n{probe.stderr[-2000:]}')
  return sizes, ref_sizes


def run_worker(side, cfg, log):
  """Runs one measurement in its own process; its RESULT, with the process's exit code, wall
  time and peak RSS (or `error` where it failed: e.g. killed for memory)."""
  if side == 'project':
    cmd = [sys.executable, os.path.abspath(__file__), f'--worker={json.dumps(cfg)}']
  else:
    cmd = [FLAGS.reference_python, REFERENCE_WORKER, json.dumps(cfg)]
  waited = quiet.wait_quiet(FLAGS.quiet_s)
  start = time.perf_counter()
  with open(log, 'w') as f:
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=dict(os.environ, PYTHONDONTWRITEBYTECODE='1'))
    _, status, usage = os.wait4(proc.pid, 0)
  process = dict(rc=os.waitstatus_to_exitcode(status), wall_s=time.perf_counter() - start,
                 peak_rss_mib=usage.ru_maxrss / 1024, waited_s=waited)
  text = open(log).read()
  lines = [l for l in text.splitlines() if l.startswith('RESULT ')]
  if process['rc'] or not lines:
    why = 'killed (out of memory?)' if process['rc'] == -9 else f'exit code {process["rc"]}'
    return dict(side=side, op=cfg['op'], error=why, log_tail=text[-1500:], process=process)
  return dict(json.loads(lines[-1][len('RESULT '):]), process=process)


def label(h, w):
  return f'{h}x{w}'


def summarise(runs, sizes):
  rows = []
  for h, w in sizes:
    for op in FLAGS.ops:
      mine = [r for r in runs if r['size'] == label(h, w) and r['op'] == op]
      row = dict(size=label(h, w), height=h, width=w, op=op, frames=FLAGS.frames,
                 batch=FLAGS.batch, rounds=len(mine))
      for side in ('project', 'reference'):
        ok = [r[side] for r in mine if side in r and 'error' not in r[side]]
        failed = [r[side]['error'] for r in mine if side in r and 'error' in r[side]]
        if failed:
          row[f'{side}_errors'] = failed
        if not ok:
          continue
        med = lambda key: statistics.median(x[key] for x in ok)
        row.update({f'{side}_ms_per_frame': med('ms_per_frame'),
                    f'{side}_ms_min': min(x['ms_per_frame'] for x in ok),
                    f'{side}_first_s': med('first_s'),
                    f'{side}_rss_mib': statistics.median(x['process']['peak_rss_mib'] for x in ok)})
        if side == 'project':
          row['project_compile_s'] = med('compile_s')
      ratios = [r['project']['ms_per_frame'] / r['reference']['ms_per_frame'] for r in mine
                if 'error' not in r.get('project', {'error': 1})
                and 'error' not in r.get('reference', {'error': 1})]
      if ratios:
        row.update(ratio=row['project_ms_per_frame'] / row['reference_ms_per_frame'],
                   ratio_low=min(ratios), ratio_high=max(ratios),
                   rss_ratio=row['project_rss_mib'] / row['reference_rss_mib'])
      rows.append(row)
  return rows


def table(rows):
  lines = [f'Wan2.1 VAE, random weights, chunked, {FLAGS.frames} frames, batch {FLAGS.batch}, '
           f'{os.cpu_count()} CPU threads; medians over {FLAGS.rounds} round(s), (min); '
           'ratio = project / reference (per-round range).', '',
           '| size | op | project ms/frame | reference ms/frame | ratio | project first s '
           '(compile s) | reference first s | peak RSS MiB: project, reference (ratio) |',
           '|---|---|---:|---:|---:|---:|---:|---:|']

  def cell(r, side, fmt='{:.1f}'):
    if f'{side}_ms_per_frame' in r:
      return f'{fmt.format(r[side + "_ms_per_frame"])} ({fmt.format(r[side + "_ms_min"])})'
    if f'{side}_errors' in r:
      return 'failed: ' + r[f'{side}_errors'][0]
    return 'not run'

  for r in rows:
    ratio = (f'{r["ratio"]:.2f} ({r["ratio_low"]:.2f}-{r["ratio_high"]:.2f})' if 'ratio' in r
             else '-')
    pfirst = (f'{r["project_first_s"]:.1f} ({r["project_compile_s"]:.1f})'
              if 'project_first_s' in r else '-')
    rfirst = f'{r["reference_first_s"]:.2f}' if 'reference_first_s' in r else '-'
    nan = float('nan')
    rss = f'{r.get("project_rss_mib", nan):.0f}, {r.get("reference_rss_mib", nan):.0f}'
    if 'rss_ratio' in r:
      rss += f' ({r["rss_ratio"]:.2f})'
    lines.append(f'| {r["size"]} | {r["op"]} | {cell(r, "project")} | {cell(r, "reference")} | '
                 f'{ratio} | {pfirst} | {rfirst} | {rss} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  if FLAGS.worker:
    print('RESULT ' + json.dumps(_project_worker(json.loads(FLAGS.worker))), flush=True)
    return
  sizes, ref_sizes = check_flags()
  log_dir = tempfile.mkdtemp(prefix='vae_speed_')
  print(f'worker logs in {log_dir}', flush=True)
  runs = []
  for rnd in range(FLAGS.rounds):
    for h, w in sizes:
      for op in FLAGS.ops:
        cfg = dict(op=op, batch=FLAGS.batch, frames=FLAGS.frames, height=h, width=w,
                   seed=FLAGS.seed)
        sides = ['project']
        if not FLAGS.skip_reference and (h, w) in ref_sizes:
          sides = ['reference', 'project'] if rnd % 2 == 0 else ['project', 'reference']
        logs = {side: os.path.join(log_dir, f'r{rnd}_{h}x{w}_{op}_{side}.log') for side in sides}
        got = {side: run_worker(side, cfg, logs[side]) for side in sides}
        runs.append(dict(round=rnd, size=label(h, w), op=op, **got))
        parts = []
        for side in ('project', 'reference'):
          if side in got:
            r = got[side]
            parts.append(f'{side} ' + (f'failed ({r["error"]})' if 'error' in r else
                                       f'{r["ms_per_frame"]:8.1f} ms/frame '
                                       f'{r["process"]["peak_rss_mib"]:6.0f} MiB'))
        print(f'round {rnd} {label(h, w):>9} {op:<6} ' + '  '.join(parts), flush=True)
  rows = summarise(runs, sizes)
  text = table(rows)
  print('\n' + text)
  from benchmarks import report
  ref = next((r['reference'] for r in runs if 'error' not in r.get('reference', {'error': 1})),
             {})
  report.write_results(FLAGS.out, rows, frames=FLAGS.frames, batch=FLAGS.batch,
                       rounds=FLAGS.rounds, reference_torch=ref.get('torch'),
                       reference_diffusers=ref.get('diffusers'), command=' '.join(sys.argv),
                       table=text, runs=runs)
  if any('error' in r['project'] for r in runs):
    sys.exit(f'some project runs failed; see the logs in {log_dir}.')


if __name__ == '__main__':
  app.run(main)
