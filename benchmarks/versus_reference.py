"""This project's rollout against Self-Forcing's own PyTorch inference loop, in one run, interleaved.

  python benchmarks/versus_reference.py --reference_python=PEER_VENV/bin/python \
      --reference_runner=PATH/run_peer.py --reference_source=PATH/Self-Forcing [--rounds=3]

The reference side is `run_peer.py --worker CONFIG` (a runner that builds Self-Forcing's causal
Wan model at this project's benchmark size, random weights, and times its `inference()`; it
prints one `RESULT {json}` line); this side is `benchmarks/rollout_speed.py` restricted to the
same configuration. Every pair runs back to back, the order flipped each round, one process at a
time, so that the host's drift (up to 60% between runs on a shared machine) hits both sides alike;
only ratios within a round mean anything. Peak RSS is each whole process's (os.wait4).

Configurations: chunks of 1 and 3 frames (lengths 32 / 128, or 33 / 129 for chunks of 3: a
multiple of the chunk); `full`; `window` with `budget_frames` past frames; `sink_window` with
`sink_frames` of them sinks. The reference's `local_attn_size` counts the chunk being generated
and this project's budget does not, so the reference runs local = budget + chunk: both attend
the same keys. Prints a markdown table and writes JSON (every run, and the summary rows).
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import quiet  # noqa: E402  (after the path: run as a script)

flags.DEFINE_string('reference_python', None, 'Python of the reference\'s venv (torch CPU).')
flags.DEFINE_string('reference_runner', None, 'run_peer.py, the runner of the reference.')
flags.DEFINE_string('reference_source', None, 'Self-Forcing\'s source tree (the runner\'s SF_DIR).')
flags.DEFINE_integer('rounds', 3, 'Interleaved rounds.')
flags.DEFINE_list('chunks', ['1', '3'], 'Frames per chunk.')
flags.DEFINE_list('lengths', ['32', '128'], 'Video lengths (rounded up to a multiple of the chunk).')
flags.DEFINE_list('policies', ['full', 'window', 'sink_window'], 'Policies.')
flags.DEFINE_integer('budget_frames', 4, 'Past frames a bounded cache holds.')
flags.DEFINE_integer('sink_frames', 1, 'Sink frames of sink_window.')
flags.DEFINE_list('project_flags', [], 'More flags for rollout_speed.py, e.g. --impls=masked.')
flags.DEFINE_float('quiet_s', 60.0, 'Wait up to this long for idle CPUs before each process.')
flags.DEFINE_string('out', 'benchmarks/results/versus_reference.json', 'JSON output.')
FLAGS = flags.FLAGS


def configs():
  for chunk in map(int, FLAGS.chunks):
    for length in map(int, FLAGS.lengths):
      frames = -(-length // chunk) * chunk
      for policy in FLAGS.policies:
        local = -1 if policy == 'full' else FLAGS.budget_frames + chunk
        sink = FLAGS.sink_frames if policy == 'sink_window' else 0
        yield dict(chunk=chunk, frames=frames, policy=policy,
                   reference=dict(frames=frames, fpb=chunk, local=local, sink=sink))


def run_process(cmd, log, env=None):
  """Runs cmd, output to log; returns (exit code, wall s, peak RSS MiB) of the process."""
  waited = quiet.wait_quiet(FLAGS.quiet_s)
  start = time.perf_counter()
  with open(log, 'w') as f:
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
  return dict(rc=os.waitstatus_to_exitcode(status), wall_s=time.perf_counter() - start,
              peak_rss_mib=usage.ru_maxrss / 1024, waited_s=waited)


def run_reference(cfg, tmp):
  log = f'{tmp}.reference.log'
  env = dict(os.environ, SF_DIR=FLAGS.reference_source, PEER_OUT=os.path.dirname(tmp))
  proc = run_process([FLAGS.reference_python, FLAGS.reference_runner, '--worker',
                      json.dumps(cfg['reference'])], log, env)
  lines = [l for l in open(log).read().splitlines() if l.startswith('RESULT ')]
  if proc['rc'] or not lines:
    raise RuntimeError(f'The reference failed on {cfg["reference"]}; see {log}.')
  return dict(json.loads(lines[-1][len('RESULT '):]), process=proc)


def run_project(cfg, tmp):
  out, log = f'{tmp}.project.json', f'{tmp}.project.log'
  cmd = [sys.executable, 'benchmarks/rollout_speed.py', f'--frames={cfg["frames"]}',
         f'--chunk_frames={cfg["chunk"]}', f'--policies={cfg["policy"]}',
         f'--budget_frames={FLAGS.budget_frames}', f'--sink_frames={FLAGS.sink_frames}',
         f'--out={out}', *FLAGS.project_flags]
  if not any(f.startswith('--impls') for f in FLAGS.project_flags):
    cmd.append('--impls=blockwise')
  proc = run_process(cmd, log, dict(os.environ, PYTHONDONTWRITEBYTECODE='1'))
  if proc['rc']:
    raise RuntimeError(f'rollout_speed.py failed on {cfg}; see {log}.')
  return dict(json.load(open(out))['rows'][0], process=proc)


def label(cfg):
  kind = {'full': 'full', 'window': f'window {FLAGS.budget_frames}',
          'sink_window': f'sink {FLAGS.sink_frames} + window {FLAGS.budget_frames - FLAGS.sink_frames}'}
  return f'{kind[cfg["policy"]]}, chunk {cfg["chunk"]}, {cfg["frames"]} frames'


def summarise(runs):
  rows = []
  for cfg in configs():
    mine = [r for r in runs if r['label'] == label(cfg)]
    ref = [r['reference'] for r in mine]
    pro = [r['project'] for r in mine]
    med = lambda side, k: statistics.median(x[k] for x in side)
    ratios = [p['ms_per_frame'] / r['ms_per_frame'] for r, p in zip(ref, pro)]
    rows.append(dict(
        label=label(cfg), **{k: cfg[k] for k in ('chunk', 'frames', 'policy')}, rounds=len(mine),
        reference_ms=med(ref, 'ms_per_frame'), reference_min=min(x['ms_per_frame'] for x in ref),
        project_ms=med(pro, 'ms_per_frame'), project_min=min(x['ms_per_frame'] for x in pro),
        ratio=med(pro, 'ms_per_frame') / med(ref, 'ms_per_frame'),
        ratio_low=min(ratios), ratio_high=max(ratios),
        reference_flat=med(ref, 'ms_last16') / med(ref, 'ms_first16'),
        project_flat=med(pro, 'ms_last16') / med(pro, 'ms_first16'),
        reference_rss=med([x['process'] for x in ref], 'peak_rss_mib'),
        project_rss=med([x['process'] for x in pro], 'peak_rss_mib')))
  return rows


def table(rows):
  lines = ['| configuration | reference ms/frame, median (min) | project ms/frame, median (min) | '
           'ratio of medians (per round) | last16 / first16: reference, project | '
           'peak RSS MiB: reference, project |', '|---|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(
        f'| {r["label"]} | {r["reference_ms"]:.1f} ({r["reference_min"]:.1f}) | '
        f'{r["project_ms"]:.1f} ({r["project_min"]:.1f}) | {r["ratio"]:.2f} '
        f'({r["ratio_low"]:.2f}-{r["ratio_high"]:.2f}) | {r["reference_flat"]:.2f}, '
        f'{r["project_flat"]:.2f} | {r["reference_rss"]:.0f}, {r["project_rss"]:.0f} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  missing = [n for n in ('reference_python', 'reference_runner', 'reference_source')
             if not getattr(FLAGS, n)]
  if missing:
    raise app.UsageError(f'Set --{", --".join(missing)}: the reference runs from its own venv and '
                         'source tree (see README, "Speed").')
  for path in (FLAGS.reference_python, FLAGS.reference_runner, FLAGS.reference_source):
    if not os.path.exists(path):
      raise app.UsageError(f'{path} does not exist.')
  tmp_dir = os.path.splitext(os.path.abspath(FLAGS.out))[0] + '_runs'
  os.makedirs(tmp_dir, exist_ok=True)
  runs = []
  for rnd in range(FLAGS.rounds):
    for i, cfg in enumerate(configs()):
      tmp = os.path.join(tmp_dir, f'r{rnd}_{i}')
      order = (run_reference, run_project) if rnd % 2 == 0 else (run_project, run_reference)
      got = {fn.__name__[4:]: fn(cfg, tmp) for fn in order}
      runs.append(dict(round=rnd, label=label(cfg), **got))
      r, p = got['reference'], got['project']
      print(f'round {rnd} {label(cfg):<36} reference {r["ms_per_frame"]:7.1f}  project '
            f'{p["ms_per_frame"]:7.1f}  ratio {p["ms_per_frame"] / r["ms_per_frame"]:.2f}', flush=True)
  rows = summarise(runs)
  text = table(rows)
  print('\n' + text)
  project = runs[0]['project']
  with open(FLAGS.out, 'w') as f:
    json.dump(dict(machine=f'{os.uname().machine}, {os.cpu_count()} cores',
                   reference_torch=runs[0]['reference'].get('torch'),
                   reference_commit=runs[0]['reference'].get('commit'),
                   rounds=FLAGS.rounds, project_flags=FLAGS.project_flags,
                   command=' '.join(sys.argv), summary=rows, table=text, runs=runs,
                   project_batch=project.get('batch')), f, indent=1)
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
