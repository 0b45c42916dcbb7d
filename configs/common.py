"""Model sizes and the arg grammar shared by every config: `model_config(size)`, `parse_arg(arg)`."""

import dataclasses

import ml_collections

# name: (image_size, patch, dim, ffn_dim, heads, layers, cond_dim)
SIZES = {
    'tiny': ((16, 16), 4, 32, 64, 2, 2, 16),     # tests and CI: compiles in seconds
    'small': ((32, 32), 4, 64, 256, 4, 2, 32),   # demo models trained on 2 CPU cores
    'base': ((32, 32), 4, 128, 512, 4, 4, 64),   # the benchmark size (PERF_NOTES)
}


def model_config(size: str = 'base') -> ml_collections.ConfigDict:
  if size not in SIZES:
    raise ValueError(f'Unknown model size {size!r}; choose one of {list(SIZES)}.')
  image_size, patch, dim, ffn, heads, layers, cond = SIZES[size]
  return ml_collections.ConfigDict(dict(
      image_size=image_size, channels=3, patch_size=patch, dim=dim, ffn_dim=ffn,
      num_heads=heads, num_layers=layers, freq_dim=256, cond_dim=cond, num_cond_tokens=4,
      num_classes=10, frame_cond_dim=0, frame_cond_scale=1.0, eps=1e-6, rope_theta=10000.0,
      rope_positions='grid',
      # how to run it (models/attention.py), not what it computes
      dtype='float32', scan_layers=True, attention_impl='auto', cache_block_size=512,
      attention_query_chunk=1024))


@dataclasses.dataclass(frozen=True)
class ConfigArg:
  """A config's `get_config(arg)` argument, parsed: what every config file accepts."""
  size: str | None     # a model size of SIZES, None if not named
  dataset: str | None  # a dataset name (occluded_objects, photo_pan, folder, tfds:NAME), or None


def parse_arg(arg: str | None) -> ConfigArg:
  """The one grammar of every config's arg: 'SIZE,DATASET', both optional, in any order.

  A token that is a model size (tiny, small, base) is the size; any other token names the dataset:
  'tiny', 'photo_pan', 'small,photo_pan', 'photo_pan,small', 'base,tfds:moving_mnist'."""
  parts = [p.strip() for p in (arg or '').split(',') if p.strip()]
  sizes = [p for p in parts if p in SIZES]
  datasets = [p for p in parts if p not in SIZES]
  if len(sizes) > 1 or len(datasets) > 1:
    what, names = ('model size', sizes) if len(sizes) > 1 else ('dataset name', datasets)
    raise ValueError(f'At most one {what} in config arg {arg!r} (got {", ".join(names)}); sizes: '
                     f'{list(SIZES)}, and one dataset, e.g. "small,photo_pan".')
  return ConfigArg(sizes[0] if sizes else None, datasets[0] if datasets else None)


def data_arg(parsed: ConfigArg) -> str:
  """The data config's arg for a model config's: tiny clips for the tiny model, else base."""
  return ','.join(['tiny' if parsed.size == 'tiny' else 'base', *filter(None, [parsed.dataset])])


def train_config(stage: str, arg: str) -> ml_collections.ConfigDict:
  """The fields every training stage has. arg: see parse_arg (size default small); 'tiny' gives
  the test / CI size."""
  from configs import data
  from pafukv_jax import parallel
  parsed = parse_arg(arg)
  size = parsed.size or 'small'
  tiny = size == 'tiny'
  c = ml_collections.ConfigDict()
  c.stage = stage
  c.total_steps = 20_000        # also the length of the learning-rate schedule
  c.stop_at_step = 0           # >0: stop (and save) at this step, on total_steps' schedule;
                               # a later run with stop_at_step=0 resumes to total_steps
  c.batch_size = 16            # global, over all hosts; a multiple of mesh.data x mesh.fsdp
  c.seed = 0                   # weights, noise levels and noise; the data order is data.shuffle_seed
  c.log_every = 50             # metrics to DIR/metrics.jsonl and DIR/tensorboard
  c.checkpoint_every = 1000
  c.max_to_keep = 3
  c.sample_every = 2000        # sample videos to DIR/samples/step_N/ (0: never)
  c.multihost = False          # jax.distributed.initialize() before anything else

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1             # -1: every device not used by fsdp
  c.mesh.fsdp = 1              # parameters and optimizer state sharded over this axis
  c.mesh.rules = parallel.DEFAULT_RULES  # logical axis -> mesh axis

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 500
  c.optimizer.final_lr_fraction = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.99
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip = 1.0
  c.optimizer.ema_decay = 0.999  # 0: no EMA of the weights

  c.train_shift = 3.0          # shift of the training noise levels
  c.label_dropout = 0.1        # labels replaced by the null label (classifier-free guidance)
  c.chunk_frames = 1
  c.clean_context_prob = 0.5   # student: probability that a context chunk is clean (t = 0)
  c.init_from = ''             # student: the teacher's workdir (or a params directory)

  c.sample = ml_collections.ConfigDict()
  c.sample.num_samples = 2
  c.sample.timesteps = (1000, 750, 500, 250)
  c.sample.shift = 5.0

  c.model = model_config(size)
  c.model.frame_cond_dim = 2   # the datasets' per-frame camera motion
  # frame_cond is camera motion in pixels (up to 12 a frame on photo_pan): as a fraction of the
  # frame it is O(1). Its embedding is added to the time embedding, where raw pixels drowned the
  # noise level (photo_pan's teacher reached loss 1.05 at step 200 raw, 0.31 scaled).
  c.model.frame_cond_scale = 1.0 / max(c.model.image_size)
  c.data = data.get_config(data_arg(ConfigArg(size, parsed.dataset)))
  c.data.num_frames = 8 if tiny else 16
  if tiny:
    c.total_steps = 6
    c.batch_size = 8
    c.log_every = 1
    c.checkpoint_every = 3
    c.sample_every = 0
    c.optimizer.warmup_steps = 2
    c.optimizer.learning_rate = 1e-3
    c.sample.timesteps = (1000, 500)
  return c
