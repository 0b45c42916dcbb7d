"""Bytes per device of the Wan2.1-1.3B preset on meshes of 1, 8 and 64 devices.

For each mesh (data x fsdp) it prints and writes as JSON:
  * params: the frozen bf16 weights (teacher or student), per device, as `mesh.rules` shard them;
  * trained: float32 weights plus AdamW's two moments (`training/steps.py`'s optimizer), per device;
  * KV cache per sample at each budget (bf16 keys and values, every layer; sharded over the batch,
    so a device holds this times its samples);
  * teacher pass: the temporaries XLA allocates per device for one bidirectional pass over a whole
    clip that computes the salience targets (`salience.targets.teacher_regions`), one clip per
    device, from the compiled program's own memory analysis.
Nothing is allocated: the model is abstract (`nnx.eval_shape`) and the pass is only compiled, so
this runs on a laptop. Meshes of more devices than this host has are simulated with XLA's host
platform device count, one subprocess per device count. Weights are random-shaped, not loaded.

  python -m benchmarks.wan_memory [--meshes=1x1,8x1,1x8,64x1,8x8,1x64] [--budgets=6,9,12,21]
"""

import json
import math
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list('meshes', ['1x1', '8x1', '1x8', '64x1', '8x8', '1x64'],
                  'Meshes as DATAxFSDP (devices = their product).')
flags.DEFINE_list('budgets', ['6', '9', '12', '21'],
                  'KV cache budgets in frames (21: a whole clip).')
flags.DEFINE_integer('frames', 21,
                     'Latent frames of the clip the teacher pass sees (21 = 81 video frames).')
flags.DEFINE_integer('query_chunk', 1024, 'model.attention_query_chunk of the teacher pass.')
flags.DEFINE_string('out', 'benchmarks/results/wan_memory.json', 'Where to write the JSON.')
flags.DEFINE_string('child', '', 'Internal: measure these meshes in this process and print JSON.')

GIB = 2 ** 30


def _per_device(tree, shardings) -> int:
  """Bytes one device holds of abstract arrays `tree` placed with `shardings`."""
  import jax
  import numpy as np
  sizes = jax.tree.map(lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize,
                       tree, shardings)
  return sum(jax.tree.leaves(sizes))


def measure(meshes, budgets, frames, query_chunk) -> list[dict]:
  """One row per mesh; every mesh must have as many devices as this process sees."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  import optax
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P

  from pafukv_jax import parallel
  from pafukv_jax.cache import kv_cache
  from pafukv_jax.models.dit import DiTConfig, VideoDiT
  from pafukv_jax.models.wan_import import WAN_PRESETS
  from pafukv_jax.salience import targets

  cfg = DiTConfig(**WAN_PRESETS['wan1.3b'], dtype='bfloat16', attention_query_chunk=query_chunk)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: VideoDiT(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  as_dtype = lambda dtype: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), state)
  frozen, trained = as_dtype(jnp.bfloat16), as_dtype(jnp.float32)
  moments = jax.eval_shape(optax.adamw(1e-4).init, nnx.to_pure_dict(trained))
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state))
  s, chunk = cfg.tokens_per_frame, 3
  cache_bytes = {}
  for budget in budgets:
    cache = jax.eval_shape(lambda: kv_cache.init_cache(cfg.num_layers, 1, budget * s, cfg.num_heads,
                                                       cfg.head_dim, jnp.bfloat16))
    cache_bytes[budget] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))

  def teacher_pass(state, video, cond):
    return targets.teacher_regions(nnx.merge(graphdef, state), video, cond,
                                   block_tokens=chunk * s)

  rows = []
  for data, fsdp in meshes:
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)))
    shardings = parallel.param_shardings(state, mesh)
    pure = nnx.to_pure_dict(shardings)
    adam = sum(_per_device(m, pure) for m in (moments[0].mu, moments[0].nu))  # like the params
    batch = data * fsdp
    per_batch = NamedSharding(mesh, P(parallel.BATCH_AXES))
    video = jax.ShapeDtypeStruct((batch, frames, *cfg.image_size, cfg.channels), jnp.bfloat16)
    cond = jax.ShapeDtypeStruct((batch, cfg.num_cond_tokens, cfg.cond_dim), jnp.bfloat16)
    with jax.set_mesh(mesh):  # the model keeps its activations split over the batch
      compiled = jax.jit(teacher_pass, in_shardings=(shardings, per_batch, per_batch)).lower(
          frozen, video, cond).compile()
    rows.append(dict(
        mesh=f'{data}x{fsdp}', devices=data * fsdp, params=num_params,
        params_bf16_gib=_per_device(frozen, shardings) / GIB,
        trained_f32_adamw_gib=(_per_device(trained, shardings) + adam) / GIB,
        kv_cache_per_sample_gib={str(k): v / GIB for k, v in cache_bytes.items()},
        teacher_pass_clips_per_device=1, teacher_pass_frames=frames,
        teacher_pass_temp_gib=compiled.memory_analysis().temp_size_in_bytes / GIB))
  return rows


def _parse_mesh(text):
  data, fsdp = (int(x) for x in text.lower().split('x'))
  return data, fsdp


def main(argv):
  del argv
  budgets = [int(b) for b in FLAGS.budgets]
  if FLAGS.child:
    meshes = [_parse_mesh(m) for m in FLAGS.child.split(',')]
    print('ROWS ' + json.dumps(measure(meshes, budgets, FLAGS.frames, FLAGS.query_chunk)))
    return
  meshes = [_parse_mesh(m) for m in FLAGS.meshes]
  by_devices = {}
  for data, fsdp in meshes:
    by_devices.setdefault(data * fsdp, []).append(f'{data}x{fsdp}')
  rows = []
  for devices, names in sorted(by_devices.items()):
    env = dict(os.environ, XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                                      f' --xla_force_host_platform_device_count={devices}'),
               JAX_PLATFORMS='cpu')
    out = subprocess.run(
        [sys.executable, '-m', 'benchmarks.wan_memory', f'--child={",".join(names)}',
         f'--budgets={",".join(FLAGS.budgets)}', f'--frames={FLAGS.frames}',
         f'--query_chunk={FLAGS.query_chunk}'], env=env, capture_output=True, text=True)
    if out.returncode:
      sys.exit(f'measuring {names} on {devices} devices failed:\n{out.stderr[-3000:]}')
    rows += json.loads(next(l for l in out.stdout.splitlines() if l.startswith('ROWS '))[5:])
  header = ['mesh', 'params bf16', 'f32 + AdamW'] + [f'KV {b} fr.' for b in budgets] + [
      f'teacher pass ({FLAGS.frames} fr.)']
  print(f'Wan2.1-1.3B ({rows[0]["params"]:,} parameters), GiB per device '
        '(KV cache: per sample):')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for r in rows:
    kv = [f'{r["kv_cache_per_sample_gib"][str(b)]:.2f}' for b in budgets]
    print(f'| {r["mesh"]} | {r["params_bf16_gib"]:.3f} | {r["trained_f32_adamw_gib"]:.3f} | '
          + ' | '.join(kv) + f' | {r["teacher_pass_temp_gib"]:.2f} |')
  from benchmarks import report
  report.write_results(FLAGS.out, rows, query_chunk=FLAGS.query_chunk,
                       note='abstract shapes; the teacher pass from XLA CPU memory analysis')


if __name__ == '__main__':
  app.run(main)
