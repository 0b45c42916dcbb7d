"""The Salience Estimation Head: predicts, while generating, how much a token will matter.

A small MLP on the student's per-token features from the clean pass that writes the cache (the
output of block `feature_layer`), one score per token. It is distilled from the bidirectional
teacher's salience (salience_targets.py), which saw the future the student cannot. Its cost is
one LayerNorm and two small matmuls per token: negligible next to a chunk step.

A head is called as head(hidden [L, B, N, dim], token_index [B, N]) -> scores [B, N]; the learned
head ignores token_index, `TableScorer` (the `oracle` policy's scores) looks it up.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class SalienceHead(nnx.Module):

  def __init__(self, dim: int, hidden_dim: int = 64, feature_layer: int = -1, *, rngs: nnx.Rngs):
    self.feature_layer = feature_layer
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.fc1 = nnx.Linear(dim, hidden_dim, rngs=rngs)
    self.fc2 = nnx.Linear(hidden_dim, 1, rngs=rngs)

  def __call__(self, hidden, token_index=None):
    del token_index
    x = self.norm(hidden[self.feature_layer].astype(jnp.float32))
    return self.fc2(jax.nn.gelu(self.fc1(x)))[..., 0]

  def flops_per_token(self) -> int:
    dim, hid = self.fc1.kernel.shape
    return 2 * dim * hid + 2 * hid + 8 * dim  # two matmuls, bias, gelu and norm (roughly)


class TableScorer(nnx.Module):
  """Scores looked up by absolute token index from a table [B, T*S] (the oracle's)."""

  def __init__(self, table):
    self.table = nnx.Variable(jnp.asarray(table, jnp.float32))

  def __call__(self, hidden, token_index):
    del hidden
    return jnp.take_along_axis(self.table[...], token_index, axis=1)
