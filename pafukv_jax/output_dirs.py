"""Output directories checked before any work: a run that cannot write its results says so at
the start, not as a raw OS error after minutes of compute."""

import os
import tempfile


def check_writable(path: str, flag: str = '--workdir') -> None:
  """Raises a ValueError naming `flag` when `path` is a file, lies under a file, or sits where
  nothing can be created (a directory without write permission). Creates nothing."""
  if not path:
    raise ValueError(f'{flag} is empty: give the directory to write to.')
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'{flag}={path} is a file, not a directory: give a directory (new or '
                     'existing) for the outputs.')
  existing = path
  while not os.path.exists(existing):  # the nearest ancestor that exists
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f'{flag}={path} lies under {existing}, which is a file: choose a path '
                     'whose parents are directories.')
  try:  # a real probe: permission bits do not tell for every filesystem or user
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise ValueError(f'{flag}={path}: nothing can be written in {existing} ({e.strerror}): '
                     'choose a directory you can write to.') from e
