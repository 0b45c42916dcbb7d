import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pafukv_jax import parallel


def _mesh(data, fsdp):
  return parallel.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)))


def test_constrain_batch_splits_the_batch_under_a_mesh_and_is_identity_without():
  x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
  f = jax.jit(lambda x: parallel.constrain_batch(x * 2))
  mesh = _mesh(2, 4)
  replicated = jax.device_put(x, parallel.replicated(mesh))
  with jax.set_mesh(mesh):
    out = f(replicated)
  assert out.sharding.spec == jax.sharding.PartitionSpec(parallel.BATCH_AXES)
  assert {s.data.shape for s in out.addressable_shards} == {(1, 6)}  # a row per device
  np.testing.assert_array_equal(out, 2 * x)
  plain = f(x)  # no mesh in context: nothing to split over
  assert len(plain.sharding.device_set) == 1
  np.testing.assert_array_equal(plain, 2 * x)


def test_fsdp_teacher_pass_keeps_one_sample_per_device():
  """Under FSDP the activations stay split over the batch: a device's temporaries for a tiny
  model's forward do not grow with the number of samples on the other devices."""
  from flax import nnx
  from tests.helpers import tiny_model_config
  from pafukv_jax.models.dit import VideoDiT
  cfg = tiny_model_config(dim=64, ffn_dim=128, num_heads=2)
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: VideoDiT(cfg, rngs=nnx.Rngs(0))))
  forward = lambda s, v, c: nnx.merge(graphdef, s)(v, jnp.zeros(v.shape[:2]), jnp.arange(8), c)[0]

  def temp(mesh, constrained):
    shardings = parallel.param_shardings(state, mesh)
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.BATCH_AXES))
    video = jax.ShapeDtypeStruct((8, 8, *cfg.image_size, cfg.channels), jnp.float32)
    label = jax.ShapeDtypeStruct((8,), jnp.int32)
    lower = lambda: jax.jit(forward, in_shardings=(shardings, batch, batch)).lower(
        state, video, label).compile().memory_analysis().temp_size_in_bytes
    if not constrained:
      return lower()
    with jax.set_mesh(mesh):
      return lower()

  mesh = _mesh(1, 8)
  with_constraint, without = temp(mesh, True), temp(mesh, False)
  assert with_constraint * 3 < without, (with_constraint, without)
