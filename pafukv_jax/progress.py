"""Progress of a long job: a tqdm bar on a terminal, plain lines in a log.

Under `nohup` or `> log` a bar would be noise (and tqdm's `disable=None` prints nothing at all),
so without a terminal the job prints a line when it starts, one every `every` seconds (done,
total, rate, time left and the last postfix) and one when it ends.
"""

import sys
import time

import tqdm


class _Lines:
  """tqdm's update / set_postfix / close, as periodic lines on stderr."""

  def __init__(self, total, desc, unit, initial, every):
    self.total, self.desc, self.unit, self.every = total, desc, unit, every
    self.n = self.start_n = initial
    self.start = self.last = time.perf_counter()
    self.postfix, self.closed = '', False
    self._print(f'{self.desc}: started at {self.n}/{self.total} {self.unit}s')

  def _print(self, text):
    print(text, file=sys.stderr, flush=True)

  def _line(self, now):
    rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
    left = (self.total - self.n) / rate if rate > 0 and self.total else None
    eta = f', {left:.0f} s left' if left is not None else ''
    return (f'{self.desc}: {self.n}/{self.total} {self.unit}s ({rate:.2f} {self.unit}/s{eta})'
            + (f' {self.postfix}' if self.postfix else ''))

  def update(self, n=1):
    self.n += n
    now = time.perf_counter()
    if now - self.last >= self.every:
      self.last = now
      self._print(self._line(now))

  def set_postfix(self, **values):
    self.postfix = ' '.join(f'{k}={v}' for k, v in values.items())

  def set_postfix_str(self, text):
    self.postfix = str(text)

  def close(self):
    if not self.closed:  # once, however it is closed
      self.closed = True
      end = 'done' if self.n >= (self.total or 0) else 'stopped'
      self._print(f'{self._line(time.perf_counter())}, {end}')

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def progress(total, desc, unit, initial=0, every=30.0, tty=None):
  """A bar on a terminal (stderr is a TTY), periodic lines otherwise; `tty` forces either."""
  if tty if tty is not None else sys.stderr.isatty():
    return tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
  return _Lines(total, desc, unit, initial, every)
