"""Counts XLA compilations of named jitted functions (JAX's compile monitoring events)."""

import jax

_EVENT = '/jax/core/compile/backend_compile_duration'


class CompileCounter:
  """`with CompileCounter('f', 'g') as c: ...` then c.count, c.seconds (backend compile time)."""

  def __init__(self, *fun_names: str):
    self.fun_names = set(fun_names)
    self.count = 0
    self.seconds = 0.0

  def _listen(self, event, duration, **kwargs):
    name = kwargs.get('fun_name', '')
    if name.startswith('jit(') and name.endswith(')'):
      name = name[4:-1]
    if event == _EVENT and (not self.fun_names or name in self.fun_names):
      self.count += 1
      self.seconds += duration

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listen)
    return False
