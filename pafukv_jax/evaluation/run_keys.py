"""What decides a sweep run's result, as a JSON key: checkpoints' fingerprints and key diffs.

A sweep stores every run's key beside it and refuses, before any work, a run on disk whose key
differs from the one the sweep would run now (`key_changes` names the fields).
"""

import os


def fingerprint(path: str):
  """What identifies a checkpoint directory (or a weights file, a Wan2.1_VAE.pth): its path,
  and its files' count, bytes and newest modification time (a retrained checkpoint at the same path changes these)."""
  if not path:
    return None
  files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path)
                                               for f in fs]
  stats = [os.stat(f) for f in files]
  return dict(path=os.path.abspath(path), files=len(files), bytes=sum(st.st_size for st in stats),
              mtime=max((st.st_mtime for st in stats), default=0.0))


def flat(tree, prefix=''):
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(flat(v, f'{prefix}.{k}' if prefix else k))
  return out


def key_changes(saved: dict, now: dict) -> list[str]:
  """'field (saved a, now b)' for every leaf of two run keys that differs."""
  a, b = flat(saved), flat(now)
  return [f'{k} (saved {a.get(k)!r}, now {b.get(k)!r})' for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]
