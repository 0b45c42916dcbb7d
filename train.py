"""Training stages (teacher, student, salience head): not implemented yet.

The training loop, its configs and checkpoints land with the training issue; until then this
entry point says so instead of pretending to train.
"""

import sys

if __name__ == '__main__':
  sys.exit('train.py: training is not implemented yet (teacher, student and salience-head stages '
           'are planned). Use generate.py with random weights for smoke runs and speed.')
