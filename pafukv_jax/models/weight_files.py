"""Reading PyTorch-world weight files as NumPy, without PyTorch: safetensors and `torch.save` zips.

Both readers are lazy: `read_weights(path)` returns {name: LazyArray}, and only the arrays a
loader asks for are read (a Self-Forcing checkpoint holds the generator, its EMA and a critic;
one 1.3B copy is 5.7 GB in float32). bfloat16 comes back as `ml_dtypes.bfloat16` (JAX's own).

The `torch.save` reader unpickles with an allow-list (tensors, storages, parameters, ordered
dicts), as torch's own `weights_only=True` does, so a pickle that would run code is refused.
"""

import json
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

_SAFETENSORS_DTYPES = dict(
    F64=np.float64, F32=np.float32, F16=np.float16, BF16=ml_dtypes.bfloat16, I64=np.int64,
    I32=np.int32, I16=np.int16, I8=np.int8, U8=np.uint8, BOOL=np.bool_)
_TORCH_STORAGES = dict(
    DoubleStorage=np.float64, FloatStorage=np.float32, HalfStorage=np.float16,
    BFloat16Storage=ml_dtypes.bfloat16, LongStorage=np.int64, IntStorage=np.int32,
    ShortStorage=np.int16, CharStorage=np.int8, ByteStorage=np.uint8, BoolStorage=np.bool_)


class WeightFileError(ValueError):
  """A file that is not a weights file this module reads (named in the message)."""


class LazyArray:
  """An array in a file, read by `np.asarray(lazy)` (or `.load()`); `.shape`, `.dtype` are free."""

  def __init__(self, shape, dtype, read):
    self.shape, self.dtype, self._read = tuple(shape), np.dtype(dtype), read

  def load(self) -> np.ndarray:
    return np.asarray(self._read())

  def __array__(self, dtype=None, copy=None):
    out = self.load()
    return out if dtype is None else out.astype(dtype)

  def __repr__(self):
    return f'LazyArray(shape={self.shape}, dtype={self.dtype})'


# -- safetensors ------------------------------------------------------------------------------


def read_safetensors(path: str) -> dict:
  """{name: LazyArray} of one .safetensors file (memory-mapped)."""
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) < 8:
      raise WeightFileError(f'{path} is not a safetensors file (shorter than its 8-byte header).')
    (size,) = struct.unpack('<Q', head)
    if size > os.path.getsize(path) - 8:
      raise WeightFileError(f'{path} is not a safetensors file (its header length {size} is '
                            'past the end of the file; a truncated download?).')
    try:
      header = json.loads(f.read(size))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise WeightFileError(f'{path} is not a safetensors file (its header is not JSON: {e}).')
  start = 8 + size
  out = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    if entry['dtype'] not in _SAFETENSORS_DTYPES:
      raise WeightFileError(f'{path}: {name} has dtype {entry["dtype"]}, which this reader does '
                            f'not take (it reads {sorted(_SAFETENSORS_DTYPES)}).')
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry['dtype']])
    begin, end = entry['data_offsets']
    shape = tuple(entry['shape'])
    if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
      raise WeightFileError(f'{path}: {name} holds {end - begin} bytes for shape {shape}.')

    def read(begin=begin, shape=shape, dtype=dtype):
      return np.array(np.memmap(path, dtype=dtype, mode='r', offset=start + begin, shape=shape)
                      if shape else np.fromfile(path, dtype, 1, offset=start + begin)[0])
    out[name] = LazyArray(shape, dtype, read)
  return out


# -- torch.save (zip) -------------------------------------------------------------------------


class _Storage:
  def __init__(self, archive, key, dtype):
    self.archive, self.key, self.dtype = archive, key, dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
  dtype = np.dtype(storage.dtype)

  def read():
    with zipfile.ZipFile(storage.archive[0]) as z:
      flat = np.frombuffer(z.read(f'{storage.archive[1]}/data/{storage.key}'), dtype)
    if not size:
      return flat[offset].copy()
    view = np.lib.stride_tricks.as_strided(flat[offset:], size,
                                           [s * dtype.itemsize for s in stride])
    return np.array(view)
  return LazyArray(size, dtype, read)


