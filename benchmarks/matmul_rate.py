"""This CPU's float32 matmul rate at the shapes of one rollout pass: the floor of a frame's time.

  python benchmarks/matmul_rate.py [--tokens=256] [--dim=128] [--ffn=512] [--keys=320]

Times jitted matmuls of the benchmark model's pass (rollout_speed.py's sizes: 4 videos x 64 tokens
= 256 tokens of width 128): a projection [tokens, dim] x [dim, dim], the feed-forward's
[tokens, dim] x [dim, ffn], and per head the logits over `keys` cached keys, [64, 32] x [32, keys]
for 16 (video, head) pairs. Prints GFLOP/s (median of repeats) and writes JSON.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import report

flags.DEFINE_integer('tokens', 256, 'Tokens per pass (batch x chunk tokens).')
flags.DEFINE_integer('dim', 128, 'Model width.')
flags.DEFINE_integer('ffn', 512, 'Feed-forward width.')
flags.DEFINE_integer('keys', 320, 'Keys attended per query (cache + chunk).')
flags.DEFINE_integer('repeats', 200, 'Calls per measurement.')
flags.DEFINE_string('out', 'benchmarks/results/matmul_rate.json', 'JSON output.')
FLAGS = flags.FLAGS


def rate(f, args, flop):
  f = jax.jit(f)
  f(*args).block_until_ready()
  times = []
  for _ in range(5):
    start = time.perf_counter()
    for _ in range(FLAGS.repeats):
      out = f(*args)
    out.block_until_ready()
    times.append((time.perf_counter() - start) / FLAGS.repeats)
  return flop / float(np.median(times)) / 1e9


def main(argv):
  del argv
  n, d, h = FLAGS.tokens, FLAGS.dim, FLAGS.ffn
  key = iter(jax.random.split(jax.random.key(0), 8))
  x = jax.random.normal(next(key), (n, d))
  heads, per = 16, n // 4
  q = jax.random.normal(next(key), (heads, per, 32))
  k = jax.random.normal(next(key), (heads, FLAGS.keys, 32))
  rows = [
      dict(name=f'projection [{n}, {d}] x [{d}, {d}]', gflops=rate(
          jnp.matmul, (x, jax.random.normal(next(key), (d, d))), 2 * n * d * d)),
      dict(name=f'feed-forward [{n}, {d}] x [{d}, {h}]', gflops=rate(
          jnp.matmul, (x, jax.random.normal(next(key), (d, h))), 2 * n * d * h)),
      dict(name=f'logits {heads} x [{per}, 32] x [32, {FLAGS.keys}]', gflops=rate(
          lambda a, b: jnp.einsum('hqd,hkd->hqk', a, b), (q, k), 2 * heads * per * 32 * FLAGS.keys)),
  ]
  for r in rows:
    print(f'{r["name"]:<40} {r["gflops"]:8.1f} GFLOP/s')
  report.write_results(FLAGS.out, rows)


if __name__ == '__main__':
  app.run(main)
