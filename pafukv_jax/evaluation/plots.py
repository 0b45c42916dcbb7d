"""PNG line plots for evaluations: quality vs cache budget, vs seconds per frame, per frame.

Draws on matplotlib's Agg canvas directly (no pyplot), so it needs no display and leaves the
global backend of whoever imports it alone.
"""

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np


def series_style(name: str) -> dict:
  """A series' colour by its policy, the same in every plot ('window 4f', 'pafu@frame' and
  'full (whole video)' are window's, pafu's and full's); a variant is dashed, a level dotted."""
  from pafukv_jax.cache.policies import POLICIES  # pylint: disable=g-import-not-at-top
  base = name.split()[0].split('@')[0]
  names = list(POLICIES)
  colours = matplotlib.colormaps['tab20' if len(names) > 10 else 'tab10'].colors
  style = dict(color=colours[names.index(base) % len(colours)]) if base in names else {}
  if '@' in name:
    style['linestyle'] = '--'
  elif '(' in name:
    style['linestyle'] = ':'
  return style


def line_plot(path: str, series: dict, xlabel: str, ylabel: str, title: str) -> None:
  """Writes a PNG with one line with markers per series, e.g. {'policy': (budgets, psnrs)},
  each in its policy's colour (`series_style`).

  Non-finite y values (NaN for frames without a score, inf for exact frames) are left out, which
  breaks the line there.
  """
  if not series:
    raise ValueError('series is empty; pass {name: (xs, ys)} with at least one entry.')
  figure = Figure(figsize=(6.4, 4.2), dpi=100, layout='constrained')
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for name, (xs, ys) in series.items():
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if xs.ndim != 1 or xs.shape != ys.shape:
      raise ValueError(f'series {name!r}: xs and ys must be 1-D of equal length, got shapes '
                       f'{xs.shape} and {ys.shape}.')
    axes.plot(xs, np.where(np.isfinite(ys), ys, np.nan), marker='o', markersize=4, label=name,
              **series_style(name))
  axes.set_xlabel(xlabel)
  axes.set_ylabel(ylabel)
  axes.set_title(title)
  axes.grid(True, alpha=0.3)
  axes.legend()
  figure.savefig(path, format='png')
