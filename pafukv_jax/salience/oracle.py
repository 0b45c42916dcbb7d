"""The `oracle` policy's token scores: the teacher's salience on the video being generated.

Not deployable, an upper reference: it needs the frames the cache has yet to generate. For a
batch, the `full` rollout with the same noise is generated first (or taken from a sweep, which
has it), and the bidirectional teacher's SSE (targets.py) on that whole video scores every token;
the cached rollout then looks each incoming token's score up (policies.py, `incoming='table'`).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pafukv_jax import checkpoints, rollout
from pafukv_jax.models.dit import DiTConfig, init_model
from pafukv_jax.salience import targets


def oracle_scores(teacher, video, label, frame_cond=None, *, chunk_frames: int,
                  weights=(1.0, 0.5, 1.0), normalize: str = 'max', per_layer: bool = False):
  """Token scores [B, T*S] (or [L, B, T*S] per layer): the teacher's SSE on whole videos."""
  regions = targets.teacher_regions(teacher, video, label, frame_cond,
                                    block_tokens=chunk_frames * teacher.cfg.tokens_per_frame)
  return targets.sse_targets(regions, weights, normalize, per_layer)


class OracleScores:
  """The oracle's token scores for a batch: the `full` rollout with the same noise, then the
  teacher's salience on it. Costs a second rollout."""

  def __init__(self, model, rc: rollout.RolloutConfig, model_cfg: DiTConfig, teacher_dir: str, *,
               weights=(1.0, 0.5, 1.0), normalize: str = 'max', per_layer: bool = False):
    teacher = checkpoints.load_params(teacher_dir, init_model(model_cfg))
    self.full = rollout.Rollout(model, rc, rollout.full_cache_spec(rc, model_cfg))
    graphdef, self.teacher_params = nnx.split(teacher)
    self._scores = jax.jit(lambda params, video, label, cond: oracle_scores(
        nnx.merge(graphdef, params), video, label, cond, chunk_frames=rc.chunk_frames,
        weights=tuple(weights), normalize=normalize, per_layer=per_layer))

  def __call__(self, inputs: rollout.RolloutInputs, context=None):
    """Scores of the `full` rollout of these inputs (keys, labels, frame_cond)."""
    video = self.full.generate(inputs, context).videos
    return self.of_video(video, inputs.cond, inputs.frame_cond)

  def of_video(self, video, label, frame_cond):
    """Scores from a `full` rollout already generated (a sweep has it)."""
    return self._scores(self.teacher_params, jnp.asarray(video, jnp.float32),
                        jnp.asarray(label, jnp.int32), frame_cond)
