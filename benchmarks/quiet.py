"""Waiting for idle CPUs before a timed process, so that a shared machine's other work does not
land in one side of a comparison (versus_reference.py, vae_speed.py). No JAX import."""

import time


def _busy():
  with open('/proc/stat') as f:
    vals = [int(x) for x in f.readline().split()[1:9]]
  return sum(vals) - vals[3] - vals[4], sum(vals)


def wait_quiet(max_s, idle=0.9, sample_s=2.0):
  """Waits (at most max_s) until the CPUs were >= 90% idle over two samples; returns seconds."""
  start, streak, (b0, t0) = time.time(), 0, _busy()
  while streak < 2 and time.time() - start < max_s:
    time.sleep(sample_s)
    b1, t1 = _busy()
    streak = streak + 1 if 1 - (b1 - b0) / max(1, t1 - t0) >= idle else 0
    b0, t0 = b1, t1
  return time.time() - start
