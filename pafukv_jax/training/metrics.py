"""What a training run logs: one JSON object per logged step in WORKDIR/metrics.jsonl, and
TensorBoard event files (written without TensorFlow)."""

import json
import os


class MetricWriter:
  """One JSON object per logged step in DIR/metrics.jsonl, and TensorBoard event files."""

  def __init__(self, workdir, resumed_step: int = 0):
    from tensorboardX import SummaryWriter  # writes event files without TensorFlow
    path = os.path.join(workdir, 'metrics.jsonl')
    _drop_rows_after(path, resumed_step)
    self.jsonl = open(path, 'a')
    self.tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step, metrics):
    self.jsonl.write(json.dumps(dict(step=step, **metrics)) + '\n')
    self.jsonl.flush()
    for k, v in metrics.items():
      self.tb.add_scalar(k, v, step)

  def close(self):
    self.jsonl.close()
    self.tb.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Keeps the rows of metrics.jsonl up to `step`, the checkpoint a run resumes from: a run
  killed after it logged later steps would otherwise list them twice. A torn last line (a kill
  mid-write) goes too. Rewritten beside and renamed, so a kill here loses nothing."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if row.get('step', 0) <= step:
        kept.append(line if line.endswith('\n') else line + '\n')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(kept)
  os.replace(tmp, path)
