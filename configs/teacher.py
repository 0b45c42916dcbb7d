"""Stage 1: the bidirectional teacher (flow matching on whole clips).

python train.py --config=configs/teacher.py[:SIZE,DATASET] --workdir=DIR
"""

from configs import common


def get_config(arg: str = 'small'):
  c = common.train_config('teacher', arg)
  c.clean_context_prob = 0.0  # not used by the teacher
  return c
