"""Cost of one cache update: writing survivors into freed slots vs compacting the whole cache.

  python benchmarks/cache_update.py [--capacity_frames=4,32,128]

Both keep the same tokens (checked here); the slot write (pafukv_jax.cache.kv_cache.update_cache)
scatters only the N incoming tokens, compaction gathers all C slots from the concatenation of
cache and chunk. Sizes as the rollout benchmark: 4 layers, batch 4, 4 heads x 32, 64 tokens per
frame, one frame per update. Prints a table and writes JSON.
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
from pafukv_jax.cache import kv_cache

flags.DEFINE_list('capacity_frames', ['4', '32', '128'], 'Cache capacities in frames.')
flags.DEFINE_integer('repeats', 50, 'Timed updates per variant.')
flags.DEFINE_string('out', 'benchmarks/results/cache_update.json', 'JSON output.')
FLAGS = flags.FLAGS
L, B, H, D, S = 4, 4, 4, 32, 64


def compact(cache, k_new, v_new, frame_new, score_new, keep_score):
  """The alternative: top-C of cache + chunk, gathered into a new, compacted cache."""
  frames = jnp.concatenate([cache.frame, jnp.broadcast_to(frame_new, (L, *frame_new.shape))], -1)
  keep = jnp.where(frames >= 0, keep_score, -jnp.inf)
  _, idx = jax.lax.top_k(keep, cache.capacity)  # [L, B, C]
  meta = lambda a, b: jnp.take_along_axis(jnp.concatenate([a, b], axis=2), idx, axis=2)
  kv = lambda a, b: jnp.take_along_axis(jnp.concatenate([a, b], axis=3),
                                        idx[:, :, None, :, None], axis=3)  # [L, B, H, C, Dh]
  return kv_cache.KVCache(kv(cache.k, k_new), kv(cache.v, v_new),
                          meta(cache.frame, jnp.broadcast_to(frame_new, (L, *frame_new.shape))),
                          meta(cache.score, score_new))


def time_update(fn, cache, args):
  step = jax.jit(fn, donate_argnums=(0,))
  cache = step(cache, *args)  # compile
  jax.block_until_ready(cache)
  start = time.perf_counter()
  for _ in range(FLAGS.repeats):
    cache = step(cache, *args)
  jax.block_until_ready(cache)
  return 1000 * (time.perf_counter() - start) / FLAGS.repeats, cache


def full_cache(capacity_frames):
  c = capacity_frames * S
  rng = np.random.default_rng(0)
  frame = np.repeat(np.arange(capacity_frames), S)
  return kv_cache.KVCache(
      jnp.asarray(rng.normal(size=(L, B, H, c, D)), jnp.float32),
      jnp.asarray(rng.normal(size=(L, B, H, c, D)), jnp.float32),
      jnp.broadcast_to(jnp.asarray(frame, jnp.int32), (L, B, c)),
      jnp.zeros((L, B, c), jnp.float32))


def main(argv):
  del argv
  rows = []
  print(f'{"capacity":>8} {"slot write ms":>13} {"compaction ms":>13} {"ratio":>6}')
  for frames in map(int, FLAGS.capacity_frames):
    cache = full_cache(frames)
    new_frame = frames
    k_new = jnp.ones((L, B, H, S, D))
    frame_new = jnp.full((B, S), new_frame, jnp.int32)
    score_new = jnp.zeros((L, B, S))
    keep = jnp.concatenate([cache.frame, jnp.broadcast_to(frame_new, (L, B, S))], -1).astype(
        jnp.float32)  # recency: the oldest frame goes
    args = (k_new, -k_new, frame_new, score_new, keep)
    slot_ms, a = time_update(kv_cache.update_cache, full_cache(frames), args)
    compact_ms, b = time_update(compact, full_cache(frames), args)
    same = sorted(np.asarray(a.frame[0, 0]).tolist()) == sorted(np.asarray(b.frame[0, 0]).tolist())
    assert same, 'the two updates kept different tokens'
    rows.append(dict(capacity_tokens=frames * S, slot_write_ms=slot_ms, compaction_ms=compact_ms))
    print(f'{frames * S:>8} {slot_ms:>13.3f} {compact_ms:>13.3f} {compact_ms / slot_ms:>6.2f}')
  report.write_results(FLAGS.out, rows)


if __name__ == '__main__':
  app.run(main)
