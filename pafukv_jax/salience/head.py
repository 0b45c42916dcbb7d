"""The Salience Estimation Head: predicts, while generating, how much a token will matter.

A small MLP on the student's per-token features from the clean pass that writes the cache (the
output of block `feature_layer`), one score per token. It is distilled from the bidirectional
teacher's salience (targets.py), which saw the future the student cannot. Its cost is
one LayerNorm and two small matmuls per token: negligible next to a chunk step.

A head is called as head(hidden [L, B, N, dim], token_index [B, N]) -> scores [B, N], or
[L, B, N] for a per-layer head (one selection per layer). The learned head ignores token_index
(the absolute index of each token); a scorer that looks scores up by it may take the head's place.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class SalienceHead(nnx.Module):

  def __init__(self, dim: int, hidden_dim: int = 64, feature_layer: int = -1,
               num_outputs: int = 1, *, rngs: nnx.Rngs):
    """num_outputs: 1 (one score shared by all layers) or the number of layers (per layer)."""
    self.feature_layer = feature_layer
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.fc1 = nnx.Linear(dim, hidden_dim, rngs=rngs)
    self.fc2 = nnx.Linear(hidden_dim, num_outputs, rngs=rngs)

  def __call__(self, hidden, token_index=None):
    del token_index
    x = self.norm(hidden[self.feature_layer].astype(jnp.float32))
    out = self.fc2(jax.nn.gelu(self.fc1(x)))
    return out[..., 0] if out.shape[-1] == 1 else jnp.moveaxis(out, -1, 0)


def init_head(head_cfg, model_cfg, seed: int = 0) -> SalienceHead:
  """The head that `head_cfg` (configs/salience.py's `head`) describes, on a DiT of `model_cfg`."""
  num_layers = model_cfg.num_layers
  if not -num_layers <= head_cfg.feature_layer < num_layers:
    raise ValueError(f'head.feature_layer={head_cfg.feature_layer} is not a layer of a '
                     f'{num_layers}-layer model.')
  return SalienceHead(model_cfg.dim, head_cfg.hidden_dim, head_cfg.feature_layer,
                      num_layers if head_cfg.per_layer else 1, rngs=nnx.Rngs(seed))
