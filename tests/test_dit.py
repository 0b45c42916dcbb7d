import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from pafukv_jax.cache import kv_cache
from pafukv_jax.models.dit import DiTConfig
from tests.helpers import tiny_model, tiny_model_config


def _inputs(cfg, b=2, t=6, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  video = jax.random.normal(k1, (b, t, *cfg.image_size, cfg.channels))
  times = jax.random.uniform(k2, (b, t))
  return video, times, jnp.arange(t), jnp.array([3, 10])[:b]


def test_shapes_and_kv():
  model = tiny_model()
  cfg = model.cfg
  video, times, frames, label = _inputs(cfg)
  v, aux = model(video, times, frames, label, collect=('k', 'v'))
  k, vv = aux['k'], aux['v']
  assert set(aux) == {'k', 'v'}  # only what was asked for
  assert v.shape == video.shape and v.dtype == jnp.float32
  n = 6 * cfg.tokens_per_frame
  assert k.shape == vv.shape == (cfg.num_layers, 2, cfg.num_heads, n, cfg.head_dim)


@pytest.mark.parametrize('impl,block_size', [('blockwise', 32), ('blockwise', 24), ('masked', 32),
                                             ('xla', 32)])
def test_cached_chunk_equals_block_causal_forward(impl, block_size):
  """Chunks written through the cache, then one chunk attending to it = the parallel forward."""
  model = tiny_model(attention_impl=impl)
  cfg = model.cfg
  f = 2
  video, times, frames, label = _inputs(cfg)
  times = times.at[:, :4].set(0.0)  # earlier chunks clean, as the rollout writes them
  want, _ = model(video, times, frames, label, mode='block_causal', chunk_frames=f)

  cache = kv_cache.init_cache(cfg.num_layers, 2, 4 * cfg.tokens_per_frame, cfg.num_heads,
                              cfg.head_dim)
  s = cfg.tokens_per_frame
  for c in range(2):
    sl = slice(c * f, (c + 1) * f)
    out, aux = model(video[:, sl], times[:, sl], frames[sl], label, mode='cached',
                     cache=cache.read(block_size), collect=('k', 'v'))
    k, v = aux['k'], aux['v']
    np.testing.assert_allclose(out, want[:, sl], atol=1e-5, rtol=1e-5)
    token_frames = jnp.broadcast_to(jnp.repeat(frames[sl], s), (2, f * s))
    score = jnp.zeros((cfg.num_layers, 2, f * s))
    keep = jnp.zeros((cfg.num_layers, 2, cache.capacity + f * s))
    cache = kv_cache.update_cache(cache, k, v, token_frames, score, keep)
  out, _ = model(video[:, 4:], times[:, 4:], frames[4:], label, mode='cached',
                 cache=cache.read(block_size))
  np.testing.assert_allclose(out, want[:, 4:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('scan_layers', [True, False])
def test_a_pass_without_velocity_returns_the_same_kv_and_skips_the_last_block(scan_layers):
  """velocity=False (the pass that writes the cache) gives the K/V of the whole forward; with
  only q, k, v collected the last block stops at them: its attention and feed-forward, and the
  output head, are not in the program (the cache-mass pass needs its attention: kept)."""
  model = tiny_model(scan_layers=scan_layers)
  cfg = model.cfg
  video, times, frames, label = _inputs(cfg, t=2)
  cache = kv_cache.init_cache(cfg.num_layers, 2, 4 * cfg.tokens_per_frame, cfg.num_heads,
                              cfg.head_dim)
  run = lambda velocity, collect: model(video, times, frames, label, mode='cached',
                                        cache=cache.read(32), collect=collect, velocity=velocity)
  want = run(True, ('k', 'v'))[1]
  none, got = run(False, ('k', 'v'))
  assert none is None
  for name in ('k', 'v'):
    np.testing.assert_allclose(got[name], want[name], atol=1e-6)
  _, with_mass = run(False, ('cache_mass', 'k', 'v'))
  np.testing.assert_allclose(with_mass['cache_mass'], run(True, ('cache_mass',))[1]['cache_mass'],
                             atol=1e-6)
  if scan_layers:  # in the layer loop, the last block's branch holds only the q, k, v matmuls
    conds = [e for e in _equations(jax.make_jaxpr(lambda: run(False, ('k', 'v'))[1])().jaxpr)
             if e.primitive.name == 'cond']
    assert len(conds) == 1
    dots = sorted(_count(b.jaxpr, 'dot_general') for b in conds[0].params['branches'])
    assert dots[0] == 3 and dots[1] > 3, dots
    assert not any(e.primitive.name == 'cond' for e in
                   _equations(jax.make_jaxpr(lambda: run(True, ('k', 'v')))().jaxpr))


def _equations(jaxpr):
  """Every equation of a jaxpr, those of its sub-jaxprs (scan bodies, branches) included."""
  for e in jaxpr.eqns:
    yield e
    for value in e.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, 'jaxpr', None)
        if inner is not None and hasattr(inner, 'eqns'):
          yield from _equations(inner)
        elif hasattr(sub, 'eqns'):
          yield from _equations(sub)


def _count(jaxpr, name):
  return sum(e.primitive.name == name for e in _equations(jaxpr))


def test_block_causal_ignores_the_future_and_bidirectional_does_not():
  model = tiny_model()
  video, times, frames, label = _inputs(model.cfg)
  changed = video.at[:, 4:].add(1.0)
  causal = lambda x: model(x, times, frames, label, mode='block_causal', chunk_frames=2)[0]
  np.testing.assert_allclose(causal(video)[:, :4], causal(changed)[:, :4], atol=1e-6)
  bidi = lambda x: model(x, times, frames, label)[0]
  assert float(jnp.max(jnp.abs(bidi(video)[:, :4] - bidi(changed)[:, :4]))) > 1e-3


def test_timestep_is_per_frame():
  """Changing frame 5's noise level changes only frame 5 when frames cannot see each other."""
  model = tiny_model()
  video, times, frames, label = _inputs(model.cfg)
  run = lambda t: model(video, t, frames, label, mode='block_causal', chunk_frames=1)[0]
  a, b = run(times), run(times.at[:, 5].set(0.9))
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
  assert float(jnp.max(jnp.abs(a[:, 5] - b[:, 5]))) > 1e-3


def test_scan_and_unrolled_layers_agree():
  scanned = tiny_model(scan_layers=True)
  unrolled = tiny_model(scan_layers=False)
  video, times, frames, label = _inputs(scanned.cfg)
  np.testing.assert_allclose(scanned(video, times, frames, label)[0],
                             unrolled(video, times, frames, label)[0], atol=1e-5)


def test_frame_condition_is_used():
  model = tiny_model(frame_cond_dim=2)
  video, times, frames, label = _inputs(model.cfg)
  cond = jnp.zeros((2, 6, 2))
  a, _ = model(video, times, frames, label, cond)
  b, _ = model(video, times, frames, label, cond.at[:, 3].set(1.0))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3
  with pytest.raises(ValueError, match='frame_cond'):
    model(video, times, frames, label)
  # a model without frame_cond accepts one and ignores it
  plain = tiny_model()
  np.testing.assert_array_equal(plain(video, times, frames, label, cond.at[:, 3].set(1.0))[0],
                                plain(video, times, frames, label)[0])


def test_collect_names_are_checked():
  model = tiny_model()
  video, times, frames, label = _inputs(model.cfg)
  with pytest.raises(ValueError, match='Cannot collect'):
    model(video, times, frames, label, collect=('kv',))
  with pytest.raises(ValueError, match='needs a cache'):
    model(video, times, frames, label, collect=('cache_mass',))


def test_frame_cond_scale_multiplies_the_condition():
  # the same weights: scale s on cond c computes what scale 1 does on s * c
  scaled = tiny_model(frame_cond_dim=2, frame_cond_scale=0.125)
  plain = tiny_model(frame_cond_dim=2)
  video, times, frames, label = _inputs(scaled.cfg)
  cond = jax.random.normal(jax.random.key(1), (2, 6, 2)) * 8
  np.testing.assert_allclose(scaled(video, times, frames, label, cond)[0],
                             plain(video, times, frames, label, cond * 0.125)[0], rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(scaled(video, times, frames, label, cond)[0]
                                - plain(video, times, frames, label, cond)[0]))) > 1e-3


def test_parameters_carry_logical_axes():
  model = tiny_model()
  from flax import nnx
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  assert tuple(specs['blocks']['self_attn']['q']['kernel']) == ('layers', 'embed', 'heads')
  assert tuple(specs['blocks']['ffn']['fc1']['kernel']) == ('layers', 'embed', 'mlp')


@pytest.mark.parametrize('field,value,match', [
    ('image_size', (18, 16), 'not divisible by model.patch_size'),
    ('num_heads', 3, 'not divisible by model.num_heads'),
    ('dtype', 'float64', 'model.dtype'),
    ('bogus', 1, 'Unknown model fields'),
])
def test_bad_model_config(field, value, match):
  cfg = common.model_config('tiny')
  with cfg.unlocked():
    cfg[field] = value
  with pytest.raises(ValueError, match=match):
    DiTConfig.from_config(cfg)


def test_world_positions_with_a_still_camera_are_the_grid_model():
  grid = tiny_model(frame_cond_dim=2)
  world = tiny_model(frame_cond_dim=2, rope_positions='world')
  video, times, frames, label = _inputs(grid.cfg)
  still = jnp.zeros((2, 6, 2))
  np.testing.assert_array_equal(world(video, times, frames, label, still)[0],
                                grid(video, times, frames, label, still)[0])
  moving = still.at[:, 2:, 0].set(4.0)  # one patch to the right per frame from frame 2
  assert float(jnp.max(jnp.abs(world(video, times, frames, label, moving)[0]
                                - grid(video, times, frames, label, moving)[0]))) > 1e-3
  with pytest.raises(ValueError, match='frame_cond_dim >= 2'):
    tiny_model(rope_positions='world')


@pytest.mark.parametrize('mode', ['bidirectional', 'block_causal'])
def test_query_chunked_forward_equals_all_queries_at_once(mode):
  """model.attention_query_chunk changes memory, not the result (self- and cross-attention)."""
  video, times, frames, label = _inputs(tiny_model_config())
  want, _ = tiny_model(attention_query_chunk=0)(video, times, frames, label, mode=mode,
                                                 chunk_frames=2)
  got, _ = tiny_model(attention_query_chunk=5)(video, times, frames, label, mode=mode,
                                                chunk_frames=2)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_reduce_inside_the_layer_loop_equals_reducing_the_collected():
  model = tiny_model()
  video, times, frames, label = _inputs(model.cfg)
  summary = lambda i: dict(qk=jnp.einsum('bhnd,bhnd->bn', i['q'], i['k']), k_max=i['k'].max())
  for scan in (True, False):
    model.cfg = tiny_model_config(scan_layers=scan)
    out, aux = model(video, times, frames, label, collect=('q', 'k'))
    got_out, got = model(video, times, frames, label, collect=('q', 'k'), reduce=summary)
    np.testing.assert_array_equal(got_out, out)
    want = jax.vmap(lambda q, k: summary(dict(q=q, k=k)))(aux['q'], aux['k'])
    assert set(got) == {'qk', 'k_max'} and got['qk'].shape == (model.cfg.num_layers, 2, 96)
    for name in want:
      np.testing.assert_allclose(got[name], want[name], rtol=1e-6)