def _rebuild_parameter(data, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  _ALLOWED = {('collections', 'OrderedDict'), ('torch._utils', '_rebuild_tensor_v2'),
              ('torch._utils', '_rebuild_parameter'), ('torch', 'Size')}

  def __init__(self, file, archive):
    super().__init__(file)
    self.archive = archive

  def find_class(self, module, name):
    if module == 'torch' and name in _TORCH_STORAGES:
      return name
    if (module, name) not in self._ALLOWED:
      raise WeightFileError(f'{self.archive[0]} pickles {module}.{name}, which is not a tensor or '
                            'a dict of tensors: refused (only weights are read).')
    return dict(OrderedDict=dict, _rebuild_tensor_v2=_rebuild_tensor,
                _rebuild_parameter=_rebuild_parameter, Size=tuple)[name]

  def persistent_load(self, pid):
    kind, storage_type, key, _location, _numel = pid
    if kind != 'storage' or storage_type not in _TORCH_STORAGES:
      raise WeightFileError(f'{self.archive[0]}: storage {pid!r} is not one this reader takes.')
    return _Storage(self.archive, key, _TORCH_STORAGES[storage_type])


def read_torch(path: str):
  """The object a `torch.save` zip holds, its tensors as LazyArrays (dicts stay dicts)."""
  if not zipfile.is_zipfile(path):
    raise WeightFileError(f'{path} is not a torch.save zip file (the legacy pre-1.6 format and '
                          'other files are not read: re-save it with torch.save).')
  with zipfile.ZipFile(path) as z:
    pickles = [n for n in z.namelist() if n.endswith('/data.pkl')]
    if len(pickles) != 1:
      raise WeightFileError(f'{path} is a zip but not a torch.save file (no single data.pkl).')
    root = pickles[0][:-len('/data.pkl')]
    order = z.read(f'{root}/byteorder').decode() if f'{root}/byteorder' in z.namelist() else 'little'
    if order != 'little':
      raise WeightFileError(f'{path} was saved on a {order}-endian machine; not supported.')
    with z.open(pickles[0]) as f:
      return _Unpickler(f, (path, root)).load()


def read_weights(path: str) -> dict:
  """{name: LazyArray} of a .safetensors file, a diffusers shard index (.index.json), or a
  torch.save file holding a flat dict of tensors."""
  if path.endswith('.index.json'):
    with open(path) as f:
      weight_map = json.load(f).get('weight_map')
    if not isinstance(weight_map, dict):
      raise WeightFileError(f'{path} has no "weight_map": not a safetensors shard index.')
    out, folder = {}, os.path.dirname(path)
    for shard in sorted(set(weight_map.values())):
      out.update(read_safetensors(os.path.join(folder, shard)))
    missing = sorted(set(weight_map) - set(out))
    if missing:
      raise WeightFileError(f'{path} lists {len(missing)} arrays its shards lack: {missing[:5]}')
    return out
  if path.endswith('.safetensors'):
    return read_safetensors(path)
  return read_torch(path)


def refuse_problems(problems: list[str], error: type[Exception], what: str) -> None:
  """Raises `error` listing the first 20 problems (name: what is wrong) of weights that do not
  fit `what` (e.g. 'the model'); does nothing if there are none."""
  if problems:
    listed = '\n  '.join(problems[:20]) + ('\n  ...' if len(problems) > 20 else '')
    raise error(f'the weights do not fit {what} ({len(problems)} problems):\n  {listed}')


def nest(flat: dict, int_indices: bool = False) -> dict:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}}; with int_indices, all-digit parts become ints
  (list positions in an NNX state)."""
  nested = {}
  for path, array in flat.items():
    node = nested
    *parents, leaf = [int(p) if int_indices and p.isdigit() else p for p in path.split('/')]
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = array
  return nested
