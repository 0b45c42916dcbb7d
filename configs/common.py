"""Model sizes shared by every config: `model_config(size)`."""

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
      dtype='float32', scan_layers=True))


def split_arg(arg: str) -> tuple[str, str]:
  """A training config's arg, 'SIZE[,DATASET]' in any order -> (model size, data config arg).

  'small' (the default size), 'base', 'tiny' (tests / CI), 'photo_pan', 'base,photo_pan', ...
  """
  parts = [p for p in arg.split(',') if p]
  sizes = [p for p in parts if p in SIZES]
  if len(sizes) > 1:
    raise ValueError(f'At most one model size in {arg!r}; got {sizes}.')
  size = sizes[0] if sizes else 'small'
  datasets = [p for p in parts if p not in SIZES]
  return size, ','.join(['tiny' if size == 'tiny' else 'base', *datasets])


def train_config(stage: str, arg: str) -> ml_collections.ConfigDict:
  """The fields every training stage has. arg: see split_arg; 'tiny' gives the test / CI size."""
  from configs import data
  from pafukv_jax import parallel
  size, data_arg = split_arg(arg)
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
  c.data = data.get_config(data_arg)
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
