"""Stage 2: the causal AR student, block-causal by chunk, initialised from the teacher.

python train.py --config=configs/student.py[:SIZE,DATASET] --workdir=DIR --config.init_from=TEACHER_DIR
"""

from configs import common


def get_config(arg: str = 'small'):
  c = common.train_config('student', arg)
  c.chunk_frames = 1
  c.clean_context_prob = 0.5
  c.optimizer.warmup_steps = 100 if common.parse_arg(arg).size != 'tiny' else 2
  return c
