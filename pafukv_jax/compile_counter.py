"""Counts XLA compilations of jitted functions (JAX's compile monitoring events)."""

import collections

import jax

_EVENT = '/jax/core/compile/backend_compile_duration'


class CompileCounter:
  """`with CompileCounter(f, g) as c: ...` then c.count, c.by_name ({name: count}) and c.seconds
  (backend compile time). f, g: jitted functions (or their names); none given: every compile."""

  def __init__(self, *funs):
    self.fun_names = {f if isinstance(f, str) else f.__name__ for f in funs}
    self.by_name = collections.Counter()
    self.seconds = 0.0

  @property
  def count(self) -> int:
    return sum(self.by_name.values())

  def _listen(self, event, duration, **kwargs):
    name = kwargs.get('fun_name', '')
    if name.startswith('jit(') and name.endswith(')'):
      name = name[4:-1]
    if event == _EVENT and (not self.fun_names or name in self.fun_names):
      self.by_name[name] += 1
      self.seconds += duration

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listen)
    return False
