"""Shuffle, repeat and batch a random-access dataset in numpy, and place batches on a device mesh.

The batch at step s is a pure function of (seed, s): example slot j of the whole stream
(j = s * global_batch_size + i) reads example perm_e[j mod n] of epoch e = j // n, where perm_e is
a permutation drawn from (seed, e). A run resumed at step s therefore sees exactly the data of an
uninterrupted one, whatever the number of hosts. Each host reads only the rows of the global batch
that its devices hold, and `jax.make_array_from_process_local_data` assembles the global array.

Batches are dicts of arrays: `video` float32 [B, T, H, W, 3] in [-1, 1] (or the stored uint8 with
as_float=False), integer features as int32, the other features as stored, and `valid` bool [B]:
False only on the padding that completes the last batch of a finite (num_epochs) pipeline.
"""

import concurrent.futures
import functools
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def uint8_to_float(video: np.ndarray) -> np.ndarray:
  """uint8 0..255 -> float32 in [-1, 1] (the inverse of pafukv_jax.video_io.to_uint8)."""
  return np.asarray(video, np.float32) * np.float32(1 / 127.5) - np.float32(1.0)


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def stream_indices(step: int, global_batch_size: int, num_examples: int, seed: int,
                   shuffle: bool = True) -> np.ndarray:
  """Dataset index of each slot of the global batch at `step` (int64 [global_batch_size])."""
  slots = step * global_batch_size + np.arange(global_batch_size, dtype=np.int64)
  epochs, within = np.divmod(slots, num_examples)
  if not shuffle:
    return within
  out = np.empty_like(within)
  for epoch in np.unique(epochs):
    here = epochs == epoch
    out[here] = epoch_permutation(seed, int(epoch), num_examples)[within[here]]
  return out


def data_parallel_size(mesh: jax.sharding.Mesh, data_axes: Sequence[str]) -> int:
  missing = [a for a in data_axes if a not in mesh.shape]
  if missing:
    raise ValueError(f'data_axes {tuple(data_axes)} name axes {missing} that the mesh '
                     f'{dict(mesh.shape)} does not have.')
  return math.prod(mesh.shape[a] for a in data_axes)


class Pipeline:
  """Deterministic batches of `source` (any Sequence of example dicts, e.g. a TFDS data source).

  mesh / data_axes: the global batch is sharded over these mesh axes (replicated over the others)
  and each host reads only its own rows. Without a mesh, batches stay numpy and the host's part is
  the contiguous block process_index of process_count (both default to jax's).
  num_epochs: None repeats forever; otherwise the stream ends after that many passes, the last
  batch padded (valid=False) to full size.
  """

  def __init__(self, source: Sequence[Mapping[str, Any]], global_batch_size: int, *,
               seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
               mesh: jax.sharding.Mesh | None = None, data_axes: Sequence[str] = ('data',),
               keys: Sequence[str] | None = None, as_float: bool = True,
               process_index: int | None = None, process_count: int | None = None,
               prefetch: int = 2):
    self.source = source
    self.num_examples = len(source)
    if self.num_examples == 0:
      raise ValueError('The dataset is empty: nothing to batch. Check its split and its size.')
    if global_batch_size < 1:
      raise ValueError(f'global_batch_size must be >= 1; got {global_batch_size}.')
    self.global_batch_size = global_batch_size
    self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
    self.keys, self.as_float, self.prefetch = keys, as_float, prefetch
    self.mesh, self.data_axes = mesh, tuple(data_axes)
    if mesh is not None:
      dp = data_parallel_size(mesh, self.data_axes)
      if global_batch_size % dp:
        raise ValueError(
            f'The global batch size {global_batch_size} is not divisible by the data-parallel '
            f'size {dp} (mesh axes {self.data_axes} of {dict(mesh.shape)}): use a multiple of '
            f'{dp}, e.g. {dp * max(1, round(global_batch_size / dp))}.')
      spec = P(self.data_axes if len(self.data_axes) > 1 else self.data_axes[0])
      self.sharding = NamedSharding(mesh, spec)
      self.local_rows = self._rows_of_this_process()
    else:
      self.sharding = None
      index = jax.process_index() if process_index is None else process_index
      count = jax.process_count() if process_count is None else process_count
      if global_batch_size % count:
        raise ValueError(f'The global batch size {global_batch_size} is not divisible by the '
                         f'number of processes {count}: use a multiple of {count}.')
      per_host = global_batch_size // count
      self.local_rows = np.arange(index * per_host, (index + 1) * per_host)

  def _rows_of_this_process(self) -> np.ndarray:
    """The global batch rows held by this process's devices, in the order jax expects them."""
    rows = set()
    for index in self.sharding.addressable_devices_indices_map((self.global_batch_size,)).values():
      rows.update(range(self.global_batch_size)[index[0]])
    return np.array(sorted(rows), np.int64)

  @property
  def num_steps(self) -> int | None:
    """Steps until a finite stream ends (None when it repeats forever)."""
    if self.num_epochs is None:
      return None
    return math.ceil(self.num_examples * self.num_epochs / self.global_batch_size)

  def global_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset index, valid) of every row of the global batch at `step`."""
    indices = stream_indices(step, self.global_batch_size, self.num_examples, self.seed,
                             self.shuffle)
    slots = step * self.global_batch_size + np.arange(self.global_batch_size)
    valid = (np.ones_like(slots, bool) if self.num_epochs is None
             else slots < self.num_examples * self.num_epochs)
    return indices, valid

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """The rows of the global batch at `step` that this process reads, as numpy arrays."""
    indices, valid = self.global_indices(step)
    rows = indices[self.local_rows].tolist()
    getitems = getattr(self.source, '__getitems__', None)
    examples = getitems(rows) if getitems is not None else [self.source[i] for i in rows]
    keys = self.keys if self.keys is not None else sorted(examples[0])
    batch = {k: self._convert(k, np.stack([np.asarray(e[k]) for e in examples])) for k in keys}
    batch['valid'] = valid[self.local_rows]
    return batch

  def _convert(self, key: str, array: np.ndarray) -> np.ndarray:
    if key == 'video' and self.as_float and array.dtype == np.uint8:
      return uint8_to_float(array)
    if np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
      return array.astype(np.int32)   # jax's default integer width
    return array

  def to_global(self, local: dict[str, np.ndarray]) -> dict[str, Any]:
    """The global batch (jax.Arrays sharded on the mesh) from this process's rows."""
    if self.sharding is None:
      return local
    return {k: jax.make_array_from_process_local_data(
        self.sharding, v, (self.global_batch_size,) + v.shape[1:]) for k, v in local.items()}

  def batch(self, step: int) -> dict[str, Any]:
    """The batch at `step`: global jax.Arrays with a mesh, this host's numpy rows without."""
    return self.to_global(self.local_batch(step))

  def iterate(self, start_step: int = 0) -> Iterator[dict[str, Any]]:
    """Batches from `start_step` on (to resume, pass the restored step); reads ahead in a thread."""
    end = self.num_steps
    steps = iter(range(start_step, end)) if end is not None else itertools.count(start_step)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
      pending = [pool.submit(self.local_batch, s)
                 for s in itertools.islice(steps, max(self.prefetch, 0) + 1)]
      while pending:
        local = pending.pop(0).result()
        pending += [pool.submit(self.local_batch, s) for s in itertools.islice(steps, 1)]
        yield self.to_global(local)

  def __iter__(self):
    return self.iterate(0)

