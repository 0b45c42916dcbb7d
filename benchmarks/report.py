"""Writes a benchmark's rows as JSON, with the machine that measured them."""

import json
import os
import platform

import jax


def write_results(path: str, rows: list, **extra) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(dict(device=jax.devices()[0].device_kind,
                   machine=f'{platform.machine()}, {os.cpu_count()} cores',
                   python=platform.python_version(), jax=jax.__version__, **extra, rows=rows),
              f, indent=1, default=str)
  print(f'wrote {path}')
