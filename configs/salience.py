"""Stage 3: the Salience Estimation Head, distilled from the teacher's attention.

python train.py --config=configs/salience.py[:SIZE,DATASET] --workdir=DIR \
    --config.teacher=TEACHER_DIR --config.student=STUDENT_DIR

Teacher and student are frozen (their workdirs are read, never written); only the head trains.
Held-out metrics (recall@budget and Spearman of the head, h2o, window and random against the
teacher's salience) go to DIR/metrics.jsonl as eval/... every `eval_every` steps.
"""

import ml_collections

from configs import common


def get_config(arg: str = 'small'):
  c = common.train_config('salience', arg)
  c.teacher = ''                # the bidirectional teacher: training workdir or params directory
  c.student = ''                # the causal student whose features the head reads
  c.total_steps = 1000
  c.checkpoint_every = 250
  c.sample_every = 0            # no videos: the head is judged by eval/recall@...
  c.eval_every = 250
  c.eval_examples = 128         # held-out clips (the data's test split)
  c.eval_budgets = (0.125, 0.25, 0.5)  # kept fraction of a clip's tokens
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.ema_decay = 0.0

  c.head = ml_collections.ConfigDict()
  c.head.hidden_dim = 64
  c.head.feature_layer = -1     # which block's output the head reads
  c.head.per_layer = False      # True: one score (one cache selection) per layer

  c.salience = ml_collections.ConfigDict()
  c.salience.source = 'teacher'  # teacher: the bidirectional teacher's SSE (PaFu-KV); student:
                                # the attention per query the student's own later queries pay
                                # (an ablation: what this student uses)
  c.salience.weights = (1.0, 0.5, 1.0)  # (earlier, same, later) query regions; same down-weighted
  c.salience.normalize = 'max'  # each region over a clip's tokens: max | sum | none
  c.salience.noise_level = 0.0  # teacher input: clean (0) or noised to this level
  c.salience.loss = 'listwise'  # mse_log | smooth_l1 | listwise | pairwise
  c.salience.temperature = 0.1  # listwise: softmax(target / temperature)
  c.salience.pairs = 1024       # pairwise: token pairs per clip
  c.salience.huber_delta = 0.1  # smooth_l1
  c.salience.smoothness = 0.1   # smooth_l1: weight of the neighbouring-token term
  c.salience.log_eps = 1e-3     # mse_log: log(target + eps)
  if common.parse_arg(arg).size == 'tiny':
    c.total_steps = 6
    c.eval_every = 3
    c.eval_examples = 8
    c.head.hidden_dim = 16
    c.optimizer.warmup_steps = 2
  return c
