"""The layers every module builds on: a linear layer with logical axis names, Wan's layer norm,
and its two-layer MLP."""

import jax
import jax.numpy as jnp
from flax import nnx


def dense(cfg, din, dout, axes, rngs, init=nnx.initializers.lecun_normal()):
  """Linear layer with logical axis names on its kernel and bias; computes in cfg's dtype,
  keeps float32 weights."""
  return nnx.Linear(
      din, dout, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
      kernel_init=nnx.with_partitioning(init, axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), axes[-1:]),
      rngs=rngs)


def layer_norm(cfg, dim, rngs, affine=False):
  """Wan's LayerNorm: without scale and bias, except where `affine` (the cross-attention's).
  The variance is E[(x - mean)^2], as torch computes it: the fast E[x^2] - mean^2 erred by 4e-4
  against Wan's at a per-token mean of 30, 4e-2 at 300."""
  return nnx.LayerNorm(dim, epsilon=cfg.eps, use_bias=affine, use_scale=affine,
                       use_fast_variance=False, dtype=cfg.compute_dtype, rngs=rngs)


def gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


class MLP(nnx.Module):
  """Two linear layers with an activation between (Wan's `nn.Sequential(Linear, act, Linear)`)."""

  def __init__(self, cfg, din, dhidden, dout, act, axes=('embed', 'mlp'), *, rngs):
    self.fc1 = dense(cfg, din, dhidden, axes, rngs)
    self.fc2 = dense(cfg, dhidden, dout, axes[::-1], rngs)
    self.act = act

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))
